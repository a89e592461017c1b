"""Addresses on this machine: free TCP ports, and host:port as a URL writes it."""

from __future__ import annotations

import socket
from contextlib import ExitStack


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct TCP ports no one listens on now. Every socket stays bound until
    all are picked, so the OS cannot hand the same port out twice in one call (two
    separate `free_port()` calls can return one port: it is free again once closed).
    Another process may still take one before the caller binds it, so a caller that can
    binds port 0 itself instead."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with ExitStack() as held:
        ports = []
        for _ in range(count):
            s = held.enter_context(socket.socket(family, socket.SOCK_STREAM))
            s.bind((host, 0))
            ports.append(s.getsockname()[1])
        return ports


def free_port(host: str = "127.0.0.1") -> int:
    """One TCP port no one listens on now; for several at once, use `free_ports`."""
    return free_ports(1, host)[0]


def host_port(host: str, port: int) -> str:
    """`host:port`, an IPv6 host in brackets (`[::1]:8400`), as URLs need it."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def http_url(host: str, port: int) -> str:
    return f"http://{host_port(host, port)}"
