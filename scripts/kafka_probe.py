#!/usr/bin/env python3
"""Sends a Kafka ApiVersions request (v0) and exits 0 if the broker answers it without error."""
import socket
import struct
import sys

host, port = sys.argv[1], int(sys.argv[2])
client_id = b"classpulse-probe"
# Request header v1: api_key=18 (ApiVersions), api_version=0, correlation_id, client_id.
body = struct.pack(">hhih", 18, 0, 7, len(client_id)) + client_id
try:
    with socket.create_connection((host, port), timeout=2) as sock:
        sock.sendall(struct.pack(">i", len(body)) + body)
        size = struct.unpack(">i", sock.recv(4))[0]
        data = b""
        while len(data) < size:
            chunk = sock.recv(size - len(data))
            if not chunk:
                break
            data += chunk
        correlation_id, error_code = struct.unpack(">ih", data[:6])
        sys.exit(0 if correlation_id == 7 and error_code == 0 else 1)
except OSError:
    sys.exit(1)
