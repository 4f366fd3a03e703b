"""What the storage server and its client agree on, importable without any SDK: the server
runs in a pod that has only the standard library, anyio and tpi."""

from __future__ import annotations

CHUNK = 1 << 20
"""Bytes read or written at a time when an object streams."""
TOKEN_HEADER = "X-Tpi-Token"
"""The request header carrying the task's storage token."""
MARK_HEADER = "X-Tpi-Storage"
"""Set on every answer of the storage server: a 404 without it came from the API server."""
