"""What every record store answers, and the one rule for "is this object done?"."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import islice
from typing import Any, Protocol

from ..errors import RETRYABLE_KINDS
from ..objects import ObjectRef
from ..records import Record

# revisions(job): model → {revision (None: not recorded) → records of that job}
RevisionCounts = dict[str, dict[str | None, int]]


class RecordStore(Protocol):
    """Where records live: the Redis hashes, the SQL table, a Parquet dataset.

    Two views of the same records: per job (``iter_records``, ``count``: exactly what that job
    wrote, one record per (uri, model), stable after later jobs relabel the same objects) and
    global (``get_many``: the latest record of each object for a model across jobs, for skipping).
    """

    per_chunk: bool
    """True: the caller buffers a chunk's records and calls :meth:`write` once per chunk with its id
    (a redelivered chunk then replaces its own output). False: call it per batch."""

    def write(self, records: Sequence[Record], *, chunk: str | None = None) -> None: ...

    def get_many(self, model: str, uris: Sequence[str]) -> dict[str, Record]: ...

    def job_get_many(self, job: str, model: str, uris: Sequence[str]) -> dict[str, Record]:
        """That job's record of each of these objects for ``model``: what the verification of a job and
        a worker's duplicate check read (records decide; Redis marks are a cache)."""
        ...

    def iter_records(self, job: str) -> Iterator[Record]: ...

    def count(self, job: str) -> int: ...

    def revisions(self, job: str) -> RevisionCounts: ...

    def close(self) -> None: ...


Keep = Callable[[Record], bool]


def page_records(store: Any, job: str, model: str, *, after: str | None, limit: int,
                 keep: Keep) -> tuple[list[Record], str | None]:
    """One page of a job's records for ``model`` that ``keep`` accepts, after an opaque ``after`` cursor a
    previous page returned; returns the records and the next page's cursor (None: no more).

    Stores that can resume a scan (Redis: HSCAN's cursor; SQL: the uri, keyset) read only from the cursor on,
    so a page costs what it reads, not every record before it (``store.scan_page``). Others are read from
    the start and the records up to the cursor (a count) are skipped."""
    native = getattr(store, "scan_page", None)
    if native is not None:
        found, cursor = native(job, model, after, limit, keep)
        return found, cursor
    skip = int(after or 0)
    found = []
    seen = 0
    for rec in store.iter_records(job):
        if rec.model != model or not keep(rec):
            continue
        seen += 1
        if seen <= skip:
            continue
        if len(found) == limit:
            return found, str(skip + limit)
        found.append(rec)
    return found, None


def is_final(rec: Record, want_etag: str | None, want_revision: str | None = None) -> bool:
    """A stored record settles an object when its etag matches, it is not a retryable error, and
    it was made by the wanted model revision (when both that and the record's are known).

    An object listed without an etag (an s3:// line of a manifest) is never settled: there is
    no way to know it did not change without asking the store.
    """
    if want_etag is None or rec.etag != want_etag:
        return False
    if want_revision is not None and rec.model_revision is not None and rec.model_revision != want_revision:
        return False
    return rec.ok or rec.error_kind not in RETRYABLE_KINDS


def settled(
    store: Any,
    refs: Sequence[ObjectRef],
    models: Sequence[str],
    revisions: Mapping[str, str | None] | None = None,
) -> tuple[set[str], list[Record]]:
    """URIs among ``refs`` whose every model has a final record with the same etag (and, where
    ``revisions`` names one for a model, the same model revision), and those records.

    The one "done" routine: reruns, new jobs and the producer all skip by it.
    """
    want = {r.uri: r.etag for r in refs}
    if not want:
        return set(), []
    revisions = revisions or {}
    found: dict[str, list[Record]] = {}
    for model in models:
        for uri, rec in store.get_many(model, list(want)).items():
            if is_final(rec, want.get(uri), revisions.get(model)):
                found.setdefault(uri, []).append(rec)
    done = {uri for uri, recs in found.items() if len(recs) == len(models)}
    return done, [rec for uri in done for rec in found[uri]]


def skip_done(
    refs: Iterable[ObjectRef],
    store: Any,
    models: Sequence[str],
    *,
    chunk: int = 500,
    revisions: Mapping[str, str | None] | None = None,
) -> Iterator[ObjectRef]:
    """Lazily drop refs whose every model already has a final record with the same etag (and revision)."""
    it = iter(refs)
    while group := list(islice(it, chunk)):
        finished, _ = settled(store, group, models, revisions)
        for ref in group:
            if ref.uri not in finished:
                yield ref


def count_revisions(records: Iterable[Record]) -> RevisionCounts:
    """model → {model_revision → records}: the generic :meth:`RecordStore.revisions`."""
    counts: Counter[tuple[str, str | None]] = Counter((r.model, r.model_revision) for r in records)
    out: RevisionCounts = {}
    for (model, rev), n in sorted(counts.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        out.setdefault(model, {})[rev] = n
    return out


def older_revisions(counts: RevisionCounts, current: Mapping[str, str | None]) -> dict[str, int]:
    """Per model, how many of a job's records were made by another revision than ``current``'s
    (:func:`labelq.models.resolve_revision`). Records without a revision, or a model whose current
    revision is unknown, are not counted (nothing to compare)."""
    out: dict[str, int] = {}
    for model, by_rev in counts.items():
        now = current.get(model)
        if now is None:
            continue
        out[model] = sum(n for rev, n in by_rev.items() if rev is not None and rev != now)
    return out
