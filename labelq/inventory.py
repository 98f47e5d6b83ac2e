"""S3 Inventory reports as a source: a billion-key bucket labelled without listing it.

SOURCE is a report's ``manifest.json``, on S3 (``s3://dest/inv/src/config/2026-12-01T01-00Z/manifest.json``)
or a local copy of the report. AWS writes it as::

    {"sourceBucket": "src", "destinationBucket": "arn:aws:s3:::dest", "fileFormat": "CSV",
     "fileSchema": "Bucket, Key, Size, LastModifiedDate, ETag, StorageClass",
     "files": [{"key": "inv/src/config/data/1b7d....csv.gz", "size": 2147, "MD5checksum": "..."}]}

CSV parts are gzipped, headerless, with the columns ``fileSchema`` names and URL-encoded keys; Parquet
parts (``"fileFormat": "Parquet"``, ``fileSchema`` a Parquet message type) name their own columns
(``bucket, key, size, e_tag, ...``). ``files`` keys are in the destination bucket; next to a local
manifest they are looked for under the folders above it (a synced copy of the destination) and then
beside it. Rows become refs carrying size and etag, as listed objects do, so objects already labelled
settle on a rerun. Delete markers, non-current versions, folder markers and names without a kept
suffix are skipped. Cursor: ``PART:ROW``, the 0-based index into ``files`` and the 0-based row of that
part; ``after`` resumes at the next row.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import logging
import re
import shutil
import tempfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote_plus

from .errors import SourceError, UsageError
from .objects import ObjectRef, Stores, kept, s3_error, s3_uri, split_s3

logger = logging.getLogger(__name__)

FORMATS = ("csv", "parquet")
FIELDS = ("bucket", "key", "size", "etag", "islatest", "isdeletemarker")  # normalised column names used
BATCH_ROWS = 8192  # Parquet rows decoded at a time
_PARQUET_FIELD = re.compile(r"\b(?:required|optional|repeated)\s+\w+\s+(\w+)")


@dataclass(frozen=True)
class Report:
    """A parsed inventory manifest: where its parts are and how to read them."""

    location: str  # the manifest's s3:// URI or local path
    file_format: str  # one of FORMATS
    columns: tuple[str, ...]  # fileSchema's column names, normalised (see norm)
    source_bucket: str | None
    parts: tuple[str, ...]  # s3:// URIs or local paths of the data files, in manifest order


def norm(name: str) -> str:
    """``ETag``, ``e_tag`` → ``etag``: CSV schemas and Parquet columns name the same fields differently."""
    return name.strip().lower().replace("_", "")


def iter_inventory(location: str, stores: Stores, suffixes: tuple[str, ...], *,
                   after: str | None = None) -> Iterator[tuple[ObjectRef, str]]:
    """The objects an inventory report lists, as (ref, ``PART:ROW``), after the cursor ``after``."""
    report = load_report(location, stores)
    first_part, first_row = parse_cursor(after)
    for index, part in enumerate(report.parts):
        if index < first_part:
            continue
        start = first_row if index == first_part else 0
        rows = _parquet_rows(report, part, stores, start) if report.file_format == "parquet" else _csv_rows(
            report, part, stores, start)
        for row_no, fields in rows:
            ref = _ref(report, fields, suffixes)
            if ref is not None:
                yield ref, f"{index}:{row_no}"


def parse_cursor(after: str | None) -> tuple[int, int]:
    """``"PART:ROW"`` → (part, first row to read); None → (0, 0)."""
    if after is None:
        return 0, 0
    part, sep, row = after.partition(":")
    if not (sep and part.isdigit() and row.isdigit()):
        raise UsageError(f"bad inventory cursor {after!r}: expected PART:ROW")
    return int(part), int(row) + 1


def load_report(location: str, stores: Stores) -> Report:
    """Read and check a manifest.json; anything malformed is one UsageError line."""
    raw = _read_manifest(location, stores)
    try:
        doc = json.loads(raw.decode("utf-8-sig"))  # a BOM is not JSON, but editors write one
    except (ValueError, UnicodeDecodeError) as exc:
        raise SourceError(f"{location}: not an S3 Inventory manifest: bad JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise SourceError(f"{location}: not an S3 Inventory manifest: expected a JSON object")
    files = doc.get("files")
    if not isinstance(files, list) or not all(isinstance(f, dict) and isinstance(f.get("key"), str) for f in files):
        raise SourceError(f"{location}: not an S3 Inventory manifest: no \"files\" list of {{\"key\": ...}}")
    fmt = str(doc.get("fileFormat", "")).lower()
    if fmt == "orc":
        raise SourceError(f"{location}: ORC inventory parts are not supported: configure the report as CSV or Parquet")
    if fmt not in FORMATS:
        raise SourceError(f"{location}: fileFormat must be CSV or Parquet, not {doc.get('fileFormat')!r}")
    schema = doc.get("fileSchema")
    if not isinstance(schema, str) or not schema.strip():
        raise SourceError(f"{location}: not an S3 Inventory manifest: no \"fileSchema\"")
    columns = tuple(norm(c) for c in (_PARQUET_FIELD.findall(schema) if fmt == "parquet" else schema.split(",")))
    if "key" not in columns:
        raise SourceError(f"{location}: the inventory schema has no Key column: {schema!r}")
    source_bucket = doc.get("sourceBucket")
    if "bucket" not in columns and not isinstance(source_bucket, str):
        raise SourceError(f"{location}: the inventory names no sourceBucket and has no Bucket column")
    keys = [f["key"] for f in files]
    if location.startswith("s3://"):
        dest = str(doc.get("destinationBucket") or "").rsplit(":", 1)[-1] or split_s3(location)[0]
        parts = tuple(s3_uri(dest, key) for key in keys)
    else:
        parts = tuple(str(_local_part(Path(location), key)) for key in keys)
    return Report(location, fmt, columns, source_bucket if isinstance(source_bucket, str) else None, parts)


# ----------------------------------------------------------------------------- reading parts


def _read_manifest(location: str, stores: Stores) -> bytes:
    if location.startswith("s3://"):
        bucket, key = split_s3(location)
        return _s3_bytes(stores, bucket, key, what="inventory manifest")
    try:
        return Path(location).read_bytes()
    except OSError as exc:
        raise SourceError(f"cannot read the inventory manifest {location}: {exc.strerror or exc}") from None


def _s3_bytes(stores: Stores, bucket: str, key: str, *, what: str) -> bytes:
    body = _s3_open(stores, bucket, key, what=what)
    try:
        return bytes(body.read())
    finally:
        body.close()


def _s3_open(stores: Stores, bucket: str, key: str, *, what: str) -> Any:
    from botocore.exceptions import BotoCoreError, ClientError

    uri = f"s3://{bucket}/{key}"
    try:
        return stores.s3.client.get_object(Bucket=bucket, Key=key)["Body"]
    except ClientError as exc:
        err = s3_error(exc, uri)
        missing = "missing" if getattr(err, "kind", "") == "not_found" else "unreadable"
        raise SourceError(f"{what} {missing}: {uri} ({err})") from None
    except BotoCoreError as exc:
        raise UsageError(f"cannot reach S3 to read the {what} {uri}: {exc}") from None


def _local_part(manifest: Path, key: str) -> Path:
    """A part's file next to a local manifest: under a folder above it (a copy of the destination
    bucket), else beside it or in a sibling ``data/`` folder."""
    name = Path(key).name
    candidates = [folder / key for folder in manifest.parents]
    candidates += [manifest.parent / name, manifest.parent.parent / "data" / name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise SourceError(f"{manifest}: inventory part missing: {key} (looked in the folders above the manifest and beside it)")


def _open_part(part: str, stores: Stores) -> IO[bytes]:
    if part.startswith("s3://"):
        bucket, key = split_s3(part)
        body: IO[bytes] = _s3_open(stores, bucket, key, what="inventory part")
        return body
    try:
        return open(part, "rb")  # closed by the caller
    except OSError as exc:
        raise SourceError(f"inventory part unreadable: {part} ({exc.strerror or exc})") from None


def _csv_rows(report: Report, part: str, stores: Stores, start: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, {field: value}) of a CSV part from row ``start``, streamed (gunzipped when .gz)."""
    wanted = [(i, c) for i, c in enumerate(report.columns) if c in FIELDS]
    raw = _open_part(part, stores)
    try:
        stream: Any = gzip.GzipFile(fileobj=raw) if part.endswith(".gz") else raw
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", newline="")
        for row_no, row in enumerate(csv.reader(text)):
            if row_no < start:
                continue
            if len(row) < len(report.columns):
                raise SourceError(f"{part}: row {row_no} has {len(row)} fields; the inventory schema names "
                                 f"{len(report.columns)}")
            fields = {c: row[i] for i, c in wanted}
            fields["key"] = unquote_plus(fields["key"])  # CSV inventories URL-encode keys
            yield row_no, fields
    except (OSError, EOFError, zlib.error, csv.Error, UnicodeDecodeError) as exc:  # zlib.error: a corrupt deflate stream
        raise SourceError(f"cannot read the inventory part {part}: {type(exc).__name__}: {exc}") from None
    finally:
        raw.close()


