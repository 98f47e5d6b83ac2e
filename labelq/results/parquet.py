"""The Parquet record store: a dataset in a local folder or on S3, one file per written chunk.

Layout (job, model and chunk id URL-quoted, so ``org/name`` and ``/a/path`` stay one segment)::

    {root}/job={job}/model={model}/part-{chunk}.parquet

A chunk's records go in one file at a key fixed by its id: a redelivered chunk replaces its own
file (locally a temp file + rename, on S3 a single PUT), so the dataset has no duplicates by
construction. ``write`` without a chunk id writes a uniquely named part. Every file holds all the
record fields, sorted by uri: each file's uri range (its footer statistics) lets the skip check
read only the few files that can hold a group of listed objects.

* ``iter_records(job)``: that job's partition; one record per (uri, model) (the newest, where a
  retry of the same job wrote an object again in another chunk).
* ``get_many(model, uris)``: newest record of each object for a model across every job's
  partition. The uri ranges of a model's files are read once per store and kept (about 200 bytes
  a file); files written after that are not seen by this store: fine for a producer, which skips
  what earlier jobs did.
"""

from __future__ import annotations

import bisect
import io
import logging
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from ..errors import UsageError
from ..records import FIELDS, Record, arrow_schema
from .base import RevisionCounts, count_revisions

logger = logging.getLogger(__name__)

SCHEMES = ("parquet://", "parquet+s3://")
SUFFIX = ".parquet"


class Files(Protocol):
    """The few file operations the store needs, on a local folder or an S3 prefix (keys are '/'-joined)."""

    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes: ...

    def ls(self, prefix: str) -> list[str]: ...

    def subdirs(self, prefix: str) -> list[str]: ...

    def put_new(self, key: str, data: bytes) -> bool: ...

    def sizes(self, prefix: str) -> dict[str, int]: ...

    def delete(self, key: str) -> None: ...


def local_root(url: str) -> Path:
    """The folder of a local store URL ``scheme:///abs/folder``, created if missing (``parquet://``,
    ``delta://``); a relative folder or one that cannot be created is one line for the user."""
    scheme, _sep, path = url.partition("://")
    if not path.startswith("/"):
        raise UsageError(f"result store {url}: use an absolute folder, as in {scheme}:///data/labels")
    root = Path(path)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"result store {url}: cannot create {root}: {exc.strerror}") from None
    return root


class LocalFiles:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _temp(self, key: str, data: bytes) -> tuple[Path, Path]:
        """``data`` written complete to a hidden temp file beside ``key``'s path (listings skip dot files)."""
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        with tmp.open("wb") as f:
            f.write(data)
        return path, tmp

    def put(self, key: str, data: bytes) -> None:
        path, tmp = self._temp(key, data)
        os.replace(tmp, path)  # atomic: a reader sees the old file or the new one

    def put_new(self, key: str, data: bytes) -> bool:
        """Write ``key`` only when it does not exist (atomically: a hard link of a complete temp file)."""
        path, tmp = self._temp(key, data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            tmp.unlink()
        return True

    def get(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def sizes(self, prefix: str) -> dict[str, int]:
        folder = self.root / prefix
        if not folder.is_dir():
            return {}
        return {f"{prefix}{p.name}": p.stat().st_size for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")}

    def delete(self, key: str) -> None:
        (self.root / key).unlink(missing_ok=True)

    def ls(self, prefix: str) -> list[str]:
        folder = self.root / prefix
        if not folder.is_dir():
            return []
        return sorted(f"{prefix}{p.name}" for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))

    def subdirs(self, prefix: str) -> list[str]:
        folder = self.root / prefix if prefix else self.root
        if not folder.is_dir():
            return []
        return sorted(f"{prefix}{p.name}/" for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


class S3Files:
    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data)

    def put_new(self, key: str, data: bytes) -> bool:
        """Write ``key`` only when it does not exist (``If-None-Match: *``: AWS S3, MinIO, moto)."""
        try:
            self.client.put_object(Bucket=self.bucket, Key=self.prefix + key, Body=data, IfNoneMatch="*")
        except self.client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise
        return True

    def get(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)["Body"].read()  # type: ignore[no-any-return]
        except self.client.exceptions.NoSuchKey:
            raise FileNotFoundError(key) from None

    def sizes(self, prefix: str) -> dict[str, int]:
        cut = len(self.prefix)
        return {item["Key"][cut:]: int(item["Size"]) for page in self._pages(prefix, Delimiter="/")
                for item in page.get("Contents", [])}

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self.prefix + key)

    def _pages(self, prefix: str, **extra: Any) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator("list_objects_v2")
        yield from paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + prefix, **extra)

    def ls(self, prefix: str) -> list[str]:
        cut = len(self.prefix)
        return sorted(item["Key"][cut:] for page in self._pages(prefix, Delimiter="/") for item in page.get("Contents", []))

    def subdirs(self, prefix: str) -> list[str]:
        cut = len(self.prefix)
        return sorted(p["Prefix"][cut:] for page in self._pages(prefix, Delimiter="/") for p in page.get("CommonPrefixes", []))


