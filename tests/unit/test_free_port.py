"""localmesh's port picker: free ports outside the kernel's ephemeral range, never the same one twice."""
from __future__ import annotations

from localmesh.processes import free_port


def test_ports_are_outside_the_ephemeral_range_and_distinct():
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    # An outgoing connection's source port comes from 32768-60999 on Linux.
    assert all(1024 < p < 32768 for p in ports)

