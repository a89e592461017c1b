"""Addresses on this machine: a free TCP port, and host:port as a URL writes it."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port no one listens on now (the OS picks it; another process may take it
    before the caller binds, so a caller that can binds port 0 itself instead)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def host_port(host: str, port: int) -> str:
    """`host:port`, an IPv6 host in brackets (`[::1]:8400`), as URLs need it."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def http_url(host: str, port: int) -> str:
    return f"http://{host_port(host, port)}"
