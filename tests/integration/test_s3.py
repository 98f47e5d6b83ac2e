"""S3 through moto's server over HTTP: listing, fetch, errors, and `labelq run s3://...`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from labelq.config import Settings
from labelq.errors import LabelqError, UsageError
from labelq.objects import ObjectRef, S3Store, Stores, s3_uri
from labelq.sources import iter_source, parse_source
from labelq.testing import CORPUS_MAX_PIXELS, Corpus
from tests.integration.conftest import AuthMoto, Credentials

SUFFIXES = tuple(Settings().suffixes)
LABELQ = Path(sys.executable).with_name("labelq")


def settings_for(server: Any, **overrides: Any) -> Settings:
    return Settings(s3_endpoint_url=server.endpoint_url, **overrides)


def put_many(client: Any, bucket: str, items: dict[str, bytes]) -> dict[str, str]:
    """Upload concurrently; returns {key: etag without quotes}."""

    def put(item: tuple[str, bytes]) -> tuple[str, str]:
        key, body = item
        return key, client.put_object(Bucket=bucket, Key=key, Body=body)["ETag"].strip('"')

    with ThreadPoolExecutor(8) as pool:
        return dict(pool.map(put, items.items()))


def kind_of(store: Any, ref: ObjectRef) -> str:
    with pytest.raises(LabelqError) as caught:
        store.fetch(ref)
    assert str(caught.value).strip()
    return caught.value.kind


# ---------------------------------------------------------------- listing


def test_listing_paginates_lazily_with_sizes_and_etags(s3_server: Any, s3_client: Any, s3_bucket: str) -> None:
    items = {f"many/img_{i:05d}.jpg": b"x" * (i % 7 + 1) for i in range(1_001)}
    items.update({"many/readme.txt": b"text", "many/folder/": b"", "other/outside.jpg": b"o"})
    etags = put_many(s3_client, s3_bucket, items)

    store = S3Store(settings_for(s3_server))  # its own client, made from settings
    pages: list[dict[str, Any]] = []
    # The client's own event hook sees each ListObjectsV2 call's parameters as it is made.
    store.client.meta.events.register("provide-client-params.s3.ListObjectsV2", lambda params, **_: pages.append(dict(params)))

    listing = (ref for ref, _ in store.list(f"s3://{s3_bucket}/many/", SUFFIXES))
    assert isinstance(listing, types.GeneratorType)
    assert pages == []  # nothing is asked before the first item is wanted
    first = next(listing)
    assert len(pages) == 1  # one page, not the whole listing
    refs = [first, *listing]
    assert len(pages) == 2  # 1 001 kept keys (+ 2 skipped): a second page, as S3 pages hold 1 000
    assert "ContinuationToken" in pages[1]

    wanted = sorted(k for k in items if k.startswith("many/") and k.endswith(".jpg"))
    assert [r.uri for r in refs] == [s3_uri(s3_bucket, k) for k in wanted]
    for ref, key in zip(refs, wanted, strict=True):
        assert ref.size == len(items[key])
        assert ref.etag == etags[key]


def test_source_s3_lists_through_stores(s3_server: Any, s3_client: Any, s3_bucket: str) -> None:
    put_many(s3_client, s3_bucket, {"p/a.jpg": b"a", "p/b.png": b"b", "pq/c.jpg": b"c", "p/d.txt": b"d"})
    stores = Stores(settings_for(s3_server))
    refs = list(iter_source(parse_source(f"s3://{s3_bucket}/p/"), stores))
    assert [r.uri for r in refs] == [f"s3://{s3_bucket}/p/a.jpg", f"s3://{s3_bucket}/p/b.png"]
    whole = list(iter_source(parse_source(f"s3://{s3_bucket}"), stores))
    assert len(whole) == 3


def test_listing_a_missing_bucket_is_a_usage_error(s3_server: Any) -> None:
    store = S3Store(settings_for(s3_server))
    with pytest.raises(UsageError, match="NoSuchBucket"):
        list(store.list("s3://labelq-no-such-bucket", SUFFIXES))


def test_unreachable_endpoint() -> None:
    settings = Settings(s3_endpoint_url="http://127.0.0.1:1", s3_max_attempts=2, s3_connect_timeout=1)
    store = S3Store(settings)
    with pytest.raises(UsageError, match="cannot reach S3"):
        list(store.list("s3://bucket/prefix/", SUFFIXES))
    assert kind_of(store, ObjectRef("s3://bucket/a.jpg")) == "storage_error"


# ---------------------------------------------------------------- fetch


CLIENTS = pytest.mark.parametrize("client", ["boto3", "obstore"])  # LABELQ_S3_CLIENT: GETs, same kinds


@CLIENTS
def test_fetch_and_errors(s3_server: Any, s3_client: Any, s3_bucket: str, client: str) -> None:
    put_many(s3_client, s3_bucket, {"a.jpg": b"abc" * 10, "gone.jpg": b"soon deleted"})
    stores = Stores(settings_for(s3_server, max_bytes=30, s3_client=client))
    listed = {r.uri: r for r in iter_source(parse_source(f"s3://{s3_bucket}"), stores)}
    a, gone = listed[f"s3://{s3_bucket}/a.jpg"], listed[f"s3://{s3_bucket}/gone.jpg"]
    assert stores.fetch(a) == b"abc" * 10

    s3_client.delete_object(Bucket=s3_bucket, Key="gone.jpg")  # deleted after listing
    assert kind_of(stores, gone) == "not_found"
    assert kind_of(stores, ObjectRef(f"s3://labelq-no-such-bucket/{'x'}.jpg")) == "not_found"

    small = Stores(settings_for(s3_server, max_bytes=29, s3_client=client))
    assert kind_of(small, a) == "too_large"  # from the listed size, before any GET
    assert kind_of(small, ObjectRef(a.uri)) == "too_large"  # size unknown: from the response


@CLIENTS
def test_odd_keys_round_trip(s3_server: Any, s3_client: Any, s3_bucket: str, client: str) -> None:
    keys = ["dir/a b.jpg", "dir/ünï cödé.jpg", "dir/100%.jpg", "dir/x#y?z.jpg", "dir/a+b.jpg", "dir//double.jpg"]
    put_many(s3_client, s3_bucket, {k: k.encode() for k in keys})
    stores = Stores(settings_for(s3_server, s3_client=client))
    refs = list(iter_source(parse_source(f"s3://{s3_bucket}/dir/"), stores))
    assert len(refs) == len(keys)
    assert sorted(stores.fetch(r).decode() for r in refs) == sorted(keys)


@CLIENTS
def test_key_with_a_leading_slash_round_trips(s3_server: Any, s3_client: Any, s3_bucket: str, client: str) -> None:
    # "/photo.jpg" is a legal key; split_s3 strips every leading "/" of the URI path, so it fetches "photo.jpg".
    put_many(s3_client, s3_bucket, {"/photo.jpg": b"leading slash"})
    stores = Stores(settings_for(s3_server, s3_client=client))
    refs = list(iter_source(parse_source(f"s3://{s3_bucket}"), stores))
    assert len(refs) == 1
    assert stores.fetch(refs[0]) == b"leading slash"


def test_access_denied(moto_auth: AuthMoto) -> None:
    bucket = moto_auth.bucket
    reader = moto_auth.client(moto_auth.reader)
    reader.put_object(Bucket=bucket, Key="a.jpg", Body=b"a")
    settings = Settings(s3_endpoint_url=moto_auth.endpoint_url)
    ref = ObjectRef(f"s3://{bucket}/a.jpg")

    assert S3Store(settings, reader).fetch(ref) == b"a"  # authentication is on and the right key works
    for client in (
        moto_auth.client(moto_auth.nobody),  # a real user without a policy: AccessDenied
        moto_auth.client(Credentials("AKIAEXAMPLEUNKNOWN00", "x" * 40)),  # InvalidAccessKeyId
        moto_auth.client(Credentials(moto_auth.reader.access_key, "y" * 40)),  # SignatureDoesNotMatch
    ):
        store = S3Store(settings, client)
        assert kind_of(store, ref) == "access_denied"
        with pytest.raises(UsageError, match="cannot list"):
            list(store.list(f"s3://{bucket}", SUFFIXES))


def test_obstore_gets_take_boto3s_credential_chain(moto_auth: AuthMoto, monkeypatch: pytest.MonkeyPatch) -> None:
    """LABELQ_S3_CLIENT=obstore: credentials from boto3's chain (here the environment), the same error kinds.

    A user without a policy is access_denied (per object); a key S3 does not know, or a wrong secret, is a
    WorkerFault (this worker cannot read anything: its chunk goes back to the queue); no credentials too.
    """
    from labelq.errors import WorkerFault

    bucket = moto_auth.bucket
    moto_auth.client(moto_auth.reader).put_object(Bucket=bucket, Key="a.jpg", Body=b"a")
    settings = Settings(s3_endpoint_url=moto_auth.endpoint_url, s3_region="us-east-1", s3_client="obstore",
                        s3_max_attempts=1)
    ref = ObjectRef(f"s3://{bucket}/a.jpg")

    def store_as(creds: Credentials | None) -> S3Store:
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        if creds is not None:
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", creds.access_key)
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", creds.secret_key)
        return S3Store(settings, client=object())  # GETs never touch the boto3 client

    assert store_as(moto_auth.reader).fetch(ref) == b"a"
    assert kind_of(store_as(moto_auth.nobody), ref) == "access_denied"
    for creds in (Credentials("AKIAEXAMPLEUNKNOWN00", "x" * 40), Credentials(moto_auth.reader.access_key, "y" * 40),
                  None):
        with pytest.raises(WorkerFault):
            store_as(creds).fetch(ref)


def test_bucket_policy_deny_is_access_denied(moto_auth: AuthMoto) -> None:
    bucket = moto_auth.bucket
    reader = moto_auth.client(moto_auth.reader)
    reader.put_object(Bucket=bucket, Key="public/a.jpg", Body=b"a")
    reader.put_object(Bucket=bucket, Key="private/b.jpg", Body=b"b")
    reader.put_bucket_policy(
        Bucket=bucket,
        Policy=json.dumps({"Version": "2012-10-17", "Statement": [{
            "Effect": "Deny", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/private/*",
        }]}),
    )
    store = S3Store(Settings(s3_endpoint_url=moto_auth.endpoint_url), reader)
    assert store.fetch(ObjectRef(f"s3://{bucket}/public/a.jpg")) == b"a"
    assert kind_of(store, ObjectRef(f"s3://{bucket}/private/b.jpg")) == "access_denied"
    reader.delete_bucket_policy(Bucket=bucket)


# ---------------------------------------------------------------- labelq run s3://bucket/prefix


@pytest.mark.slow
def test_labelq_run_on_an_s3_prefix(
    s3_server: Any, s3_client: Any, s3_bucket: str, corpus: Corpus, tiny_vit: Path, tmp_path: Path
) -> None:
    chosen = ["baseline.jpg", "cmyk.jpg", "rgba.png", "animated.gif", "exif_rotated.jpg",
              "truncated.jpg", "html_page.png", "empty.jpg", "bomb.png"]
    items = {f"in/{name}": (corpus.folder / name).read_bytes() for name in chosen}
    items["elsewhere/baseline.jpg"] = items["in/baseline.jpg"]
    items["in/notes.txt"] = b"not kept"
    etags = put_many(s3_client, s3_bucket, items)

    out = tmp_path / "r.jsonl"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LABELQ_S3_ENDPOINT_URL": s3_server.endpoint_url,
           "LABELQ_MAX_PIXELS": str(CORPUS_MAX_PIXELS)}
    proc = subprocess.run(
        [str(LABELQ), "run", f"s3://{s3_bucket}/in/", "--model", str(tiny_vit), "--quiet", "--batch-size", "4",
         "--db", f"sqlite:///{tmp_path / 'r.db'}", "--out", str(out)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == len(chosen)
    by_uri = {r["uri"]: r for r in records}
    assert set(by_uri) == {f"s3://{s3_bucket}/in/{name}" for name in chosen}
    for name in chosen:
        record = by_uri[f"s3://{s3_bucket}/in/{name}"]
        assert record["etag"] == etags[f"in/{name}"]
        assert record["model"] == str(tiny_vit)
        expected = corpus.expected[name]
        if expected == "ok":
            assert record["status"] == "ok", record
            assert record["label"] in ("normal", "nsfw")
        else:
            assert (record["status"], record["error_kind"]) == ("error", expected), record
            assert record["error"]
