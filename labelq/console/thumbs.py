"""Thumbnails made by the console from the stored object: bounded, cached on disk, signed URLs.

The browser never gets storage credentials or bucket URLs: it gets ``/thumb?u=URI&e=ETAG&s=SIG``,
where SIG is an HMAC the console made when it rendered a URI it read from a record or the audit
trail. A URI the console did not sign is refused, so the endpoint fetches nothing a page did not
show; objects are read through :class:`labelq.objects.Stores` (S3, or files under
``LABELQ_LOCAL_ROOT`` only), within ``LABELQ_MAX_BYTES`` and ``LABELQ_MAX_PIXELS``.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import os
import tempfile
import threading
from pathlib import Path
from urllib.parse import urlencode

from ..config import Settings

logger = logging.getLogger(__name__)

SCHEMES = ("s3://", "file://")


class Signer:
    def __init__(self, secret: str) -> None:
        self.key = hashlib.sha256(b"labelq-console-thumb\0" + secret.encode()).digest()

    def sign(self, uri: str, etag: str) -> str:
        return hmac.new(self.key, f"{uri}\0{etag}".encode(), hashlib.sha256).hexdigest()[:32]

    def verify(self, uri: str, etag: str, sig: str) -> bool:
        return hmac.compare_digest(self.sign(uri, etag).encode(), sig.encode())

    def url(self, uri: str, etag: str | None) -> str:
        e = etag or ""
        return "/thumb?" + urlencode({"u": uri, "e": e, "s": self.sign(uri, e)})


def make_thumbnail(data: bytes, px: int, max_pixels: int) -> bytes:
    """A JPEG whose longer side is at most ``px``; ValueError for images over the pixel limit."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as im:
        if im.width * im.height > max_pixels:
            raise ValueError(f"{im.width}x{im.height} is over LABELQ_MAX_PIXELS")
        im.draft("RGB", (px, px))  # JPEG: decode at a fraction of the size
        small = ImageOps.exif_transpose(im)
        small.thumbnail((px, px))
        if small.mode not in ("RGB", "L"):
            small = small.convert("RGBA")
            flat = Image.new("RGB", small.size, (255, 255, 255))
            flat.paste(small, mask=small.getchannel("A"))
            small = flat
        out = io.BytesIO()
        small.save(out, "JPEG", quality=80)
        return out.getvalue()


class ThumbCache:
    """Thumbnails on disk, named by a hash of (uri, etag, size); oldest dropped past the size bound."""

    def __init__(self, folder: Path | None, max_bytes: int) -> None:
        self.folder = Path(folder) if folder else Path(tempfile.mkdtemp(prefix="labelq-thumbs-"))
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self.used = sum(p.stat().st_size for p in self.folder.glob("*.jpg"))

    def path(self, uri: str, etag: str, px: int) -> Path:
        name = hashlib.sha256(f"{uri}\0{etag}\0{px}".encode()).hexdigest()
        return self.folder / f"{name}.jpg"

    def get(self, uri: str, etag: str, px: int) -> bytes | None:
        try:
            return self.path(uri, etag, px).read_bytes()
        except OSError:
            return None

    def put(self, uri: str, etag: str, px: int, data: bytes) -> None:
        path = self.path(uri, etag, px)
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        with self._lock:
            self.used += len(data)
            if self.used > self.max_bytes:
                self._evict()

    def _evict(self) -> None:
        files = sorted(self.folder.glob("*.jpg"), key=lambda p: p.stat().st_mtime)
        used = sum(p.stat().st_size for p in files)
        for p in files:
            if used <= self.max_bytes * 0.8:
                break
            size = p.stat().st_size
            p.unlink(missing_ok=True)
            used -= size
        self.used = used


class Thumbnails:
    """Fetch → thumbnail → cache, for signed URIs only."""

    def __init__(self, settings: Settings, stores: object, signer: Signer) -> None:
        self.settings = settings
        self.stores = stores
        self.signer = signer
        self.px = settings.console_thumb_px
        self.cache = ThumbCache(settings.console_thumb_dir, settings.console_thumb_cache_mb * 1024 * 1024)

    def get(self, uri: str, etag: str) -> bytes:
        """The thumbnail's JPEG bytes; labelq's storage errors (not found, outside the root...) propagate."""
        from ..objects import ObjectRef

        if not uri.startswith(SCHEMES):
            raise PermissionError(f"not a stored object: {uri}")
        cached = self.cache.get(uri, etag, self.px)
        if cached is not None:
            return cached
        data = self.stores.fetch(ObjectRef(uri, None, etag or None))  # type: ignore[attr-defined]
        thumb = make_thumbnail(data, self.px, self.settings.max_pixels)
        self.cache.put(uri, etag, self.px, thumb)
        return thumb


PLACEHOLDER_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" width="160" height="120" viewBox="0 0 160 120">'
    '<rect width="160" height="120" fill="#eee"/><text x="80" y="64" font-family="sans-serif" font-size="12" '
    'text-anchor="middle" fill="#888">{text}</text></svg>'
)
