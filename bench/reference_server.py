"""The static-file ceiling for the bench suite (bench/run.py) when nginx is not installed.

    python bench/reference_server.py ROOT

HTTP/1.1 on 127.0.0.1 (a free port, printed as ``listening PORT``), one request
per connection, a thread per connection: POST or PUT stores the body in
ROOT/{last path segment} with os.write, GET sends that file with os.sendfile,
DELETE unlinks it. It does the least a server can, so it is a ceiling to
measure against, not a server to use.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
from pathlib import Path

MIB = 1 << 20


def serve_reference(root: Path) -> None:
    """HTTP/1.1, one request per connection: POST/PUT stores the body with os.write,
    GET sends the file with os.sendfile, DELETE unlinks it."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    print(f"listening {listener.getsockname()[1]}", flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_reference_request, args=(conn, root), daemon=True).start()


def _reply(conn: socket.socket, status: str, body: bytes = b"", extra: str = "") -> None:
    head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
    conn.sendall(head.encode() + body)


def _reference_request(conn: socket.socket, root: Path) -> None:
    with conn:
        data = bytearray()
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, rest = bytes(data).partition(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, target, _version = request_line.split(" ", 2)
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        name = target.split("?", 1)[0].rsplit("/", 1)[-1]
        if not name or name.startswith("."):
            _reply(conn, "400 Bad Request")
            return
        path = root / name
        if method in ("POST", "PUT"):
            if "content-length" not in headers:
                _reply(conn, "411 Length Required")
                return
            remaining = int(headers["content-length"]) - len(rest)
            if headers.get("expect", "").lower() == "100-continue" and remaining > 0:
                conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                if rest:
                    os.write(fd, rest)
                buffer = bytearray(MIB)
                view = memoryview(buffer)
                while remaining > 0:
                    got = conn.recv_into(view, min(MIB, remaining))
                    if not got:
                        return
                    written = 0
                    while written < got:
                        written += os.write(fd, view[written:got])
                    remaining -= got
            finally:
                os.close(fd)
            _reply(conn, "201 Created", json.dumps({"size": path.stat().st_size}).encode())
        elif method == "GET":
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                _reply(conn, "404 Not Found")
                return
            try:
                size = os.fstat(fd).st_size
                head_out = (
                    f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n"
                    "Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
                )
                conn.sendall(head_out.encode())
                offset = 0
                while offset < size:
                    sent = os.sendfile(conn.fileno(), fd, offset, size - offset)
                    if sent == 0:
                        return
                    offset += sent
            finally:
                os.close(fd)
        elif method == "DELETE":
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            _reply(conn, "204 No Content")
        else:
            _reply(conn, "405 Method Not Allowed")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        serve_reference(Path(sys.argv[1]))
