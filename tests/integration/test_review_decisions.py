"""Reviewers' decisions end to end below the browser: the real moderator quarantines, the console's decide and
undo change moto's S3 or the local root, with a real Redis; a storage failure leaves nothing half done."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from labelq.config import load_settings
from labelq.console import review
from labelq.errors import UsageError
from labelq.moderation import Moderator, Policy, Rule
from labelq.objects import Stores, file_uri
from labelq.records import Record
from labelq.reviews import ReviewStore

POLICY = Policy("p-7", (Rule("m", "nsfw", 0.5, ("tag", "move")),))


def _audit(redis: Any) -> list[dict[str, Any]]:
    return [json.loads(v[b"a"]) for _, v in redis.xrange("labelq:audit")]


def test_a_release_that_fails_in_storage_changes_nothing(redis_client: Any, s3_client: Any, s3_bucket: str,
                                                         s3_server: Any) -> None:
    stores = Stores(load_settings(s3_endpoint_url=s3_server.endpoint_url))
    etag = s3_client.put_object(Bucket=s3_bucket, Key="a/x.jpg", Body=b"x")["ETag"].strip('"')
    uri = f"s3://{s3_bucket}/a/x.jpg"
    Moderator(POLICY, redis=redis_client, stores=stores).apply(
        [Record(uri, etag, "m", label="nsfw", score=0.7, job="j")])
    store = ReviewStore(redis_client)
    item = store.find(uri, etag)
    assert item is not None and item.moved and item.threshold == 0.5 and item.policy_version == "p-7"
    copy = s3_client.get_object(Bucket=s3_bucket, Key="quarantine/a/x.jpg")["Body"].read()
    s3_client.delete_object(Bucket=s3_bucket, Key="quarantine/a/x.jpg")  # someone removed the quarantine copy

    with pytest.raises(UsageError, match="release failed, nothing changed"):
        review.decide(redis_client, stores, store, item.id, item.version, "release", "alice")
    now = store.get(item.id)
    assert now is not None and (now.state, now.claimed_by, now.decision) == ("claimed", "alice", None)
    assert not [a for a in _audit(redis_client) if a["action"].startswith("review:")]
    assert redis_client.hget("labelq:released", uri) is None

    s3_client.put_object(Bucket=s3_bucket, Key="quarantine/a/x.jpg", Body=copy,
                         Tagging="labelq-label=nsfw&labelq-score=0.7000&labelq-policy=p-7&owner=web")
    done = review.decide(redis_client, stores, store, item.id, now.version, "release", "alice",
                         reason="false-positive", reasons=["false-positive"])
    assert done.decision == "release" and "restored from" in done.detail
    tags = {t["Key"]: t["Value"] for t in s3_client.get_object_tagging(Bucket=s3_bucket, Key="a/x.jpg")["TagSet"]}
    assert tags == {"owner": "web", "labelq-review": "released", "labelq-reviewer": "alice",
                    "labelq-reason": "false-positive"}
    with pytest.raises(UsageError, match="reason must be one of"):
        review.decide(redis_client, stores, store, item.id, done.version, "confirm", "bob", reason="bored",
                      reasons=["false-positive"])


def test_local_release_and_undo_never_go_through_a_link(redis_client: Any, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "in").mkdir(parents=True)
    (root / "in" / "a.png").write_bytes(b"a")
    stores = Stores(load_settings(local_root=root))
    uri = file_uri(root / "in" / "a.png")
    Moderator(POLICY, redis=redis_client, stores=stores).apply([Record(uri, "e1", "m", label="nsfw", score=0.9)])
    store = ReviewStore(redis_client)
    item = store.find(uri, "e1")
    assert item is not None and item.quarantine_uri == file_uri(root / "quarantine" / "in" / "a.png")

    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "in").rename(root / "in-real")
    (root / "in").symlink_to(outside)  # the original folder is now a link out of the root
    with pytest.raises(UsageError, match="release failed"):
        review.decide(redis_client, stores, store, item.id, item.version, "release", "alice")
    assert not list(outside.iterdir()) and (root / "quarantine" / "in" / "a.png").exists()
    (root / "in").unlink()
    (root / "in-real").rename(root / "in")

    now = store.get(item.id)
    assert now is not None
    done = review.decide(redis_client, stores, store, item.id, now.version, "release", "alice")
    assert (root / "in" / "a.png").read_bytes() == b"a" and not (root / "quarantine" / "in" / "a.png").exists()
    back = review.undo(redis_client, stores, store, item.id, done.version, "alice")
    assert (root / "quarantine" / "in" / "a.png").read_bytes() == b"a" and not (root / "in" / "a.png").exists()
    assert (back.state, back.claimed_by) == ("claimed", "alice")
    assert [a["action"] for a in _audit(redis_client) if a["action"].startswith("review:")] == [
        "review:release", "review:undo"]
