"""storage.py: the local store's root, listing, manifests, sources and the retry helper."""

from __future__ import annotations

import os
import re
import types
from pathlib import Path

import pytest

from labelq.config import Settings
from labelq.errors import LabelqError, NotFound, StorageError, UsageError
from labelq.objects import (
    LocalStore,
    ObjectRef,
    Stores,
    Transient,
    file_uri,
    local_etag,
    path_of,
    s3_uri,
    split_s3,
    with_backoff,
)
from labelq.sources import iter_source, parse_source

SUFFIXES = tuple(Settings().suffixes)


def kind_of(store: LocalStore, uri: str) -> str:
    with pytest.raises(LabelqError) as caught:
        store.fetch(ObjectRef(uri))
    assert str(caught.value).strip()
    return caught.value.kind


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/ with images, a non-image, a nested folder, and a secret beside the root."""
    root = tmp_path / "root"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "b.jpg").write_bytes(b"b" * 10)
    (root / "a.PNG").write_bytes(b"a" * 20)
    (root / "notes.txt").write_text("not an image")
    (root / "c.webp").write_bytes(b"c")
    (root / "sub" / "d.jpeg").write_bytes(b"d")
    (root / "sub" / "deeper" / "e.tif").write_bytes(b"e")
    (tmp_path / "secret.jpg").write_bytes(b"secret")
    return root


# ---------------------------------------------------------------- LocalStore.fetch


def test_fetch_reads_files_under_the_root(tree: Path) -> None:
    store = LocalStore(tree, max_bytes=1000)
    assert store.fetch(ObjectRef(file_uri(tree / "b.jpg"))) == b"b" * 10
    assert store.fetch(ObjectRef(file_uri(tree / "sub" / "d.jpeg"))) == b"d"


def test_dot_dot_is_refused_even_when_it_lands_inside(tree: Path) -> None:
    store = LocalStore(tree, max_bytes=1000)
    assert kind_of(store, "file://" + str(tree) + "/../secret.jpg") == "access_denied"
    assert kind_of(store, "file://" + str(tree) + "/sub/../b.jpg") == "access_denied"


def test_absolute_paths_outside_the_root_are_refused(tree: Path) -> None:
    store = LocalStore(tree, max_bytes=1000)
    assert kind_of(store, file_uri(tree.parent / "secret.jpg")) == "access_denied"
    assert kind_of(store, "file:///etc/passwd") == "access_denied"
    # A sibling whose name merely starts with the root's name is outside too.
    sibling = tree.parent / (tree.name + "2")
    sibling.mkdir()
    (sibling / "x.jpg").write_bytes(b"x")
    assert kind_of(store, file_uri(sibling / "x.jpg")) == "access_denied"


def test_symlinks_escaping_the_root_are_refused(tree: Path) -> None:
    (tree / "link.jpg").symlink_to(tree.parent / "secret.jpg")
    (tree / "linkdir").symlink_to(tree.parent, target_is_directory=True)
    (tree / "inside.jpg").symlink_to(tree / "b.jpg")
    store = LocalStore(tree, max_bytes=1000)
    assert kind_of(store, file_uri(tree / "link.jpg")) == "access_denied"
    assert kind_of(store, file_uri(tree / "linkdir" / "secret.jpg")) == "access_denied"
    assert store.fetch(ObjectRef(file_uri(tree / "inside.jpg"))) == b"b" * 10  # a link within the root is fine


def test_no_root_refuses_every_local_file(tree: Path) -> None:
    store = LocalStore(None, max_bytes=1000)
    with pytest.raises(LabelqError, match="LABELQ_LOCAL_ROOT") as caught:
        store.fetch(ObjectRef(file_uri(tree / "b.jpg")))
    assert caught.value.kind == "access_denied"


def test_missing_file_and_directory_are_not_found(tree: Path) -> None:
    store = LocalStore(tree, max_bytes=1_000_000)
    assert kind_of(store, file_uri(tree / "gone.jpg")) == "not_found"
    assert kind_of(store, file_uri(tree / "sub")) == "not_found"


def test_a_directory_is_not_found_whatever_max_bytes_is(tree: Path) -> None:
    # A directory's st_size (4096 on ext4) is checked against max_bytes before anything notices it is not a file.
    assert kind_of(LocalStore(tree, max_bytes=100), file_uri(tree / "sub")) == "not_found"


def test_max_bytes_gives_too_large(tree: Path) -> None:
    assert LocalStore(tree, max_bytes=10).fetch(ObjectRef(file_uri(tree / "b.jpg"))) == b"b" * 10
    store = LocalStore(tree, max_bytes=9)
    with pytest.raises(LabelqError, match="LABELQ_MAX_BYTES") as caught:
        store.fetch(ObjectRef(file_uri(tree / "b.jpg")))
    assert caught.value.kind == "too_large"


def test_stores_route_by_scheme(tree: Path) -> None:
    stores = Stores(Settings(), local_root=tree)
    assert stores.fetch(ObjectRef(file_uri(tree / "c.webp"))) == b"c"
    with pytest.raises(LabelqError) as caught:
        stores.fetch(ObjectRef("ftp://files.invalid/x.jpg"))  # no store serves ftp://: refused, no traffic
    assert caught.value.kind == "access_denied"


# ---------------------------------------------------------------- listing


def test_listing_is_lazy_sorted_and_keeps_the_suffixes(tree: Path) -> None:
    store = LocalStore(tree, max_bytes=1000)
    listing = (r for r, _ in store.list(file_uri(tree), SUFFIXES))
    assert isinstance(listing, types.GeneratorType)
    first = next(listing)
    assert first.uri == file_uri(tree / "a.PNG")  # upper-case suffix kept; files before subfolders, by name
    rest = list(listing)
    uris = [first.uri, *(r.uri for r in rest)]
    assert uris == [
        file_uri(tree / "a.PNG"),
        file_uri(tree / "b.jpg"),
        file_uri(tree / "c.webp"),
        file_uri(tree / "sub" / "d.jpeg"),
        file_uri(tree / "sub" / "deeper" / "e.tif"),
    ]
    by_uri = {r.uri: r for r in [first, *rest]}
    b = by_uri[file_uri(tree / "b.jpg")]
    assert b.size == 10
    assert b.etag == local_etag((tree / "b.jpg").stat())


def test_listing_keeps_only_configured_suffixes(tree: Path) -> None:
    store = LocalStore(tree, max_bytes=1000)
    names = [path_of(r.uri).name for r, _ in store.list(file_uri(tree), (".webp", ".tif"))]
    assert names == ["c.webp", "e.tif"]
    settings = Settings(suffixes="txt")
    assert settings.suffixes == [".txt"]
    assert [path_of(r.uri).name for r, _ in store.list(file_uri(tree), tuple(settings.suffixes))] == ["notes.txt"]


def test_listing_does_not_read_ahead(tree: Path) -> None:
    """Lazy: files created after the first item is taken, in a folder not yet visited, are still listed."""
    listing = (r for r, _ in LocalStore(tree, max_bytes=1000).list(file_uri(tree), SUFFIXES))
    next(listing)
    (tree / "sub" / "deeper" / "late.jpg").write_bytes(b"late")
    assert file_uri(tree / "sub" / "deeper" / "late.jpg") in [r.uri for r in listing]


def test_etag_changes_when_a_file_changes(tree: Path) -> None:
    path = tree / "b.jpg"
    before = local_etag(path.stat())
    path.write_bytes(b"changed!!!")  # same size
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))
    assert local_etag(path.stat()) != before


def test_uris_round_trip_odd_names(tmp_path: Path) -> None:
    path = tmp_path / "a b#c?d%e é.jpg"
    path.write_bytes(b"x")
    uri = file_uri(path)
    assert uri.startswith("file:///") and " " not in uri and "#" not in uri
    assert path_of(uri) == path
    assert LocalStore(tmp_path, max_bytes=10).fetch(ObjectRef(uri)) == b"x"
    assert split_s3(s3_uri("bucket", "dir/a b#c?d%e é.jpg")) == ("bucket", "dir/a b#c?d%e é.jpg")


def test_object_ref_json_round_trip() -> None:
    ref = ObjectRef("s3://b/k.jpg", 12, "abc")
    assert ObjectRef.from_json(ref.to_json()) == ref
    assert ObjectRef.from_json(ref.asdict()) == ref


# ---------------------------------------------------------------- manifests and sources


def test_manifest_lines(tree: Path) -> None:
    manifest = tree / "list.txt"
    manifest.write_text(
        "# a comment\n"
        "\n"
        "b.jpg\n"
        "  sub/d.jpeg  \n"
        f"{tree / 'c.webp'}\n"
        "s3://bucket/key one.jpg\n"
        f"{file_uri(tree / 'a.PNG')}\n"
        "notes.txt\n"  # a manifest names objects explicitly: no suffix filter
    )
    source = parse_source(str(manifest))
    assert source.kind == "manifest"
    assert source.root == tree
    refs = list(iter_source(source, Stores(Settings(), local_root=source.root)))
    assert [r.uri for r in refs] == [
        file_uri(tree / "b.jpg"),
        file_uri(tree / "sub" / "d.jpeg"),
        file_uri(tree / "c.webp"),
        "s3://bucket/key one.jpg",
        file_uri(tree / "a.PNG"),
        file_uri(tree / "notes.txt"),
    ]


def test_manifest_with_an_unsupported_scheme_is_a_usage_error(tree: Path) -> None:
    manifest = tree / "list.txt"
    manifest.write_text("b.jpg\nftp://files.invalid/x.jpg\n")
    refs = iter_source(parse_source(str(manifest)), Stores(Settings(), local_root=tree))
    with pytest.raises(UsageError, match=re.escape("ftp://files.invalid/x.jpg")):
        list(refs)


def test_parse_source_kinds(tree: Path) -> None:
    assert parse_source(str(tree)).kind == "folder"
    assert parse_source(str(tree)).root == tree.resolve()
    assert parse_source(file_uri(tree)).kind == "folder"
    assert parse_source("s3://bucket/prefix/").kind == "bucket"
    assert parse_source("s3://bucket").kind == "bucket"


def test_folder_source_lists_recursively(tree: Path) -> None:
    refs = list(iter_source(parse_source(str(tree)), Stores(Settings(), local_root=tree)))
    assert len(refs) == 5


@pytest.mark.parametrize("text", ["/no/such/folder", "relative/missing", "file:///no/such/folder"])
def test_missing_source_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError, match="source not found"):
        parse_source(text)


def test_unsupported_scheme_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unsupported source"):
        parse_source("http://example.com/images/")


def test_s3_without_a_bucket_is_a_usage_error() -> None:
    # `labelq run s3://` must print one line, not a traceback: parse_source must not leak ValueError.
    with pytest.raises(UsageError):
        parse_source("s3://")


# ---------------------------------------------------------------- retries


class Flaky:
    """A real callable failing transiently ``failures`` times, then returning ``value``."""

    def __init__(self, failures: int, value: bytes = b"ok", error: type[Exception] = Transient) -> None:
        self.failures = failures
        self.value = value
        self.error = error
        self.calls = 0

    def __call__(self) -> bytes:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error(f"failure {self.calls}")
        return self.value


def test_backoff_retries_transient_errors_then_succeeds() -> None:
    call = Flaky(3)
    assert with_backoff(call, 5, what="x", base=0.001) == b"ok"
    assert call.calls == 4


def test_backoff_gives_up_after_attempts_with_a_storage_error() -> None:
    call = Flaky(100)
    with pytest.raises(StorageError, match="gave up after 4 attempts") as caught:
        with_backoff(call, 4, what="x", base=0.001)
    assert call.calls == 4
    assert caught.value.kind == "storage_error"
    assert type(caught.value) is StorageError  # the plain kind, not the internal transient type


def test_backoff_does_not_retry_permanent_errors() -> None:
    call = Flaky(1, error=NotFound)
    with pytest.raises(NotFound):
        with_backoff(call, 5, what="x", base=0.001)
    assert call.calls == 1


def test_backoff_with_one_attempt_tries_once() -> None:
    call = Flaky(1)
    with pytest.raises(StorageError):
        with_backoff(call, 1, what="x", base=0.001)
    assert call.calls == 1
