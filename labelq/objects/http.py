"""Images named by ``http://`` and ``https://`` URLs (a manifest of URLs is a source, as img2dataset's are).

Each fetch resolves the host, refuses private, loopback, link-local and other non-public addresses
unless ``LABELQ_HTTP_ALLOW_PRIVATE`` is set (a list of URLs must not become a way to reach the
network behind the workers), then connects to the address it checked (no second lookup that could
answer differently) with the host's name for TLS and the ``Host`` header. Redirects are followed by
hand, at most ``LABELQ_HTTP_MAX_REDIRECTS``, each hop checked the same way. 429 and 5xx answers and
dropped connections are retried with backoff; 404/410 are ``not_found``, 401/403 ``access_denied``;
a body over ``LABELQ_MAX_BYTES`` is cut off and ``too_large``. At most ``LABELQ_HTTP_PER_HOST``
requests go to one host at a time. The record's etag is the answer's ``ETag`` (else its
``Last-Modified``). URLs cannot be listed, tagged, copied or moved: those are refused in one line.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any, ClassVar
from urllib.parse import urljoin, urlsplit

from ..config import Settings
from ..errors import AccessDenied, NotFound, StorageError, TooLarge, UsageError
from .base import Fetched, NoActions, ObjectRef, Transient, with_backoff

logger = logging.getLogger(__name__)

Resolver = Callable[[str, int], list[str]]  # (host, port) → IP addresses
CHUNK = 64 * 1024
USER_AGENT = "labelq (image labelling; +https://github.com/labelq)"


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (IPv4 and IPv6)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise NotFound(f"cannot resolve {host}: {exc.strerror or exc}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def public(address: str) -> bool:
    """Whether an address is on the public internet (not private, loopback, link-local, reserved …)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