@dataclass(frozen=True, slots=True)
class _Part:
    key: str
    low: str  # smallest uri in the file
    high: str  # largest


class UriIndex:
    """One model's files sorted by smallest uri, with a running max of the largest: which files can hold a
    group of uris (the skip check reads only those). Also serves the Delta store (from its log's stats)."""

    def __init__(self, parts: list[_Part]) -> None:
        self.parts = sorted(parts, key=lambda p: p.low)
        self.lows = [p.low for p in self.parts]
        self.reach: list[str] = []
        for part in self.parts:
            self.reach.append(max(self.reach[-1], part.high) if self.reach else part.high)

    def overlapping(self, lo: str, hi: str) -> list[str]:
        """Keys of the files whose uri range overlaps [lo, hi]."""
        out = []
        i = bisect.bisect_right(self.lows, hi) - 1
        while i >= 0 and self.reach[i] >= lo:  # files starting at or before hi that reach lo or beyond
            if self.parts[i].high >= lo:
                out.append(self.parts[i].key)
            i -= 1
        return out


def read_newest(files: Files, keys: Sequence[str], uris: Sequence[str], model: str | None = None) -> dict[str, Record]:
    """The newest record of each of ``uris`` (of ``model``, when the files hold several) in these files:
    filtered with pyarrow compute before any Record is made."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    best: dict[str, Record] = {}
    value_set = pa.array(sorted(set(uris)), pa.string())
    for key in keys:
        table = pq.ParquetFile(io.BytesIO(files.get(key))).read()
        mask = pc.is_in(table["uri"], value_set=value_set)
        if model is not None:
            mask = pc.and_(mask, pc.equal(table["model"], model))
        for row in table.filter(mask).to_pylist():
            rec = _from_row(row)
            have = best.get(rec.uri)
            if have is None or (rec.processed_at, rec.job or "") > (have.processed_at, have.job or ""):
                best[rec.uri] = rec
    return best


def _q(value: str | None) -> str:
    return quote(value or "", safe="")


class ParquetStore:
    """Records as a Parquet dataset, one file per chunk (see the module docstring)."""

    per_chunk = True

    def __init__(self, files: Files, *, url: str = "") -> None:
        self.files = files
        self.url = url
        self._index: dict[tuple[str, str | None], UriIndex] = {}  # (model, job or None for all) → uri ranges

    @classmethod
    def from_url(cls, url: str, *, s3_client: Any = None, settings: Any = None, **_: Any) -> ParquetStore:
        """``parquet:///abs/folder`` or ``parquet+s3://bucket/prefix`` (the S3 client from ``settings``:
        endpoint URL, region, boto3's credential chain; or ``s3_client`` itself)."""
        if url.startswith("parquet+s3://"):
            rest = url[len("parquet+s3://") :]
            bucket, _sep, prefix = rest.partition("/")
            if not bucket:
                raise UsageError(f"result store {url}: name a bucket, as in parquet+s3://bucket/prefix")
            if s3_client is None:
                if settings is not None:
                    from ..objects import make_s3_client

                    s3_client = make_s3_client(settings)
                else:
                    import boto3

                    s3_client = boto3.client("s3")
            return cls(S3Files(s3_client, bucket, prefix), url=url)
        if url.startswith("parquet://"):
            return cls(LocalFiles(local_root(url)), url=url)
        raise UsageError(f"unsupported Parquet result store {url}: use parquet:///abs/folder or parquet+s3://bucket/prefix")

    # ------------------------------------------------------------------ write

    @staticmethod
    def part_key(job: str | None, model: str, chunk: str) -> str:
        return f"job={_q(job)}/model={_q(model)}/part-{_q(chunk)}{SUFFIX}"

    def write(self, records: Sequence[Record], *, chunk: str | None = None) -> None:
        """One file per (job, model) among ``records``, at the chunk's key (or a fresh one without a chunk id)."""
        groups: dict[tuple[str | None, str], dict[str, Record]] = {}
        for rec in records:
            groups.setdefault((rec.job, rec.model), {})[rec.uri] = rec  # last one of an object wins
        name = chunk if chunk is not None else uuid.uuid4().hex
        for (job, model), by_uri in groups.items():
            self.files.put(self.part_key(job, model, name), _encode([by_uri[u] for u in sorted(by_uri)]))

    # ------------------------------------------------------------------ per job

    def _job_parts(self, job: str) -> dict[str, list[str]]:
        """model partition folder → its part keys, for one job."""
        base = f"job={_q(job)}/"
        return {folder: [k for k in self.files.ls(folder) if k.endswith(SUFFIX)] for folder in self.files.subdirs(base)}

    def _winners(self, keys: list[str]) -> dict[str, int] | None:
        """uri → index of the file holding its newest record, or None when no uri is in two files."""
        import pyarrow.parquet as pq

        seen: dict[str, tuple[str, int]] = {}
        dup = False
        for i, key in enumerate(keys):
            cols = pq.read_table(io.BytesIO(self.files.get(key)), columns=["uri", "processed_at"]).to_pydict()
            for uri, at in zip(cols["uri"], cols["processed_at"], strict=True):
                have = seen.get(uri)
                if have is not None:
                    dup = True
                    if (at or "") < have[0]:
                        continue
                seen[uri] = (at or "", i)
        return {uri: i for uri, (_, i) in seen.items()} if dup else None

    def iter_records(self, job: str) -> Iterator[Record]:
        """That job's records, model partition by partition, one per (uri, model), uri order within a file."""
        for keys in self._job_parts(job).values():
            winners = self._winners(keys) if len(keys) > 1 else None
            for i, key in enumerate(keys):
                for rec in _decode(self.files.get(key)):
                    if winners is None or winners.get(rec.uri) == i:
                        yield rec

    def count(self, job: str) -> int:
        import pyarrow.parquet as pq

        total = 0
        for keys in self._job_parts(job).values():
            winners = self._winners(keys) if len(keys) > 1 else None
            if winners is not None:
                total += len(winners)
            else:
                total += sum(pq.read_metadata(io.BytesIO(self.files.get(k))).num_rows for k in keys)
        return total

    def revisions(self, job: str) -> RevisionCounts:
        return count_revisions(self.iter_records(job))

    # ------------------------------------------------------------------ across jobs

    def _model_index(self, model: str, job: str | None = None) -> UriIndex:
        """The model's files across jobs (or of one job) and their uri ranges (each footer read once per store)."""
        if (model, job) not in self._index:
            import pyarrow.parquet as pq

            parts: list[_Part] = []
            job_dirs = self.files.subdirs("") if job is None else [f"job={_q(job)}/"]
            for job_dir in job_dirs:
                if not job_dir.startswith("job="):
                    continue
                for key in self.files.ls(f"{job_dir}model={_q(model)}/"):
                    if not key.endswith(SUFFIX):
                        continue
                    meta = pq.read_metadata(io.BytesIO(self.files.get(key)))
                    bounds = _uri_bounds(meta)
                    if bounds is not None:
                        parts.append(_Part(key, *bounds))
            self._index[(model, job)] = UriIndex(parts)
        return self._index[(model, job)]

    def refresh(self) -> None:
        """Forget the file index: the next get_many lists the dataset again."""
        self._index.clear()

    def get_many(self, model: str, uris: Sequence[str]) -> dict[str, Record]:
        """The newest record of each of these objects for ``model`` across jobs: reads only the files whose
        uri range overlaps the group's, filtered to these uris (pyarrow compute, before any Record is made)."""
        return self._lookup(model, uris, None)

    def job_get_many(self, job: str, model: str, uris: Sequence[str]) -> dict[str, Record]:
        """This job's record of each of these objects for ``model`` (its partition only; the file index of
        the job is read once per store: :meth:`refresh` forgets it)."""
        return self._lookup(model, uris, job)

    def _lookup(self, model: str, uris: Sequence[str], job: str | None) -> dict[str, Record]:
        wanted = sorted(set(uris))
        if not wanted:
            return {}
        return read_newest(self.files, self._model_index(model, job).overlapping(wanted[0], wanted[-1]), wanted)

    def close(self) -> None:
        self._index.clear()


def _encode(records: Sequence[Record]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {name: [getattr(r, name) for r in records] for name in FIELDS}
    buf = io.BytesIO()
    pq.write_table(pa.table(columns, schema=arrow_schema()), buf, compression="zstd")
    return buf.getvalue()


def _decode(data: bytes) -> Iterator[Record]:
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(io.BytesIO(data)).iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            yield _from_row(row)


def _from_row(row: dict[str, Any]) -> Record:
    if row.get("top_k") is None:
        row["top_k"] = []
    return Record.from_dict(row)


def _uri_bounds(meta: Any) -> tuple[str, str] | None:
    """Smallest and largest uri in a file, from its row groups' statistics."""
    index = meta.schema.names.index("uri")
    low: str | None = None
    high: str | None = None
    for g in range(meta.num_row_groups):
        stats = meta.row_group(g).column(index).statistics
        if stats is None or not stats.has_min_max:
            return "", "\U0010ffff"  # unknown: the file is read for every group
        low = stats.min if low is None else min(low, stats.min)
        high = stats.max if high is None else max(high, stats.max)
    return (low, high) if low is not None and high is not None else None

