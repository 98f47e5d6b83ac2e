"""Result records and the files they are exported to.

One record per (image, model), with exactly the fields of DESIGN.md, written the
same way by every store and every export format.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from .errors import ERROR_KINDS, UsageError

logger = logging.getLogger(__name__)

FORMATS = ("jsonl", "csv", "parquet")


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class Record:
    uri: str
    etag: str | None
    model: str
    # Keyword-only (so positional ``label, score, top_k`` callers stay right), but declared here so that
    # FIELDS, to_dict() and every export put it right after ``model``.
    model_revision: str | None = field(default=None, kw_only=True)
    label: str | None = None
    score: float | None = None
    top_k: list[dict[str, Any]] = field(default_factory=list)
    status: str = "ok"
    error_kind: str | None = None
    error: str | None = None
    job: str | None = None
    worker: str | None = None
    processed_at: str = field(default_factory=utcnow)

    def __post_init__(self) -> None:
        if self.status == "error" and self.error_kind not in ERROR_KINDS:
            raise ValueError(f"unknown error kind {self.error_kind!r}")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        """The fields in FIELDS order; top_k copied (what ``asdict`` gives, at a tenth of its cost)."""
        out = {name: getattr(self, name) for name in FIELDS}
        out["top_k"] = [dict(t) for t in self.top_k]
        return out

    def to_json(self) -> str:
        return json.dumps({name: getattr(self, name) for name in FIELDS}, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Record:
        values = {k: v for k, v in data.items() if k in _KNOWN}
        if isinstance(values.get("top_k"), str):
            values["top_k"] = json.loads(values["top_k"])
        return cls(**values)

    @classmethod
    def from_json(cls, text: str | bytes) -> Record:
        return cls.from_dict(json.loads(text))


FIELDS = tuple(f.name for f in fields(Record))
_KNOWN = frozenset(FIELDS)  # from_dict keeps these keys (and drops any a newer writer added)

# How a record's outcome is spelled in Redis (job failure index, record hashes, the Lua scripts
# in jobs.py): ``o`` for ok, ``e:<kind>`` for an error. One place decides it.
OK_CODE = "o"


def status_code(rec: Record) -> str:
    """A record's outcome in one short string: ``o`` or ``e:<kind>``."""
    return OK_CODE if rec.ok else f"e:{rec.error_kind}"


def encode_body(rec: Record) -> str:
    """A record as the Redis record store holds it: one status char (``o``/``e``), then the JSON."""
    return ("o" if rec.ok else "e") + rec.to_json()


def decode_body(value: str | bytes) -> Record:
    text = value.decode() if isinstance(value, bytes) else value
    return Record.from_json(text[1:])


def format_for(path: Path | str, explicit: str | None = None) -> str:
    """The export format: explicit, else the file's suffix."""
    fmt = (explicit or Path(path).suffix.lstrip(".")).lower()
    if fmt == "json":
        fmt = "jsonl"
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt or '(none)'!r} for {path}: use .jsonl, .csv or .parquet")
    return fmt


class RecordWriter:
    """Streams batches of records to a file in one of FORMATS; memory stays one batch deep."""

    def __init__(self, target: IO[Any] | Path | str, fmt: str, *, rows_per_group: int = 50_000) -> None:
        self.fmt = fmt
        self.count = 0
        self._owned: IO[Any] | None = None
        self._parquet: Any = None
        self._pending: list[Record] = []
        self._rows_per_group = rows_per_group
        if fmt == "parquet":
            import pyarrow.parquet as pq

            self._parquet = pq.ParquetWriter(target if hasattr(target, "write") else str(target), arrow_schema())
            return
        if hasattr(target, "write"):
            self._f: IO[str] = target  # type: ignore[assignment]
        else:
            self._owned = self._f = Path(target).open("w", encoding="utf-8", newline="")  # type: ignore[arg-type]
        if fmt == "csv":
            self._csv = csv.DictWriter(self._f, fieldnames=FIELDS)
            self._csv.writeheader()

    def write(self, records: Iterable[Record]) -> None:
        for rec in records:
            self.count += 1
            if self.fmt == "jsonl":
                self._f.write(rec.to_json() + "\n")
            elif self.fmt == "csv":
                row = rec.to_dict()
                row["top_k"] = json.dumps(row["top_k"], separators=(",", ":"))
                self._csv.writerow(row)
            else:
                self._pending.append(rec)
                if len(self._pending) >= self._rows_per_group:
                    self._flush_parquet()

    def _flush_parquet(self) -> None:
        import pyarrow as pa

        if self._pending:
            columns = {name: [getattr(r, name) for r in self._pending] for name in FIELDS}
            self._parquet.write_table(pa.table(columns, schema=arrow_schema()))
            self._pending = []

    def close(self) -> None:
        if self._parquet is not None:
            self._flush_parquet()
            self._parquet.close()
        elif self._owned is not None:
            self._owned.close()
        else:
            self._f.flush()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_records(records: Iterable[Record], fmt: str, out: IO[Any] | Path | str) -> int:
    """Stream records to a file or stream; returns how many were written."""
    with RecordWriter(out, fmt) as writer:
        writer.write(records)
    return writer.count


def arrow_schema() -> Any:
    import pyarrow as pa

    top = pa.list_(pa.struct([("label", pa.string()), ("score", pa.float64())]))
    types = {"score": pa.float64(), "top_k": top}
    return pa.schema([(name, types.get(name, pa.string())) for name in FIELDS])


def read_records(path: Path | str) -> list[Record]:
    """Read an export back (tests, tools): any of the three formats."""
    return list(iter_file_records(path))


def iter_file_records(path: Path | str, fmt: str | None = None) -> Iterator[Record]:
    """The records of an export file, streamed (a Parquet file a row group at a time)."""
    fmt = format_for(path, fmt)
    if fmt == "jsonl":
        with Path(path).open(encoding="utf-8") as f:
            yield from (Record.from_json(line) for line in f if line.strip())
        return
    if fmt == "csv":
        with Path(path).open(encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                clean = {k: (v if v != "" else None) for k, v in row.items()}
                clean["score"] = float(clean["score"]) if clean["score"] is not None else None
                yield Record.from_dict(clean)
        return
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path).iter_batches():
        yield from (Record.from_dict(row) for row in batch.to_pylist())


def chunks(records: Iterable[Record], size: int) -> Iterator[list[Record]]:
    """Records in lists of ``size`` (the last may be shorter)."""
    group: list[Record] = []
    for rec in records:
        group.append(rec)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group
