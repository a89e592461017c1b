"""free_ports: the ports of one call are distinct and each can be bound."""

from __future__ import annotations

import socket

from plum.ports import free_port, free_ports, host_port


def test_one_call_never_returns_a_port_twice():
    for _ in range(20):  # separate free_port() calls can repeat a port; one call cannot
        ports = free_ports(14)
        assert len(set(ports)) == 14


def test_each_returned_port_can_be_bound_afterwards():
    ports = free_ports(3) + [free_port()]
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_ipv6_hosts_are_bracketed():
    assert host_port("::1", 8400) == "[::1]:8400"
    assert host_port("127.0.0.1", 8400) == "127.0.0.1:8400"