def _parquet_rows(report: Report, part: str, stores: Stores, start: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number, {field: value}) of a Parquet part from row ``start``, a batch at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    spooled = tempfile.TemporaryFile(prefix="labelq-inventory-") if part.startswith("s3://") else None
    with contextlib.nullcontext(spooled) if spooled is None else spooled as spool:
        if spool is not None:  # Parquet needs a seekable file: spool the part to disk
            body = _open_part(part, stores)
            try:
                shutil.copyfileobj(body, spool, 1 << 20)
            finally:
                body.close()
            spool.seek(0)
        try:
            pf = pq.ParquetFile(spool if spool is not None else part)
        except (OSError, pa.ArrowException) as exc:
            raise SourceError(f"cannot read the inventory part {part}: {exc}") from None
        names = {norm(n): n for n in pf.schema_arrow.names if norm(n) in FIELDS}
        if "key" not in names:
            raise SourceError(f"{part}: the Parquet part has no key column (columns: {', '.join(pf.schema_arrow.names)})")
        key_type = pf.schema_arrow.field(names["key"]).type
        if not (pa.types.is_string(key_type) or pa.types.is_large_string(key_type)):
            raise SourceError(f"{part}: the Parquet key column {names['key']!r} holds {key_type}, not strings: "
                              "not an S3 Inventory part")
        row_no, groups = 0, list[int]()
        for g in range(pf.num_row_groups):  # skip whole row groups before the cursor
            rows = pf.metadata.row_group(g).num_rows
            if row_no + rows <= start and not groups:
                row_no += rows
            else:
                groups.append(g)
        if not groups:
            return
        try:
            for batch in pf.iter_batches(batch_size=BATCH_ROWS, row_groups=groups, columns=list(names.values())):
                values = {field: batch.column(name).to_pylist() for field, name in names.items()}
                for i in range(batch.num_rows):
                    if row_no >= start:
                        yield row_no, {field: column[i] for field, column in values.items()}
                    row_no += 1
        except (OSError, pa.ArrowException) as exc:
            raise SourceError(f"cannot read the inventory part {part}: {exc}") from None


def _ref(report: Report, fields: dict[str, Any], suffixes: tuple[str, ...]) -> ObjectRef | None:
    """The ref a row names, or None for a delete marker, an old version, a folder or a skipped suffix."""
    key = fields["key"]
    if not key or key.endswith("/") or not kept(key, suffixes):
        return None
    if _true(fields.get("isdeletemarker")) or fields.get("islatest") in (False, "false", "FALSE", "False"):
        return None
    bucket = fields.get("bucket") or report.source_bucket
    size = fields.get("size")
    etag = fields.get("etag")
    return ObjectRef(s3_uri(str(bucket), str(key)), _size(size), str(etag).strip('"') or None if etag else None)


def _size(value: Any) -> int | None:
    """A row's size in bytes; None when empty or unreadable (the fetch then checks the object's own length)."""
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


def _true(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")