class HttpStore(NoActions):
    schemes: ClassVar[tuple[str, ...]] = ("http", "https")
    listable: ClassVar[bool] = False
    taggable: ClassVar[bool] = False

    def __init__(self, settings: Settings, *, resolver: Resolver | None = None) -> None:
        self.max_bytes = settings.max_bytes
        self.attempts = settings.s3_max_attempts
        self.allow_private = settings.http_allow_private
        self.max_redirects = settings.http_max_redirects
        self.per_host = settings.http_per_host
        self.timeout = settings.http_timeout
        self.resolver = resolver or system_resolver
        self._hosts: dict[str, threading.BoundedSemaphore] = {}
        self._pools: dict[tuple[str, str, int, str], Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, **_: Any) -> HttpStore:
        return cls(settings)

    def list(self, prefix_uri: str, suffixes: tuple[str, ...], *, after: str | None = None,
             workers: int = 1) -> Iterator[tuple[ObjectRef, str]]:
        raise UsageError(f"{prefix_uri}: a URL cannot be listed; give a manifest (a text file of URLs, one a line)")

    def head(self, uri: str) -> ObjectRef:
        data = self.fetch(ObjectRef(uri))
        return ObjectRef(uri, len(data), getattr(data, "version", None))

    def fetch(self, ref: ObjectRef) -> bytes:
        if ref.size is not None and ref.size > self.max_bytes:
            raise TooLarge(f"object is {ref.size} bytes, over the limit of {self.max_bytes} (LABELQ_MAX_BYTES)")
        return with_backoff(lambda: self._follow(ref.uri), self.attempts, what=ref.uri)

    # ------------------------------------------------------------------ one attempt

    def _follow(self, uri: str) -> bytes:
        url = uri
        for _hop in range(self.max_redirects + 1):
            status, headers, body = self._get(url)
            if status in (301, 302, 303, 307, 308):
                location = headers.get("location")
                if not location:
                    raise StorageError(f"{uri}: redirect {status} without a Location")
                url = urljoin(url, location)
                if urlsplit(url).scheme not in ("http", "https"):
                    raise AccessDenied(f"{uri}: redirected to a non-HTTP URL {url}")
                continue
            return body
        raise StorageError(f"{uri}: more than {self.max_redirects} redirects (LABELQ_HTTP_MAX_REDIRECTS)")

    def _get(self, url: str) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise NotFound(f"not an http(s) URL: {url}")
        host = parts.hostname
        port = parts.port or (443 if parts.scheme == "https" else 80)
        address = self._address(url, host, port)
        with self._slot(host):
            pool = self._pool(parts.scheme, address, port, host)
            target = parts.path or "/"
            if parts.query:
                target += "?" + parts.query
            hostport = host if parts.port is None else f"{host}:{parts.port}"
            try:
                resp = pool.urlopen("GET", target, headers={"Host": hostport, "User-Agent": USER_AGENT},
                                    redirect=False, retries=False, preload_content=False, assert_same_host=False)
            except Exception as exc:  # noqa: BLE001 - timeouts, refused and dropped connections: try again
                raise Transient(f"{url}: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}") from None
            try:
                headers = {k.lower(): v for k, v in resp.headers.items()}
                status = resp.status
                if status in (301, 302, 303, 307, 308):
                    return status, headers, b""
                _raise_for(status, url)
                return status, headers, self._body(resp, headers, url)
            finally:
                resp.release_conn()

    def _body(self, resp: Any, headers: dict[str, str], url: str) -> bytes:
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            raise TooLarge(f"object is {length} bytes, over the limit of {self.max_bytes} (LABELQ_MAX_BYTES)")
        parts: list[bytes] = []
        got = 0
        try:
            for chunk in resp.stream(CHUNK, decode_content=True):
                got += len(chunk)
                if got > self.max_bytes:
                    raise TooLarge(f"object is over the limit of {self.max_bytes} bytes (LABELQ_MAX_BYTES)")
                parts.append(chunk)
        except TooLarge:
            raise
        except Exception as exc:  # noqa: BLE001 - the connection dropped or stalled mid-body
            raise Transient(f"{url}: body cut off: {type(exc).__name__}") from None
        data = Fetched(b"".join(parts))
        version = (headers.get("etag") or "").strip().removeprefix("W/").strip('"') or headers.get("last-modified")
        data.version = version or None
        return data

    def _address(self, url: str, host: str, port: int) -> str:
        """The address to connect to: the first the host resolves to, once every one is checked."""
        try:
            literal = ipaddress.ip_address(host)
            addresses = [str(literal)]
        except ValueError:
            addresses = self.resolver(host, port)
        if not addresses:
            raise NotFound(f"{url}: {host} has no address")
        if not self.allow_private:
            blocked = [a for a in addresses if not public(a)]
            if blocked:
                raise AccessDenied(f"{url}: {host} resolves to a non-public address ({blocked[0]}); "
                                   "LABELQ_HTTP_ALLOW_PRIVATE=true allows it")
        return addresses[0]

    def _slot(self, host: str) -> threading.BoundedSemaphore:
        with self._lock:
            sem = self._hosts.get(host)
            if sem is None:
                sem = self._hosts[host] = threading.BoundedSemaphore(self.per_host)
            return sem

    def _pool(self, scheme: str, address: str, port: int, host: str) -> Any:
        import urllib3

        key = (scheme, address, port, host)
        with self._lock:
            pool = self._pools.get(key)
            if pool is None:
                timeout = urllib3.Timeout(connect=self.timeout, read=self.timeout)
                if scheme == "https":
                    pool = urllib3.HTTPSConnectionPool(address, port, timeout=timeout, maxsize=self.per_host,
                                                       server_hostname=host, assert_hostname=host)
                else:
                    pool = urllib3.HTTPConnectionPool(address, port, timeout=timeout, maxsize=self.per_host)
                self._pools[key] = pool
            return pool


def _raise_for(status: int, url: str) -> None:
    if 200 <= status < 300:
        return
    if status in (404, 410):
        raise NotFound(f"{url}: HTTP {status}")
    if status in (401, 403, 451):
        raise AccessDenied(f"{url}: HTTP {status}")
    if status == 429 or status >= 500 or status == 408:
        raise Transient(f"{url}: HTTP {status}")
    raise StorageError(f"{url}: HTTP {status}")
