"""Bucket listings in key order, resumable after any key: one ListObjectsV2 stream or a prefix fan-out.

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
from typing import Any

from .errors import UsageError
from .storage import ObjectRef, kept, s3_error, s3_uri

logger = logging.getLogger(__name__)

MAX_DEPTH = 3  # levels below the listed prefix the fan-out may descend to find sub-prefixes
BUFFER_PAGES = 64  # pages (1 000 refs each, ~20 MB in all) the streams may list ahead of the consumer
SPAN_KEYS = 2000  # keys one stream's span aims at, once the keys per sub-prefix are known
WINDOW = 4096  # items of the delimiter level read ahead of the consumer
_DONE = object()


def list_keys(client: Any, bucket: str, prefix: str, suffixes: tuple[str, ...], *, after: str | None = None,
              workers: int = 1) -> Iterator[tuple[ObjectRef, str]]:
    """Objects under ``s3://bucket/prefix`` with a kept suffix, as (ref, key), in key order, after ``after``."""
    if workers <= 1:
        yield from stream(client, bucket, prefix, suffixes, after=after)
    else:
        yield from fan_out(client, bucket, prefix, suffixes, after=after, workers=workers)


def stream(client: Any, bucket: str, prefix: str, suffixes: tuple[str, ...], *,
           after: str | None = None) -> Iterator[tuple[ObjectRef, str]]:
    """One ListObjectsV2 stream, one page (1 000 keys) at a time."""
    with _listing_errors(bucket, prefix):
        for page in _pages(client, bucket, prefix, after):
            yield from _refs(bucket, page.get("Contents", ()), suffixes, after)


def fan_out(client: Any, bucket: str, prefix: str, suffixes: tuple[str, ...], *, after: str | None = None,
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
            with _listing_errors(bucket, prefix):
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
                yield from _refs(bucket, [value], suffixes, after)
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


def _pages(client: Any, bucket: str, prefix: str, after: str | None, **extra: Any) -> Iterator[dict[str, Any]]:
    params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, **extra}
    if after is not None and after > prefix:  # a cursor before the prefix lists all of it
        params["StartAfter"] = after
    yield from client.get_paginator("list_objects_v2").paginate(**params)


def _refs(bucket: str, contents: Any, suffixes: tuple[str, ...], after: str | None) -> Iterator[tuple[ObjectRef, str]]:
    for obj in contents:
        key = obj["Key"]
        if (after is not None and key <= after) or key.endswith("/") or not kept(key, suffixes):
            continue  # (a store that ignores StartAfter still resumes right)
        yield ObjectRef(s3_uri(bucket, key), obj.get("Size"), obj.get("ETag", "").strip('"') or None), key


def _units(client: Any, bucket: str, prefix: str, after: str | None, workers: int, depth: int,
           sizes: _Sizes) -> Iterator[tuple[str, Any]]:
    """The prefix as ("key", obj) and ("range", Span) items in key order, none wholly before ``after``."""
    pages = _pages(client, bucket, prefix, _level_start(prefix, after), Delimiter="/")
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


def _pump(client: Any, bucket: str, span: Span, suffixes: tuple[str, ...], after: str | None,
          out: queue.Queue[Any], stop: threading.Event, sizes: _Sizes) -> None:
    """List one span into ``out`` a page of (ref, key) at a time; blocks while ``out`` is full."""
    try:
        seen = 0
        for page in _pages(client, bucket, span.prefix, span.start_after(after)):
            contents = page.get("Contents", ())
            ended = bool(contents) and span.past(contents[-1]["Key"])
            objs = [o for o in contents if span.holds(o["Key"]) and not span.past(o["Key"])]
            seen += len(objs)
            if not _put(out, list(_refs(bucket, objs, suffixes, after)), stop):
                return
            if ended:
                break
        sizes.add(span.count, seen)
        _put(out, _DONE, stop)
    except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
        _put(out, _as_usage(exc, bucket, span.prefix), stop)


def _put(out: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            out.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _as_usage(exc: BaseException, bucket: str, prefix: str) -> BaseException:
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, ClientError):
        return UsageError(f"cannot list s3://{bucket}/{prefix}: {s3_error(exc, f's3://{bucket}/{prefix}')}")
    if isinstance(exc, BotoCoreError):
        return UsageError(f"cannot reach S3 to list s3://{bucket}/{prefix}: {exc}")
    return exc


@contextmanager
def _listing_errors(bucket: str, prefix: str) -> Iterator[None]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise _as_usage(exc, bucket, prefix) from None
