"""An HTTP proxy in front of the moto S3 server that answers some requests with faults, for tests.

Point an s3fs client (``endpoint_url=proxy.url``) at it: requests are forwarded unchanged (method, path,
query, headers, body) to moto, so SigV4 signatures, which sign the host the client used, still match
what the client sent (moto does not check them strictly). The faults, set and changed while a job runs:

* :meth:`Proxy.fail_every` -- every k-th GET / HEAD / PUT gets 503 ``SlowDown`` or 500 ``InternalError``
  (alternating), as AWS S3 and MinIO answer when overloaded;
* :meth:`Proxy.down` -- the proxy stops listening and drops its open connections: every new connection
  is refused, as when the storage's process or host is gone (requests that arrive in the instant before
  the port closes get their connection closed unanswered); :meth:`Proxy.up` listens again on the same
  port;
* :meth:`Proxy.unavailable` -- every request gets 503 ``ServiceUnavailable`` (a store that answers but
  serves nothing, e.g. a load balancer in front of dead nodes);
* :meth:`Proxy.quota` -- every PUT is refused as a full bucket or store. What S3-compatible stores
  answer differs, so the answer is chosen from :data:`QUOTA_ANSWERS`: Ceph RGW says 403 ``QuotaExceeded``
  for a user or bucket quota (also what OpenStack Swift's S3 API and CSC Allas return); MinIO says 507
  ``XMinioStorageFull`` when its drives are below their free-space threshold, and 400
  ``XMinioAdminBucketQuotaExceeded`` for a hard bucket quota. AWS S3 itself has no bucket quota. Each
  needs its own handling: 403 looks like a permission error, 507 like a server error (5xx), 400 like a
  bad request -- only the error code says that the space is the problem.

:meth:`Proxy.after_put` starts a fault at an exact point of a job: right after the first PUT whose path
contains a fragment (``/shards/``: the first commit) succeeded, before its answer goes back.

`requests` counts every request that reached the proxy, per (method, path), a fault answered too;
`faulted` counts those answered with a fault.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

QUOTA_ANSWERS = {
    "ceph": (403, "QuotaExceeded", "The quota of this bucket or user is exceeded."),
    "minio-full": (507, "XMinioStorageFull", "Storage backend has reached its minimum free drive threshold. "
                                             "Please delete a few objects to proceed."),
    "minio-quota": (400, "XMinioAdminBucketQuotaExceeded", "Bucket quota exceeded"),
}
_THROTTLE = [(503, "SlowDown", "Please reduce your request rate."),
             (500, "InternalError", "We encountered an internal error. Please try again.")]
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
               "upgrade", "expect"}


def error_body(code: str, message: str, resource: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<Resource>{resource}</Resource><RequestId>proxy</RequestId></Error>").encode()


class Proxy:
    """The proxy on 127.0.0.1 (a free port), forwarding to `upstream` (``http://127.0.0.1:PORT``)."""

    def __init__(self, upstream: str):
        target = urlsplit(upstream)
        self.upstream = (target.hostname, target.port)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.requests: collections.Counter = collections.Counter()
        self.faulted: collections.Counter = collections.Counter()
        self._lock = threading.Lock()
        self._every = 0
        self._methods: tuple[str, ...] = ()
        self._seen = 0
        self._all: tuple[int, str, str] | None = None
        self._put: tuple[int, str, str] | None = None
        self._trigger: tuple[str, Callable[[], None]] | None = None
        self._server: _Server | None = None
        self._refusing = False
        self._stopping: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self.up()

    # ---------------------------------------------------------------------------------------- faults
    def fail_every(self, k: int, methods: tuple[str, ...] = ("GET", "HEAD", "PUT")) -> None:
        """Every `k`-th request with one of `methods` (counted together) gets 503 / 500; 0 stops it."""
        with self._lock:
            self._every, self._methods, self._seen = k, methods, 0

    def unavailable(self, on: bool = True) -> None:
        """Every request gets 503 ServiceUnavailable (or, `on` False, no longer)."""
        with self._lock:
            self._all = (503, "ServiceUnavailable", "Service is unable to handle request.") if on else None

    def quota(self, store: str | None = "ceph") -> None:
        """Every PUT refused as `store` refuses a write to a full bucket (QUOTA_ANSWERS); None lifts it."""
        with self._lock:
            self._put = QUOTA_ANSWERS[store] if store else None

    def after_put(self, fragment: str, action: Callable[[], None]) -> None:
        """Run `action` once, right after the first successful PUT whose path contains `fragment`, before
        that PUT's answer is sent: whatever the client does next meets the fault."""
        self._trigger = (fragment, action)

    @property
    def faults(self) -> int:
        """How many requests got an injected error so far."""
        return sum(self.faulted.values())

    def down(self) -> None:
        """Stop listening and cut the open connections: new ones are refused until :meth:`up`.

        Takes effect at once (requests from now on are dropped unanswered); the port closes within
        50 ms, in a thread, so that a request's handler can call it (see :meth:`after_put`)."""
        server, self._server = self._server, None
        if server is None:
            return
        self._refusing = True
        self._stopping = threading.Thread(target=self._stop, args=(server,), daemon=True)
        self._stopping.start()

    def _stop(self, server: _Server) -> None:
        server.shutdown()
        server.server_close()
        with self._lock:
            conns, self._conns = set(self._conns), set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def up(self) -> None:
        """Listen (again) on the same port."""
        if self._server is not None:
            return
        if self._stopping is not None:
            self._stopping.join()
        server = _Server(("127.0.0.1", self.port), _handler(self))
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
                         name="s3proxy").start()
        self._server = server
        self._refusing = False

    def close(self) -> None:
        self.down()
        if self._stopping is not None:
            self._stopping.join()

    # ------------------------------------------------------------------------------------- internals
    def _fault_for(self, method: str, path: str) -> tuple[int, str, str] | None:
        with self._lock:
            self.requests[(method, path)] += 1
            fault = self._all
            if fault is None and method == "PUT":
                fault = self._put
            if fault is None and self._every and method in self._methods:
                self._seen += 1
                if self._seen % self._every == 0:
                    fault = _THROTTLE[(self._seen // self._every) % 2]
            if fault is not None:
                self.faulted[(method, path)] += 1
            return fault


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # a connection cut by down() or the client
        pass


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _handler(proxy: Proxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect

        def setup(self):
            super().setup()
            with proxy._lock:
                proxy._conns.add(self.connection)

        def finish(self):
            with proxy._lock:
                proxy._conns.discard(self.connection)
            with contextlib.suppress(OSError):
                super().finish()

        def log_message(self, *args):  # quiet
            pass

        def _body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                parts = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        return b"".join(parts)
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
            self.send_response(status)
            for k, v in headers:
                self.send_header(k, v)
            if self.command != "HEAD" or not any(k.lower() == "content-length" for k, _ in headers):
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _any(self):
            if proxy._refusing:  # down: drop it unanswered, as the closing port would
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            body = self._body()
            fault = proxy._fault_for(self.command, self.path.split("?")[0])
            if fault is not None:
                status, code, message = fault
                self._answer(status, [("Content-Type", "application/xml")],
                             error_body(code, message, self.path.split("?")[0]))
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            conn = http.client.HTTPConnection(*proxy.upstream, timeout=30)
            try:
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                out = [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP_BY_HOP
                       and (k.lower() != "content-length" or self.command == "HEAD")]
                trigger = proxy._trigger
                if trigger and self.command == "PUT" and resp.status == 200 and trigger[0] in self.path:
                    proxy._trigger = None
                    trigger[1]()
                self._answer(resp.status, out, data)
            finally:
                conn.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

    return Handler
