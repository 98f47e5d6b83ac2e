"""Bucket listings in key order, resumable after any key: one listing stream or a prefix fan-out.

Any store whose listing has a prefix, a delimiter and a start-after key (S3's ListObjectsV2, GCS's
``startOffset``, Azure's prefix walk) is listed here: the store hands in a :class:`Pager` that yields
pages in ListObjectsV2's shape, and everything below is the same for every store. A store whose API
ignores the start key (Azure) still resumes right: keys up to the cursor are dropped here.

Both yield ``(ref, key)`` in S3's key order (UTF-8 byte order, which is Python's ``str`` order), so a key
is the cursor of either: listing again with ``after=key`` (``StartAfter``) yields exactly the rest.

The fan-out reads the prefix with ``Delimiter="/"``: its direct keys and its sub-prefixes, in key order.
A level with fewer sub-prefixes than workers that fits one page is read one level further down (at most
``MAX_DEPTH``), so ``s3://bucket`` holding one ``images/`` folder still fans out. Runs of consecutive
sub-prefixes are then listed whole, one key range (:class:`Span`) per stream, on a pool of ``workers``
threads. A run starts as one sub-prefix and grows, from the keys per sub-prefix seen so far, towards
``SPAN_KEYS`` keys, so that many tiny prefixes do not cost a call each. The streams are read back in
order (every key under a sub-prefix sorts after the sub-prefix and before the level's next item, so the
concatenation is the one-stream order), at most ``workers`` streams ahead of the consumer, buffering at
most ``BUFFER_PAGES`` pages among them: memory stays bounded, and a stream whose span is longer than
its share of the buffer waits for the consumer. Sub-prefixes of up to a few thousand keys therefore
list at ``workers`` times one stream's rate; one huge flat prefix lists at about one stream's rate.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from .base import ObjectRef, kept

logger = logging.getLogger(__name__)

MAX_DEPTH = 3  # levels below the listed prefix the fan-out may descend to find sub-prefixes
BUFFER_PAGES = 64  # pages (1 000 refs each, ~20 MB in all) the streams may list ahead of the consumer
SPAN_KEYS = 2000  # keys one stream's span aims at, once the keys per sub-prefix are known
WINDOW = 4096  # items of the delimiter level read ahead of the consumer
_DONE = object()


class Pager(Protocol):
    """A store's listing calls, in ListObjectsV2's page shape.

    ``pages`` yields dicts with ``Contents`` ([{"Key", "Size", "ETag"}] in key order), ``CommonPrefixes``
    ([{"Prefix"}], with a delimiter) and ``IsTruncated``; ``after`` is exclusive and may be ignored.
    """

    def pages(self, bucket: str, prefix: str, after: str | None, delimiter: str | None = None) -> Iterator[dict[str, Any]]: ...

    def uri(self, bucket: str, key: str) -> str: ...

    def listing_error(self, exc: BaseException, bucket: str, prefix: str) -> BaseException:
        """The one-line error a listing failure becomes (UsageError), or ``exc`` itself when it is not the store's."""
        ...


def list_keys(client: Pager, bucket: str, prefix: str, suffixes: tuple[str, ...], *, after: str | None = None,
              workers: int = 1) -> Iterator[tuple[ObjectRef, str]]:
    """Objects under ``s3://bucket/prefix`` with a kept suffix, as (ref, key), in key order, after ``after``."""
    if workers <= 1:
        yield from stream(client, bucket, prefix, suffixes, after=after)
    else:
        yield from fan_out(client, bucket, prefix, suffixes, after=after, workers=workers)


def stream(client: Pager, bucket: str, prefix: str, suffixes: tuple[str, ...], *,
           after: str | None = None) -> Iterator[tuple[ObjectRef, str]]:
    """One ListObjectsV2 stream, one page (1 000 keys) at a time."""
    with _listing_errors(client, bucket, prefix):
        for page in _pages(client, bucket, prefix, after):
            yield from _refs(client, bucket, page.get("Contents", ()), suffixes, after)


