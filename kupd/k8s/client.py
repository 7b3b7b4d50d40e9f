"""A small Kubernetes REST client: the few things kupd asks of the API server, and nothing else.

Why this exists: the daemon sits idle most of its life, so its resident memory is what it costs
each node. Importing the official `kubernetes` client alone costs ~45 MB of RSS, because it
imports ~800 generated model classes (and google.auth) whether or not they are used. kupd handles
Kubernetes objects as plain JSON dicts (its own wire formats are typed in kupd.api and
kupd.protocol), so all it needs is: credentials from a kubeconfig, an `ssl.SSLContext`, the verbs,
errors that keep the server's Status, and a watch stream. That is urllib3 + json + ssl + yaml.

The layers: `kupd.k8s.kubeconfig` is pure parsing (kubeconfig -> `Settings`), `kupd.k8s.paths`
is pure URL building, `Client` (here) is the thin I/O and `kupd.k8s.errors` maps its failures.
No retries happen here: kupd retries on its own terms and must see outages, so connection
errors (urllib3's, or OSError) reach the caller unchanged and HTTP errors become `ApiError`
carrying the server's Status.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import shutil
import ssl
import tempfile
import threading
import urllib.parse
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import urllib3

from kupd import __version__
from kupd.k8s.kubeconfig import load_kubeconfig

log = logging.getLogger(__name__)

PATCH_CONTENT_TYPES = {
    "merge": "application/merge-patch+json",
    "strategic": "application/strategic-merge-patch+json",
    "json": "application/json-patch+json",
    # Server-side apply takes YAML; JSON is valid YAML, so the body is sent as JSON all the same.
    "apply": "application/apply-patch+yaml",
}
# The API server closes a watch after timeoutSeconds; the socket read timeout must outlast that
# (plus the gap between events and bookmarks) or a quiet but healthy watch would look like an outage.
WATCH_READ_MARGIN = 30.0
POOL_SIZE = 8
_READ_SIZE = 64 * 1024
_MESSAGE_LIMIT = 500


class ApiError(Exception):
    """The API server answered with an HTTP error status; `body` is its Status object when it sent one."""

    def __init__(self, status: int, reason: str, message: str, body: dict[str, Any] | None = None) -> None:
        super().__init__(status, reason, message)
        self.status = status
        self.reason = reason
        self.message = message
        self.body: dict[str, Any] = body if body is not None else {}

    def __str__(self) -> str:
        return f"{self.status} {self.reason}: {self.message}"


def _api_error(status: int, http_reason: str | None, data: bytes) -> ApiError:
    body: dict[str, Any] = {}
    try:
        parsed = json.loads(data)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        body = parsed
    reason = body.get("reason")
    message = body.get("message")
    return ApiError(
        status,
        reason if isinstance(reason, str) and reason else (http_reason or ""),
        message if isinstance(message, str) and message else data.decode("utf-8", "replace")[:_MESSAGE_LIMIT],
        body,
    )


def _query_string(query: Mapping[str, Any] | None) -> str:
    pairs: list[tuple[str, str]] = []
    for key, value in (query or {}).items():
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if v is None:
                continue
            pairs.append((key, ("true" if v else "false") if isinstance(v, bool) else str(v)))
    return urllib.parse.urlencode(pairs)


# -- TLS ----------------------------------------------------------------------------------------

def _write_private(directory: str, name: str, data: bytes) -> str:
    target = os.path.join(directory, name)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return target


def _ssl_context(*, ca_file: str | None, ca_data: bytes | None, cert_file: str | None, key_file: str | None,
                 cert_data: bytes | None, key_data: bytes | None, insecure: bool, server: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if insecure:
        log.warning("TLS verification of %s is off (insecure-skip-tls-verify): anyone on the path can "
                    "impersonate the API server", server)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif ca_file or ca_data:
        if ca_file:
            ctx.load_verify_locations(cafile=ca_file)
        if ca_data:
            ctx.load_verify_locations(cadata=ca_data.decode("ascii"))
    else:
        ctx.load_default_certs()
    if cert_data or key_data:
        # ssl loads a certificate chain from files only. The key is written to a private directory
        # (0700, files 0600) and removed as soon as OpenSSL has read it.
        tmp = tempfile.mkdtemp(prefix="kupd-tls-")
        try:
            cert = _write_private(tmp, "client.crt", cert_data) if cert_data else cert_file
            key = _write_private(tmp, "client.key", key_data) if key_data else key_file
            if cert is None:
                raise ValueError("a client key needs a client certificate")
            ctx.load_cert_chain(cert, key)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    elif cert_file:
        ctx.load_cert_chain(cert_file, key_file)
    elif key_file:
        raise ValueError("a client key needs a client certificate")
    return ctx


# -- the client ---------------------------------------------------------------------------------

class Client:
    """A connection pool to one API server, shared by all of kupd's threads."""

    server: str

    @classmethod
    def from_kubeconfig(cls, path: str, timeout: float = 10.0, context: str | None = None,
                        pool_size: int = POOL_SIZE) -> Client:
        s = load_kubeconfig(path, context)
        return cls(s.server, token=s.token, token_file=s.token_file, ca_file=s.ca_file, ca_data=s.ca_data,
                   cert_file=s.cert_file, key_file=s.key_file, cert_data=s.cert_data, key_data=s.key_data,
                   insecure=s.insecure, timeout=timeout, pool_size=pool_size)

    def __init__(self, server: str, *, token: str | None = None, token_file: str | None = None,
                 ca_file: str | None = None, ca_data: bytes | None = None,
                 cert_file: str | None = None, key_file: str | None = None,
                 cert_data: bytes | None = None, key_data: bytes | None = None,
                 insecure: bool = False, timeout: float = 10.0, pool_size: int = POOL_SIZE) -> None:
        url = urllib.parse.urlsplit(server)
        if url.scheme not in ("http", "https") or not url.hostname or url.query or url.fragment:
            raise ValueError(f"API server must be an http(s) URL without query: {server!r}")
        # A path prefix is kept (API servers behind a proxy are served under one).
        self.server = server.rstrip("/")
        self.timeout = timeout
        self._token = token
        self._token_file = token_file
        kw: dict[str, Any] = {}
        if url.scheme == "https":
            kw["ssl_context"] = _ssl_context(
                ca_file=ca_file, ca_data=ca_data, cert_file=cert_file, key_file=key_file,
                cert_data=cert_data, key_data=key_data, insecure=insecure, server=self.server)
            if insecure:
                # Warned once above; urllib3 would otherwise warn on every single request.
                warnings.filterwarnings("ignore", category=urllib3.exceptions.InsecureRequestWarning)
        # block=False: a burst beyond the pool opens extra connections instead of waiting, and
        # only POOL_SIZE idle ones are kept. retries=False: see the module docstring.
        self._pool = urllib3.PoolManager(
            num_pools=2, maxsize=pool_size, block=False, retries=False,
            timeout=urllib3.Timeout(connect=timeout, read=timeout), **kw)

    def _bearer(self) -> str | None:
        if self._token_file:
            # Re-read on every request: bound ServiceAccount tokens are rotated on disk, and a
            # stale one would lock the daemon out. If the file is briefly unreadable (mid-rotation),
            # the last token read stays in use, as client-go does.
            try:
                with open(self._token_file) as f:
                    token = f.read().strip()
            except OSError:
                if self._token:
                    return self._token
                raise
            if token:
                self._token = token
        return self._token

    def _send(self, method: str, path: str, query: Mapping[str, Any] | None, body: Any, content_type: str,
              timeout: urllib3.Timeout, preload: bool) -> urllib3.BaseHTTPResponse:
        if not path.startswith("/"):
            raise ValueError(f"API path must start with '/': {path!r}")
        url = self.server + path
        qs = _query_string(query)
        if qs:
            url += "?" + qs
        headers = {"Accept": "application/json", "User-Agent": f"kupd/{__version__}"}
        token = self._bearer()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data: bytes | None = None
        if body is not None:
            if isinstance(body, bytes):
                data = body
            elif isinstance(body, str):
                data = body.encode()
            else:
                data = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = content_type
        return self._pool.request(method, url, body=data, headers=headers, timeout=timeout, retries=False,
                                  redirect=False, preload_content=preload)

    def request(self, method: str, path: str, *, query: Mapping[str, Any] | None = None,
                body: Any = None, content_type: str = "application/json",
                timeout: float | None = None) -> dict[str, Any]:
        """One API call. Raises ApiError for an HTTP status >= 400; returns the decoded JSON object
        ({} for an empty body) and raises ValueError for a body that is not a JSON object."""
        t = self.timeout if timeout is None else timeout
        resp = self._send(method, path, query, body, content_type, urllib3.Timeout(connect=t, read=t), True)
        if resp.status >= 400:
            raise _api_error(resp.status, resp.reason, resp.data)
        if not resp.data:
            return {}
        decoded = json.loads(resp.data)
        if not isinstance(decoded, dict):
            raise ValueError(f"{method} {path}: the API server answered with a JSON {type(decoded).__name__}, "
                             "not an object")
        return decoded

    def get(self, path: str, **query: Any) -> dict[str, Any]:
        return self.request("GET", path, query=query)

    def list(self, path: str, **query: Any) -> dict[str, Any]:
        return self.request("GET", path, query=query)

    def create(self, path: str, body: dict[str, Any], **query: Any) -> dict[str, Any]:
        return self.request("POST", path, query=query, body=body)

    def replace(self, path: str, body: dict[str, Any], **query: Any) -> dict[str, Any]:
        return self.request("PUT", path, query=query, body=body)

    def patch(self, path: str, body: Any, kind: str = "merge", **query: Any) -> dict[str, Any]:
        """kind: "merge", "strategic", "json" (a list of operations) or "apply" (needs fieldManager=...)."""
        try:
            content_type = PATCH_CONTENT_TYPES[kind]
        except KeyError:
            raise ValueError(f"unknown patch kind {kind!r}; one of {sorted(PATCH_CONTENT_TYPES)}") from None
        if kind == "apply" and not query.get("fieldManager"):
            raise ValueError("a server-side apply patch needs fieldManager=...")
        return self.request("PATCH", path, query=query, body=body, content_type=content_type)

    def delete(self, path: str, body: dict[str, Any] | None = None, **query: Any) -> dict[str, Any]:
        return self.request("DELETE", path, query=query, body=body)

    def watch(self, path: str, *, resource_version: str | None = None, timeout_seconds: int = 240,
              **query: Any) -> Watch:
        """Start a watch of a collection. An HTTP error raises ApiError here, before any iteration.

        An expired resource_version usually does not fail here: the API server answers 200 and
        sends an ERROR event whose object is a Status with code 410 (reason "Expired" or "Gone");
        the caller relists then. Iteration ends when the server closes the watch (timeoutSeconds).
        """
        q = {**query, "watch": True, "allowWatchBookmarks": True, "timeoutSeconds": timeout_seconds,
             "resourceVersion": resource_version}
        timeout = urllib3.Timeout(connect=self.timeout, read=timeout_seconds + WATCH_READ_MARGIN)
        resp = self._send("GET", path, q, None, "application/json", timeout, False)
        if resp.status >= 400:
            try:
                data = resp.read()
            finally:
                resp.release_conn()
            raise _api_error(resp.status, resp.reason, data)
        return Watch(resp)

    def close(self) -> None:
        self._pool.clear()


