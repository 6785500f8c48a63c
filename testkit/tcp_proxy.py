"""A small threaded loopback TCP proxy for fault tests.

Put it between a service and a real server (MariaDB, RabbitMQ, MongoDB) and
cut the link without stopping the shared server:

    with TcpProxy("127.0.0.1", 3306) as proxy:   # listens on 127.0.0.1:proxy.port
        ...point the service at proxy.port...
        proxy.cut()       # close every open connection, refuse new ones
        proxy.stall()     # keep connections open but forward nothing (a hung server)
        proxy.restore()   # accept and forward again, same port
        proxy.rate = 4e6  # at most 4 MB/s per direction and connection (None: no limit)

cut() closes the listening socket too, so new connections get "connection
refused" at once (what a stopped server looks like), and open connections see
their peer close. stall() is the nastier case that only timeouts catch: new
connections are accepted and nothing moves in either direction. Each
connection is forwarded by two threads, one per direction; everything is a
daemon thread and stop() joins the accept thread.
"""
from __future__ import annotations

import contextlib
import socket
import threading
import time

_BUF = 64 * 1024


class TcpProxy:
    def __init__(self, upstream_host: str, upstream_port: int, *,
                 listen_host: str = "127.0.0.1", listen_port: int = 0,
                 connect_timeout: float = 5.0):
        self.upstream = (upstream_host, upstream_port)
        self.listen_host = listen_host
        self.port = listen_port  # the real port once start() has bound it
        self.connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._flowing = threading.Event()
        self._flowing.set()
        self.accepted = 0  # connections accepted so far (handy in assertions)
        # Bytes per second each direction of each connection may forward (None: no
        # limit): keeps a transfer going long enough to be cut in the middle.
        self.rate: float | None = None

    # -- public API -------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        return self.listen_host, self.port

    @property
    def open_connections(self) -> int:
        """Sockets currently open through the proxy (two per forwarded connection)."""
        with self._lock:
            return len(self._conns)

    @property
    def is_cut(self) -> bool:
        return self._listener is None

    @property
    def is_stalled(self) -> bool:
        return not self._flowing.is_set()

    def start(self) -> TcpProxy:
        """Start listening (also used by restore()); idempotent."""
        with self._lock:
            if self._listener is not None:
                return self
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.listen_host, self.port))
            listener.listen(128)
            listener.settimeout(0.1)  # lets the accept loop notice cut()/stop()
            self.port = listener.getsockname()[1]
            self._listener = listener
            self._stopping.clear()
            self._accept_thread = threading.Thread(
                target=self._accept_loop, args=(listener,),
                name=f"tcp-proxy-{self.port}", daemon=True)
            self._accept_thread.start()
        return self

    def cut(self) -> None:
        """Close every connection and stop listening: new connections are refused."""
        self._close_listener()
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for s in conns:
            _close(s)

    def stall(self) -> None:
        """Stop forwarding bytes (both ways, old and new connections) without closing
        anything: peers see a server that accepts and never answers."""
        self._flowing.clear()

    def restore(self) -> None:
        """Undo cut() and stall(): listen again on the same port and forward."""
        self.start()
        self._flowing.set()

    def stop(self) -> None:
        self.cut()
        self._flowing.set()  # releases pumps parked by stall() so their threads end

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- internals --------------------------------------------------------------

    def _close_listener(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            thread, self._accept_thread = self._accept_thread, None
            self._stopping.set()
        if listener is not None:
            if thread is not None:
                thread.join()  # returns within the accept timeout
            listener.close()

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            threading.Thread(target=self._connect_upstream, args=(client,),
                             name=f"tcp-proxy-{self.port}-conn", daemon=True).start()

    def _connect_upstream(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=self.connect_timeout)
        except OSError:
            _close(client)  # upstream down: the client sees its connection closed
            return
        upstream.settimeout(None)
        for s in (client, upstream):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            if self._listener is None:  # cut() ran while we were connecting
                cut = True
            else:
                cut = False
                self._conns.update((client, upstream))
                self.accepted += 1
        if cut:
            _close(client)
            _close(upstream)
            return
        done = threading.Semaphore(0)
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(src, dst, done, self._flowing, self),
                             name=f"tcp-proxy-{self.port}-pump", daemon=True).start()
        # Once either direction ends, close both sides: a forwarded connection
        # is either whole or gone, which is what the protocols here expect.
        done.acquire()
        with self._lock:
            self._conns.discard(client)
            self._conns.discard(upstream)
        _close(client)
        _close(upstream)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket, done: threading.Semaphore,
              flowing: threading.Event, proxy: TcpProxy | None = None) -> None:
        try:
            while True:
                data = src.recv(_BUF)
                if not data:
                    break
                flowing.wait()  # parked here while stalled
                dst.sendall(data)
                rate = proxy.rate if proxy is not None else None
                if rate:
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        finally:
            done.release()


def _close(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv() on it
    s.close()
