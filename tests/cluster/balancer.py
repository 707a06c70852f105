"""A TCP load balancer for cluster tests: round robin over the nodes, skipping
one that refuses the connection, as nginx's ``proxy_next_upstream error`` does.
No HTTP parsing and no stickiness: a client's next connection may land on any
node, so what works through it works behind any load balancer."""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
from collections.abc import Callable


class Balancer:
    def __init__(self, ports: Callable[[], list[int]]) -> None:
        self._ports = ports  # asked at every connection: nodes come and go
        self._turn = itertools.count()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closed = False
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _connect(self) -> socket.socket | None:
        ports = self._ports()
        start = next(self._turn)
        for i in range(len(ports)):
            port = ports[(start + i) % len(ports)]
            try:
                return socket.create_connection(("127.0.0.1", port), timeout=1)
            except OSError:
                continue
        return None

    def _serve(self, client: socket.socket) -> None:
        upstream = self._connect()
        if upstream is None:
            client.close()
            return
        upstream.settimeout(None)
        with self._lock:
            self._sockets |= {client, upstream}
        threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()
        self._pump(client, upstream)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            # One side died (a killed node resets its connections): so does the other.
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                    sock.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()
