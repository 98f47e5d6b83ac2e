"""Google Cloud Storage and Azure Blob behind the object-store seam, against their real emulators.

The same checks run on both stores (and on S3 where the seam promises the same): fetch and its error
kinds, listing in key order with resume after any cursor and a fan-out equal to one stream, head,
the one tag-merge rule, copy and move into quarantine, and a source ``gs://``/``az://`` listed through
:class:`labelq.objects.Stores`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from labelq.config import Settings
from labelq.errors import LabelqError, UsageError
from labelq.objects import ObjectRef, Stores, merge_tags
from labelq.sources import iter_listing, parse_source

SUFFIXES = (".jpg", ".png")
KEYS = ["p/a.jpg", "p/b/c.jpg", "p/b/d.png", "p/b/deep/e.jpg", "p/c.txt", "p/d.jpg", "p/ü.jpg", "q/x.jpg",
        "p/empty.jpg"]


@dataclass
class Cloud:
    scheme: str
    bucket: str
    put: Any
    stores: Stores

    def uri(self, key: str) -> str:
        from urllib.parse import quote

        return f"{self.scheme}://{self.bucket}/{quote(key)}"

    @property
    def store(self) -> Any:
        return self.stores.store(self.uri("x"))


def _bytes(key: str) -> bytes:
    return b"" if "empty" in key else key.encode() * 3


@pytest.fixture(params=["gs", "az"])
def cloud(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cloud]:
    bucket = f"labelq-{uuid.uuid4().hex[:10]}"
    settings = Settings(max_bytes=100, s3_max_attempts=2)
    if request.param == "gs":
        server = request.getfixturevalue("gcs_server")
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.host)
        b = server.client().create_bucket(bucket)

        def put(key: str, data: bytes) -> None:
            b.blob(key).upload_from_string(data)
    else:
        server = request.getfixturevalue("azurite")
        monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", server.connection_string)
        container = server.client().create_container(bucket)

        def put(key: str, data: bytes) -> None:
            container.upload_blob(key, data, overwrite=True)
    for key in KEYS:
        put(key, _bytes(key))
    yield Cloud(request.param, bucket, put, Stores(settings))


def kind_of(stores: Stores, uri: str) -> str:
    with pytest.raises(LabelqError) as caught:
        stores.fetch(ObjectRef(uri))
    return caught.value.kind


def test_fetch_and_its_error_kinds(cloud: Cloud) -> None:
    assert cloud.stores.fetch(ObjectRef(cloud.uri("p/a.jpg"))) == _bytes("p/a.jpg")
    assert cloud.stores.fetch(ObjectRef(cloud.uri("p/ü.jpg"))) == _bytes("p/ü.jpg")
    assert cloud.stores.fetch(ObjectRef(cloud.uri("p/empty.jpg"))) == b""  # the engine says not_an_image
    assert kind_of(cloud.stores, cloud.uri("p/missing.jpg")) == "not_found"
    cloud.put("p/big.jpg", b"x" * 101)
    assert kind_of(cloud.stores, cloud.uri("p/big.jpg")) == "too_large"  # cut off at the limit, not read whole
    assert kind_of(cloud.stores, f"{cloud.scheme}://labelq-no-such-bucket-{uuid.uuid4().hex[:6]}/a.jpg") == "not_found"


def test_listing_in_key_order_resumes_after_every_cursor_and_fans_out(cloud: Cloud) -> None:
    store = cloud.store
    whole = list(store.list(cloud.uri("p/"), SUFFIXES))
    wanted = sorted(k for k in KEYS if k.startswith("p/") and k.endswith(SUFFIXES))
    assert [cursor for _, cursor in whole] == wanted
    assert [ref.uri for ref, _ in whole] == [cloud.uri(k) for k in wanted]
    assert all(ref.etag and ref.size == len(_bytes(key)) for ref, key in whole)
    for workers in (2, 8):
        assert list(store.list(cloud.uri("p/"), SUFFIXES, workers=workers)) == whole
    for i, (_, cursor) in enumerate(whole):
        assert list(store.list(cloud.uri("p/"), SUFFIXES, after=cursor)) == whole[i + 1 :], cursor
        assert list(store.list(cloud.uri("p/"), SUFFIXES, after=cursor, workers=3)) == whole[i + 1 :], cursor


def test_a_source_of_the_store_is_listed_through_the_scheme_table(cloud: Cloud) -> None:
    source = parse_source(f"{cloud.scheme}://{cloud.bucket}")
    assert source.kind == "bucket"
    refs = [ref.uri for ref, _ in iter_listing(source, cloud.stores)]
    assert refs == [cloud.uri(k) for k in sorted(k for k in KEYS if k.endswith(SUFFIXES))]
    with pytest.raises(UsageError, match="cannot list"):
        list(iter_listing(parse_source(f"{cloud.scheme}://labelq-absent-{uuid.uuid4().hex[:6]}/p/"), cloud.stores))


def test_head_and_tags_merged_by_the_one_rule_without_changing_the_etag(cloud: Cloud) -> None:
    store, uri = cloud.store, cloud.uri("p/a.jpg")
    before = store.head(uri)
    assert before.size == len(_bytes("p/a.jpg")) and before.etag
    store.put_tags(uri, {"team": "photos"})
    store.put_tags(uri, merge_tags(store.tags(uri), {"labelq-label": "nsfw", "labelq-score": "0.9100"}))
    assert store.tags(uri) == {"team": "photos", "labelq-label": "nsfw", "labelq-score": "0.9100"}
    store.put_tags(uri, merge_tags(store.tags(uri), {"labelq-review": "released"}, remove=("labelq-label",)))
    assert store.tags(uri) == {"team": "photos", "labelq-score": "0.9100", "labelq-review": "released"}
    # tags are not content: the etag a rerun compares stays, so tagging never causes a relabel
    assert store.head(uri).etag == before.etag


def test_copy_and_move_into_quarantine_and_back(cloud: Cloud) -> None:
    store, uri = cloud.store, cloud.uri("p/b/c.jpg")
    dest = store.quarantine_uri(uri, "quarantine/")
    assert dest == cloud.uri("quarantine/p/b/c.jpg") and store.in_quarantine(dest, "quarantine/")
    assert not store.in_quarantine(uri, "quarantine/")
    store.copy(uri, dest)
    assert cloud.stores.fetch(ObjectRef(dest)) == cloud.stores.fetch(ObjectRef(uri))
    other = store.quarantine_uri(cloud.uri("p/d.jpg"), "quarantine/")
    store.move(cloud.uri("p/d.jpg"), other)
    assert cloud.stores.fetch(ObjectRef(other)) == _bytes("p/d.jpg")
    assert kind_of(cloud.stores, cloud.uri("p/d.jpg")) == "not_found"
    store.restore(other, cloud.uri("p/d.jpg"))
    assert cloud.stores.fetch(ObjectRef(cloud.uri("p/d.jpg"))) == _bytes("p/d.jpg")
    assert kind_of(cloud.stores, other) == "not_found"


def test_no_account_is_a_worker_fault_not_a_record(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an account a worker cannot read az:// at all: the chunk goes back (WorkerFault), no records."""
    from labelq.errors import WorkerFault

    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    with pytest.raises(WorkerFault, match="LABELQ_AZURE_ACCOUNT_URL"):
        Stores(Settings()).fetch(ObjectRef("az://c/a.jpg"))
