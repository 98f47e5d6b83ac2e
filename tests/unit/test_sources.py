"""sources.py and inventory.py on local files: resumable cursors, single images, manifests, inventory reports."""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from labelq.config import Settings
from labelq.errors import UsageError
from labelq.objects import ObjectRef, Stores, file_uri, local_etag
from labelq.sources import Source, iter_listing, iter_source, parse_source

JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 32
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


def stores_for(source: Source, **settings: Any) -> Stores:
    return Stores(Settings(**settings), local_root=source.root)


def listing(source: Source, after: str | None = None) -> list[tuple[ObjectRef, str]]:
    return list(iter_listing(source, stores_for(source), after=after))


def assert_resumes_everywhere(source: Source) -> list[tuple[ObjectRef, str]]:
    """Resuming after each cursor lists exactly the rest: nothing lost, nothing repeated."""
    whole = listing(source)
    assert len(whole) >= 3
    assert len({cursor for _, cursor in whole}) == len(whole)  # every cursor names one object
    for i, (_, cursor) in enumerate(whole):
        assert listing(source, after=cursor) == whole[i + 1 :], f"after {cursor!r}"
    return whole


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A folder with files at the top, nested folders (one empty), names sorting around '/' and odd names."""
    root = tmp_path / "images"
    for rel in ["a.jpg", "b.jpg", "b/x.jpg", "b/y.png", "b/deep/z.jpg", "b0.jpg", "c/d/e.jpg", "c/f.jpg",
                "ü é.jpg", "notes.txt", "Z.JPG"]:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(JPEG)
    (root / "empty").mkdir()
    return root


# ---------------------------------------------------------------- folders


def test_folder_cursors_are_relative_paths_in_walk_order(tree: Path) -> None:
    source = parse_source(str(tree))
    whole = assert_resumes_everywhere(source)
    assert [cursor for _, cursor in whole] == [
        "Z.JPG", "a.jpg", "b.jpg", "b0.jpg", "ü é.jpg",  # a folder's files first, by name
        "b/x.jpg", "b/y.png", "b/deep/z.jpg", "c/f.jpg", "c/d/e.jpg",  # then each subfolder whole
    ]
    assert [r.uri for r, _ in whole] == [file_uri(tree / c) for _, c in whole]
    assert [r.uri for r in iter_source(source, stores_for(source))] == [r.uri for r, _ in whole]


def test_folder_cursor_of_a_deleted_file_resumes_at_the_next_name(tree: Path) -> None:
    source = parse_source(str(tree))
    (tree / "b" / "x.jpg").unlink()
    (tree / "c" / "d" / "e.jpg").unlink()
    assert [c for _, c in listing(source, after="b/x.jpg")] == ["b/y.png", "b/deep/z.jpg", "c/f.jpg"]
    assert [c for _, c in listing(source, after="c/d/e.jpg")] == []
    assert [c for _, c in listing(source, after="b/gone/sub/q.jpg")] == ["c/f.jpg"]


# ---------------------------------------------------------------- text manifests


def test_manifest_cursors_are_line_numbers(tree: Path) -> None:
    manifest = tree / "list.txt"
    manifest.write_text("# header\n\na.jpg\ns3://bkt/k one.jpg\t\"abc123\"\n  b/x.jpg  \nfile:///nowhere/x.jpg\n")
    source = parse_source(str(manifest))
    assert source.kind == "manifest"
    whole = assert_resumes_everywhere(source)
    assert [cursor for _, cursor in whole] == ["3", "4", "5", "6"]
    refs = [r for r, _ in whole]
    assert refs[0] == ObjectRef(file_uri(tree / "a.jpg"), len(JPEG), local_etag((tree / "a.jpg").stat()))
    assert refs[1] == ObjectRef("s3://bkt/k one.jpg", None, "abc123")  # an etag after a tab is kept
    assert refs[3] == ObjectRef("file:///nowhere/x.jpg")
    assert listing(source, after="2") == whole  # a cursor on a comment line


def test_manifest_s3_lines_carry_no_etag_without_a_tab(tmp_path: Path) -> None:
    manifest = tmp_path / "list.txt"
    manifest.write_text("s3://bkt/a.jpg\n")
    assert listing(parse_source(str(manifest))) == [(ObjectRef("s3://bkt/a.jpg"), "1")]


@pytest.mark.parametrize("cursor", ["x", "1:2", "-1"])
def test_bad_manifest_cursor_is_a_usage_error(tmp_path: Path, cursor: str) -> None:
    manifest = tmp_path / "list.txt"
    manifest.write_text("s3://bkt/a.jpg\n")
    with pytest.raises(UsageError, match="bad manifest cursor"):
        listing(parse_source(str(manifest)), after=cursor)


# ---------------------------------------------------------------- single files and non-text manifests


def test_a_single_image_file_is_a_source_of_one_object(tree: Path) -> None:
    path = tree / "b" / "x.jpg"
    source = parse_source(str(path))
    assert source == Source("object", str(path), path.parent)
    assert listing(source) == [(ObjectRef(file_uri(path), len(JPEG), local_etag(path.stat())), "1")]
    assert listing(source, after="1") == []
    assert parse_source(file_uri(path)).kind == "object"


def test_an_image_without_an_image_suffix_is_known_by_its_bytes(tmp_path: Path) -> None:
    for name, data in [("photo", JPEG), ("upload.bin", PNG), ("anim.dat", b"GIF89a" + b"\x00" * 10),
                       ("pic.x", b"RIFF\x10\x00\x00\x00WEBPVP8 " + b"\x00" * 8)]:
        (tmp_path / name).write_bytes(data)
        assert parse_source(str(tmp_path / name)).kind == "object", name


def test_an_image_suffix_wins_over_the_bytes(tmp_path: Path) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(b"not really a png\n")  # labelled later as not_an_image, not read as a manifest
    assert parse_source(str(path)).kind == "object"
    assert parse_source(str(path), suffixes=(".jpg",)).kind == "manifest"


def test_a_binary_file_is_not_a_manifest(tmp_path: Path) -> None:
    path = tmp_path / "archive.zip"
    path.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    with pytest.raises(UsageError, match="neither an image nor a manifest") as caught:
        parse_source(str(path))
    assert "\n" not in str(caught.value)


def test_a_manifest_turning_binary_later_is_one_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_bytes(b"".join(b"s3://bkt/%05d.jpg\n" % i for i in range(1000)) + b"\xff\xfe\xfa garbage\n")
    source = parse_source(str(path))  # the head is text
    with pytest.raises(UsageError, match="not UTF-8 text"):
        listing(source)


def test_a_text_manifest_whose_first_line_starts_like_bmp_is_still_a_manifest(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_text("BMW/photo.jpg\n")
    assert parse_source(str(path)).kind == "manifest"


# ---------------------------------------------------------------- inventory reports (local copies)

CSV_SCHEMA = "Bucket, Key, Size, LastModifiedDate, ETag, StorageClass, IsLatest, IsDeleteMarker"
ROWS = [  # (key, size, etag, is_latest, is_delete_marker)
    ("photos/a.jpg", 10, "e-a", True, False),
    ("photos/b c+d.jpg", 11, "e-b", True, False),
    ("photos/old.jpg", 12, "e-old", False, False),  # a non-current version
    ("photos/gone.jpg", None, None, True, True),  # a delete marker
    ("photos/readme.txt", 5, "e-t", True, False),  # suffix not kept
    ("photos/", 0, "e-dir", True, False),  # a folder marker
    ("photos/ü/e.png", 13, "e-e", True, False),
    ("photos/f.jpg", 14, "e-f", True, False),
    ("photos/g.jpg", 15, "e-g", True, False),
]
PARTS = [ROWS[:4], ROWS[4:7], [], ROWS[7:]]  # an empty part too
KEPT = [r for r in ROWS if r[0] in ("photos/a.jpg", "photos/b c+d.jpg", "photos/ü/e.png", "photos/f.jpg", "photos/g.jpg")]


def csv_part(rows: list[tuple[Any, ...]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_ALL, lineterminator="\n")
    for key, size, etag, latest, deleted in rows:
        from urllib.parse import quote_plus

        writer.writerow(["src-bucket", quote_plus(key, safe="/"), "" if size is None else size,
                         "2026-12-01T00:00:00.000Z", etag or "", "STANDARD", str(latest).lower(), str(deleted).lower()])
    return gzip.compress(out.getvalue().encode())


def parquet_part(rows: list[tuple[Any, ...]]) -> bytes:
    table = pa.table({
        "bucket": pa.array(["src-bucket"] * len(rows), pa.string()),
        "key": pa.array([r[0] for r in rows], pa.string()),
        "size": pa.array([r[1] for r in rows], pa.int64()),
        "e_tag": pa.array([r[2] for r in rows], pa.string()),
        "is_latest": pa.array([r[3] for r in rows], pa.bool_()),
        "is_delete_marker": pa.array([r[4] for r in rows], pa.bool_()),
    })
    out = io.BytesIO()
    pq.write_table(table, out, row_group_size=2)  # several row groups: resume skips whole ones
    return out.getvalue()


PARQUET_SCHEMA = ("message s3.inventory { required binary bucket (STRING); required binary key (STRING); "
                  "optional int64 size; optional binary e_tag (STRING); optional boolean is_latest; "
                  "optional boolean is_delete_marker; }")


def write_report(root: Path, fmt: str, *, parts: list[list[tuple[Any, ...]]] = PARTS, **overrides: Any) -> Path:
    """An inventory report laid out as AWS writes it into the destination bucket, synced to ``root``."""
    base = "inv/src-bucket/daily"
    suffix, encode = (".csv.gz", csv_part) if fmt == "CSV" else (".parquet", parquet_part)
    files = []
    for n, rows in enumerate(parts):
        key = f"{base}/data/part-{n}{suffix}"
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(encode(rows))
        files.append({"key": key, "size": (root / key).stat().st_size, "MD5checksum": "0" * 32})
    doc = {"sourceBucket": "src-bucket", "destinationBucket": "arn:aws:s3:::dest-bucket", "version": "2016-11-30",
           "creationTimestamp": "1764547200000", "fileFormat": fmt,
           "fileSchema": CSV_SCHEMA if fmt == "CSV" else PARQUET_SCHEMA, "files": files, **overrides}
    manifest = root / base / "2026-12-01T01-00Z" / "manifest.json"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps({k: v for k, v in doc.items() if v is not None}))
    return manifest


@pytest.mark.parametrize("fmt", ["CSV", "Parquet"])
def test_inventory_rows_become_refs_with_sizes_and_etags(tmp_path: Path, fmt: str) -> None:
    manifest = write_report(tmp_path, fmt)
    source = parse_source(str(manifest))
    assert source.kind == "inventory"
    whole = assert_resumes_everywhere(source)
    assert [r for r, _ in whole] == [ObjectRef(f"s3://src-bucket/{_q(k)}", s, e) for k, s, e, _, _ in KEPT]
    assert [c for _, c in whole] == ["0:0", "0:1", "1:2", "3:0", "3:1"]
    assert listing(source, after="0:3") == whole[2:]  # a cursor on a skipped row
    assert listing(source, after="2:0") == whole[3:]  # ... on a row past an empty part's end


def _q(key: str) -> str:
    from labelq.objects import s3_uri

    return s3_uri("b", key).removeprefix("s3://b/")


def test_inventory_keeps_the_configured_suffixes(tmp_path: Path) -> None:
    source = parse_source(str(write_report(tmp_path, "CSV")))
    refs = list(iter_source(source, Stores(Settings(suffixes="png,txt"))))
    assert [r.uri for r in refs] == ["s3://src-bucket/photos/readme.txt", f"s3://src-bucket/{_q('photos/ü/e.png')}"]


def test_inventory_part_beside_the_manifest_is_found(tmp_path: Path) -> None:
    manifest = write_report(tmp_path / "dest", "CSV")
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "manifest.json").write_bytes(manifest.read_bytes())
    for part in (tmp_path / "dest").rglob("part-*"):
        (flat / part.name).write_bytes(part.read_bytes())
    assert len(listing(parse_source(str(flat / "manifest.json")))) == len(KEPT)


@pytest.mark.parametrize(("change", "message"), [
    ("bad-json", "bad JSON"),
    ("no-files", 'no "files"'),
    ("no-schema", 'no "fileSchema"'),
    ("no-key", "no Key column"),
    ("orc", "ORC inventory parts are not supported"),
    ("format", "fileFormat must be CSV or Parquet"),
    ("part-missing", "inventory part missing"),
    ("not-gzip", "cannot read the inventory part"),
    ("short-row", "has 2 fields"),
])
def test_a_malformed_inventory_is_one_usage_error_line(tmp_path: Path, change: str, message: str) -> None:
    manifest = write_report(tmp_path, "CSV")
    doc = json.loads(manifest.read_text())
    part = tmp_path / doc["files"][1]["key"]
    if change == "bad-json":
        manifest.write_text(manifest.read_text()[:-5])
    elif change == "no-files":
        manifest.write_text(json.dumps({**doc, "files": None}))
    elif change == "no-schema":
        del doc["fileSchema"]
        manifest.write_text(json.dumps(doc))
    elif change == "no-key":
        manifest.write_text(json.dumps({**doc, "fileSchema": "Bucket, Size, ETag"}))
    elif change == "orc":
        manifest.write_text(json.dumps({**doc, "fileFormat": "ORC"}))
    elif change == "format":
        manifest.write_text(json.dumps({**doc, "fileFormat": "JSON"}))
    elif change == "part-missing":
        part.unlink()
    elif change == "not-gzip":
        part.write_bytes(b"plain text, not gzip\n")
    elif change == "short-row":
        part.write_bytes(gzip.compress(b'"src-bucket","photos/x.jpg"\n'))
    with pytest.raises(UsageError, match=re.escape(message)) as caught:
        listing(parse_source(str(manifest)))
    assert "\n" not in str(caught.value)


def test_a_parquet_part_without_a_key_column_is_a_usage_error(tmp_path: Path) -> None:
    manifest = write_report(tmp_path, "Parquet")
    part = next(tmp_path.rglob("part-0.parquet"))
    pq.write_table(pa.table({"bucket": ["src-bucket"], "size": [1]}), part)
    with pytest.raises(UsageError, match="has no key column"):
        listing(parse_source(str(manifest)))


@pytest.mark.parametrize("cursor", ["3", "a:b", "1:", ":2"])
def test_bad_inventory_cursor_is_a_usage_error(tmp_path: Path, cursor: str) -> None:
    with pytest.raises(UsageError, match="bad inventory cursor"):
        listing(parse_source(str(write_report(tmp_path, "CSV"))), after=cursor)


def test_s3_json_sources_are_inventories() -> None:
    assert parse_source("s3://dest/inv/src/daily/2026-12-01T01-00Z/manifest.json").kind == "inventory"
    assert parse_source("s3://bucket/photos/").kind == "bucket"


# ---------------------------------------------------------------- S3 fan-out ordering (an in-memory ListObjectsV2)


class PagedKeys:
    """ListObjectsV2 over sorted keys in memory, paged as S3 pages (``page`` items, keys and common prefixes)."""

    def __init__(self, keys: list[str], page: int) -> None:
        self.keys, self.page, self.calls = sorted(keys), page, 0

    def get_paginator(self, name: str) -> PagedKeys:
        return self

    def paginate(self, *, Bucket: str, Prefix: str = "", Delimiter: str | None = None,
                 StartAfter: str | None = None) -> Iterator[dict[str, Any]]:
        import bisect

        i = max(bisect.bisect_right(self.keys, StartAfter or ""), bisect.bisect_left(self.keys, Prefix))
        while True:  # (i carries over pages, as S3's continuation token does)
            self.calls += 1
            contents: list[dict[str, Any]] = []
            prefixes: list[dict[str, str]] = []
            while i < len(self.keys) and self.keys[i].startswith(Prefix) and len(contents) + len(prefixes) < self.page:
                rest = self.keys[i][len(Prefix):]
                if Delimiter and Delimiter in rest:
                    common = Prefix + rest.split(Delimiter, 1)[0] + Delimiter
                    prefixes.append({"Prefix": common})
                    i = bisect.bisect_left(self.keys, common + "\U0010ffff")
                else:
                    contents.append({"Key": self.keys[i], "Size": 1, "ETag": '"e"'})
                    i += 1
            truncated = i < len(self.keys) and self.keys[i].startswith(Prefix)
            yield {"Contents": contents, "CommonPrefixes": prefixes, "IsTruncated": truncated}
            if not truncated:
                return


@pytest.mark.parametrize("seed", range(24))
def test_fan_out_matches_one_stream_and_resumes_on_random_key_sets(seed: int) -> None:
    import random

    from labelq.objects.listing import fan_out, stream
    from labelq.objects.s3 import S3Pager

    rng = random.Random(seed)
    parts = ["a", "b", "b.x", "b-1", "b0", "ü", "", "c", "cc"]  # names sorting on both sides of "/"
    keys = {"/".join(rng.choice(parts) for _ in range(rng.randint(1, 4))) + rng.choice([".jpg", ".jpg", ".txt", "/"])
            for _ in range(rng.randint(20, 120))}
    client = S3Pager(PagedKeys(sorted(keys), page=rng.choice([2, 3, 7, 1000])))
    prefix = rng.choice(["", "", "b", "b/", "a/b/"])
    one = list(stream(client, "bkt", prefix, (".jpg",)))
    assert [k for _, k in one] == sorted(k for k in keys if k.startswith(prefix) and k.endswith(".jpg"))
    for workers in (2, 3, 16):
        assert list(fan_out(client, "bkt", prefix, (".jpg",), workers=workers)) == one, workers
    for i, (_, cursor) in enumerate(one):
        rest = one[i + 1 :]
        assert list(stream(client, "bkt", prefix, (".jpg",), after=cursor)) == rest
        assert list(fan_out(client, "bkt", prefix, (".jpg",), after=cursor, workers=3)) == rest, cursor


def test_many_tiny_prefixes_are_listed_in_a_few_ranges_not_a_call_each() -> None:
    from labelq.objects.listing import fan_out, stream
    from labelq.objects.s3 import S3Pager

    keys = [f"user{i:04d}/{n}.jpg" for i in range(600) for n in range(2)] + ["user0100.jpg", "user0300/"]
    keyed = PagedKeys(keys, page=1000)
    client = S3Pager(keyed)
    one = list(stream(client, "bkt", "", (".jpg",)))
    assert keyed.calls == 2  # 1 202 keys: two pages
    keyed.calls = 0
    assert list(fan_out(client, "bkt", "", (".jpg",), workers=4)) == one
    # one delimiter page, a span of one sub-prefix per worker until sizes are known, then spans of ~2 000 keys
    assert keyed.calls <= 1 + 2 * 4 + 2  # not 601 calls
    for i in range(0, len(one), 97):
        assert list(fan_out(client, "bkt", "", (".jpg",), after=one[i][1], workers=4)) == one[i + 1 :]


# ---------------------------------------------------------------- bad input: BOMs, corrupt parts (issue 19)


def test_a_manifest_starting_with_a_utf8_bom_keeps_its_first_entry(tree: Path) -> None:
    manifest = tree.parent / "bom.txt"
    manifest.write_bytes(b"\xef\xbb\xbf" + b"images/a.jpg\nimages/b.jpg\ns3://bkt/k.jpg\tetag\n")
    whole = listing(parse_source(str(manifest)))
    assert [r.uri for r, _ in whole] == [file_uri(tree / "a.jpg"), file_uri(tree / "b.jpg"), "s3://bkt/k.jpg"]
    assert [c for _, c in whole] == ["1", "2", "3"]


@pytest.mark.parametrize("fmt", ["CSV", "Parquet"])
def test_an_inventory_with_utf8_boms_lists_as_without(tmp_path: Path, fmt: str) -> None:
    manifest = write_report(tmp_path, fmt)
    plain = listing(parse_source(str(manifest)))
    manifest.write_bytes(b"\xef\xbb\xbf" + manifest.read_bytes())
    if fmt == "CSV":  # a part written by a tool that adds a BOM: the first row's bucket must not hold it
        part = next(tmp_path.rglob("part-0.csv.gz"))
        part.write_bytes(gzip.compress(b"\xef\xbb\xbf" + gzip.decompress(part.read_bytes())))
    assert listing(parse_source(str(manifest))) == plain


def _corrupt_deflate(data: bytes) -> bytes:
    """A gzip member whose header is intact and whose deflate stream is garbage in the middle."""
    middle = len(data) // 2
    return data[:10] + bytes(b ^ 0xFF for b in data[10:middle]) + data[middle:]


def test_a_csv_part_with_a_corrupt_deflate_stream_is_one_source_error_line(tmp_path: Path) -> None:
    from labelq.errors import SourceError

    manifest = write_report(tmp_path, "CSV", parts=[ROWS * 50])
    part = next(tmp_path.rglob("part-0.csv.gz"))
    part.write_bytes(_corrupt_deflate(part.read_bytes()))
    with pytest.raises(SourceError, match=r"cannot read the inventory part .*part-0\.csv\.gz") as caught:
        listing(parse_source(str(manifest)))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("key_type", [pa.int64(), pa.float64()])
def test_a_parquet_part_with_a_non_string_key_is_one_source_error_line(tmp_path: Path, key_type: Any) -> None:
    from labelq.errors import SourceError

    manifest = write_report(tmp_path, "Parquet")
    part = next(tmp_path.rglob("part-0.parquet"))
    pq.write_table(pa.table({"bucket": ["src-bucket"] * 2, "key": pa.array([1, 2], key_type), "size": [1, 2]}), part)
    with pytest.raises(SourceError, match=f"key column 'key' holds {key_type}, not strings") as caught:
        listing(parse_source(str(manifest)))
    assert "\n" not in str(caught.value)