class Watch:
    """The events of one watch request, iterated once; `close()` may be called from any thread.

    Events are dicts {"type": "ADDED"|"MODIFIED"|"DELETED"|"BOOKMARK"|"ERROR", "object": {...}},
    yielded as the server sends them (an ERROR's object is a Status, see Client.watch). Until it
    is iterated to the end or closed, it holds a connection: use `with client.watch(...) as w:`.
    """

    def __init__(self, response: urllib3.BaseHTTPResponse) -> None:
        self._response = response
        # Guards the hand-over of the response between the iterating thread and close(): only a
        # thread that is not blocked reading may close the socket (closing a descriptor another
        # thread is reading from is unsafe); a blocked reader is woken by shutdown() instead.
        self._lock = threading.Lock()
        self._closed = False
        self._reading = False
        self._released = False
        self._started = False

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        with self._lock:
            if self._started:
                raise RuntimeError("a Watch can be iterated only once")
            self._started = True
        return self._events()

    def _events(self) -> Iterator[dict[str, Any]]:
        # One event per line; an object can be ~1.5 MB, far more than one read, so the start of a
        # line is kept until its end arrives.
        pending = bytearray()
        clean_end = False
        try:
            while True:
                with self._lock:
                    if self._closed:
                        return
                    self._reading = True
                try:
                    # read1: whatever has arrived (at least one byte), so each event is handed on
                    # as soon as the server flushes it; lines may still be split across reads.
                    chunk = self._response.read1(_READ_SIZE)
                except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError):
                    if self._closed:
                        return
                    raise
                finally:
                    with self._lock:
                        self._reading = False
                if not chunk:
                    break
                first, *more = chunk.split(b"\n")
                pending += first
                if not more:
                    continue
                lines = [bytes(pending), *more[:-1]]
                pending = bytearray(more[-1])
                for line in lines:
                    if self._closed:
                        return  # events read before close() are not handed on after it
                    if line.strip():
                        yield self._event(line)
            if pending.strip() and not self._closed:
                yield self._event(bytes(pending))
            clean_end = not self._closed
        finally:
            self._release(reuse=clean_end)

    @staticmethod
    def _event(line: bytes) -> dict[str, Any]:
        event = json.loads(line)
        if not isinstance(event, dict):
            raise ValueError(f"watch event is not a JSON object: {line[:200]!r}")
        return event

    def _release(self, reuse: bool) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        if not reuse:
            # A half-read stream cannot carry another request: drop the connection itself.
            self._response.close()
        self._response.release_conn()

    def close(self) -> None:
        """End the watch: a thread blocked in iteration wakes up and its loop ends without an error."""
        with self._lock:
            self._closed = True
            reading = self._reading
            if reading and not self._released:
                # Wakes the blocked read (it returns EOF or fails, and the loop sees _closed).
                with contextlib.suppress(OSError, ValueError, RuntimeError):
                    self._response.shutdown()
        if not reading:
            self._release(reuse=False)
