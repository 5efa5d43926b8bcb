"""The test servers' own helpers."""

from __future__ import annotations

import socket
from pathlib import Path

from servers import SPARE_PORTS, free_port


def test_free_ports_lie_outside_the_kernels_range_for_outgoing_connections_and_are_never_repeated() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(port in SPARE_PORTS and port < low for port in ports)
    for port in ports[:5]:  # each can be bound now
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