def fan_out(client: Pager, bucket: str, prefix: str, suffixes: tuple[str, ...], *, after: str | None = None,
            workers: int = 8) -> Iterator[tuple[ObjectRef, str]]:
    """The same listing as :func:`stream`, with the sub-prefixes listed by ``workers`` concurrent streams."""
    stop = threading.Event()
    pool = ThreadPoolExecutor(workers, thread_name_prefix="labelq-list")
    window: deque[tuple[str, Any]] = deque()  # ("key", obj) or ("range", queue of pages)
    streams = 0  # range streams submitted and not yet being read
    sizes = _Sizes()
    units = _units(client, bucket, prefix, after, workers, 0, sizes)
    more = True
    try:
        while True:
            with _listing_errors(client, bucket, prefix):
                while more and streams < workers and len(window) < WINDOW:
                    unit = next(units, None)
                    if unit is None:
                        more = False
                    elif unit[0] == "key":
                        window.append(unit)
                    else:
                        pages: queue.Queue[Any] = queue.Queue(max(2, BUFFER_PAGES // workers))
                        pool.submit(_pump, client, bucket, unit[1], suffixes, after, pages, stop, sizes)
                        window.append(("range", pages))
                        streams += 1
            if not window:
                return
            kind, value = window.popleft()
            if kind == "key":
                yield from _refs(client, bucket, [value], suffixes, after)
                continue
            streams -= 1  # every stream submitted before it has been read to the end: it runs now
            while (item := value.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                yield from item
    finally:
        stop.set()
        pool.shutdown(wait=False, cancel_futures=True)


# ----------------------------------------------------------------------------- helpers


def _pages(client: Pager, bucket: str, prefix: str, after: str | None, delimiter: str | None = None) -> Iterator[dict[str, Any]]:
    start = after if after is not None and after > prefix else None  # a cursor before the prefix lists all of it
    yield from client.pages(bucket, prefix, start, delimiter)


def _refs(client: Pager, bucket: str, contents: Any, suffixes: tuple[str, ...], after: str | None) -> Iterator[tuple[ObjectRef, str]]:
    for obj in contents:
        key = obj["Key"]
        if (after is not None and key <= after) or key.endswith("/") or not kept(key, suffixes):
            continue  # (a store that ignores StartAfter still resumes right)
        yield ObjectRef(client.uri(bucket, key), obj.get("Size"), (obj.get("ETag") or "").strip('"') or None), key


def _units(client: Pager, bucket: str, prefix: str, after: str | None, workers: int, depth: int,
           sizes: _Sizes) -> Iterator[tuple[str, Any]]:
    """The prefix as ("key", obj) and ("range", Span) items in key order, none wholly before ``after``."""
    pages = _pages(client, bucket, prefix, _level_start(prefix, after), "/")
    first = next(pages, None)
    if first is None:
        return
    truncated, subs = bool(first.get("IsTruncated")), len(first.get("CommonPrefixes", ()))
    if depth > 0 and truncated and subs == 0:
        yield "range", Span(prefix, None, None, 1)  # a long flat run of keys: one stream lists it faster
        return
    descend = not truncated and subs < workers and depth < MAX_DEPTH
    for page in itertools.chain([first], pages):
        items = [(o["Key"], "key", o) for o in page.get("Contents", ())]
        items += [(p["Prefix"], "prefix", p["Prefix"]) for p in page.get("CommonPrefixes", ())]
        items.sort(key=lambda item: item[0])  # a page holds one contiguous run of the level
        items = [item for item in items if not _before(item[0], item[1], after)]
        run: list[str] = []  # consecutive sub-prefixes, no key between them
        for name, kind, value in items:
            if kind == "prefix" and descend:
                yield from _units(client, bucket, name, after, workers, depth + 1, sizes)
            elif kind == "prefix":
                run.append(name)
                if len(run) >= sizes.per_span():
                    yield "range", Span(prefix, run[0], run[-1], len(run))
                    run = []
            else:
                if run:
                    yield "range", Span(prefix, run[0], run[-1], len(run))
                    run = []
                yield "key", value
        if run:
            yield "range", Span(prefix, run[0], run[-1], len(run))


class _Sizes:
    """Keys per sub-prefix seen so far by the streams, to size the next spans (read and written across threads)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.prefixes = self.keys = 0

    def add(self, prefixes: int, keys: int) -> None:
        with self.lock:
            self.prefixes += prefixes
            self.keys += keys

    def per_span(self) -> int:
        """Sub-prefixes in the next span: 1 until a span is done, then enough for ~SPAN_KEYS keys (at most 1 000)."""
        with self.lock:
            if not self.prefixes:
                return 1
            return max(1, min(1000, SPAN_KEYS * self.prefixes // max(1, self.keys)))


def _before(name: str, kind: str, after: str | None) -> bool:
    """Whether a level's item lies wholly before the cursor (a sub-prefix holding it does not)."""
    return after is not None and name <= after and not (kind == "prefix" and after.startswith(name))


@dataclass(frozen=True)
class Span:
    """The keys under ``prefix`` from sub-prefix ``first`` through sub-prefix ``last`` (None: all of them)."""

    prefix: str
    first: str | None
    last: str | None
    count: int  # sub-prefixes in the span

    def start_after(self, after: str | None) -> str | None:
        """StartAfter for this span: just before ``first`` (``"p/b"`` for ``"p/b/"``), or the cursor if later."""
        start = self.first[:-1] if self.first else None
        if start is None or after is None:
            return after if start is None else start
        return max(start, after)

    def holds(self, key: str) -> bool:
        return self.first is None or key >= self.first

    def past(self, key: str) -> bool:
        """Whether ``key`` sorts after every key under ``last`` (``"p/b/"`` → anything from ``"p/b0"``)."""
        return self.last is not None and key >= self.last[:-1] + chr(ord(self.last[-1]) + 1)


def _level_start(prefix: str, after: str | None) -> str | None:
    """StartAfter for a delimiter listing of ``prefix`` that keeps the sub-prefix holding ``after``.

    ``StartAfter="p/b/x.jpg"`` would drop the sub-prefix ``p/b/`` itself (moto drops it); ``"p/b"`` keeps it
    and skips only what sorts before it. The items between are filtered by the caller.
    """
    if after is None or not after.startswith(prefix):
        return after
    rest = after[len(prefix):]
    return prefix + rest.split("/", 1)[0] if "/" in rest else after


def _pump(client: Pager, bucket: str, span: Span, suffixes: tuple[str, ...], after: str | None,
          out: queue.Queue[Any], stop: threading.Event, sizes: _Sizes) -> None:
    """List one span into ``out`` a page of (ref, key) at a time; blocks while ``out`` is full."""
    try:
        seen = 0
        for page in _pages(client, bucket, span.prefix, span.start_after(after)):
            contents = page.get("Contents", ())
            ended = bool(contents) and span.past(contents[-1]["Key"])
            objs = [o for o in contents if span.holds(o["Key"]) and not span.past(o["Key"])]
            seen += len(objs)
            if not _put(out, list(_refs(client, bucket, objs, suffixes, after)), stop):
                return
            if ended:
                break
        sizes.add(span.count, seen)
        _put(out, _DONE, stop)
    except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
        _put(out, client.listing_error(exc, bucket, span.prefix) if isinstance(exc, Exception) else exc, stop)


def _put(out: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            out.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


@contextmanager
def _listing_errors(client: Pager, bucket: str, prefix: str) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        error = client.listing_error(exc, bucket, prefix)
        if error is exc:
            raise
        raise error from None
