"""listen.py: object-created events (S3, SNS-wrapped S3, MinIO access format) parsed and validated."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest

from labelq.listen import BadEvent, Upload, parse_event
from labelq.objects import ObjectRef, split_s3

EVENT_TIME = "2026-11-25T10:11:12.345Z"
EVENT_TS = datetime.fromisoformat("2026-11-25T10:11:12.345+00:00").timestamp()


def s3_record(key: str, *, name: str = "ObjectCreated:Put", bucket: str = "uploads", size: int | None = 1234,
              etag: str | None = "0123abcd", time: str | None = EVENT_TIME) -> dict[str, Any]:
    """One record as AWS S3 writes it into a notification (keys are URL-encoded, space as '+')."""
    obj: dict[str, Any] = {"key": key, "sequencer": "0055AED6DCD90281E5"}
    if size is not None:
        obj["size"] = size
    if etag is not None:
        obj["eTag"] = etag
    rec: dict[str, Any] = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventName": name,
        "s3": {"s3SchemaVersion": "1.0", "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"}, "object": obj},
    }
    if time is not None:
        rec["eventTime"] = time
    return rec


def s3_event(*records: dict[str, Any]) -> dict[str, Any]:
    return {"Records": list(records)}


def minio_access(*records: dict[str, Any]) -> list[dict[str, Any]]:
    """What MinIO's Redis target in ``access`` format RPUSHes: a list of {Event: [...], EventTime}."""
    return [{"Event": list(records), "EventTime": EVENT_TIME}]


def sns(message: dict[str, Any]) -> dict[str, Any]:
    """An SNS notification delivered to SQS (raw delivery off): the S3 event is a JSON string in Message."""
    return {
        "Type": "Notification",
        "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        "TopicArn": "arn:aws:sns:us-east-1:123456789012:uploads",
        "Subject": "Amazon S3 Notification",
        "Message": json.dumps(message),
        "Timestamp": EVENT_TIME,
    }


# ------------------------------------------------------------------ S3


def test_an_s3_put_becomes_one_upload_with_size_etag_and_time() -> None:
    [up] = parse_event(s3_event(s3_record("photos/cat.jpg", etag='"0123abcd"')))
    assert up == Upload(ObjectRef("s3://uploads/photos/cat.jpg", 1234, "0123abcd"), EVENT_TS, "0055AED6DCD90281E5")


@pytest.mark.parametrize(
    ("encoded", "key"),
    [
        ("holiday+photos/my+cat.jpg", "holiday photos/my cat.jpg"),  # '+' is a space
        ("a%2Bb/c%2Bd.jpg", "a+b/c+d.jpg"),  # a real '+' is %2B
        ("dir%2Fsub%2Fimg.png", "dir/sub/img.png"),  # an encoded '/'
        ("caf%C3%A9+%231%3F.jpg", "café #1?.jpg"),  # UTF-8 and reserved characters
    ],
)
def test_url_encoded_keys_are_decoded_to_the_objects_real_key(encoded: str, key: str) -> None:
    [up] = parse_event(s3_event(s3_record(encoded)))
    assert split_s3(up.ref.uri) == ("uploads", key)


def test_every_created_kind_counts_and_other_kinds_are_skipped() -> None:
    event = s3_event(
        s3_record("a.jpg", name="ObjectCreated:Put"),
        s3_record("b.jpg", name="ObjectRemoved:Delete"),
        s3_record("c.jpg", name="ObjectCreated:CompleteMultipartUpload"),
        s3_record("d.jpg", name="ObjectCreated:Copy"),
        s3_record("e.jpg", name="ObjectRestore:Completed"),
        s3_record("f.jpg", name="s3:ObjectCreated:Post"),  # MinIO spells the names with the s3: prefix
    )
    assert [split_s3(u.ref.uri)[1] for u in parse_event(event)] == ["a.jpg", "c.jpg", "d.jpg", "f.jpg"]


def test_a_delete_only_event_gives_nothing() -> None:
    assert parse_event(s3_event(s3_record("a.jpg", name="ObjectRemoved:Delete"))) == []


def test_size_etag_and_time_are_optional() -> None:
    [up] = parse_event(s3_event(s3_record("a.jpg", size=None, etag=None, time=None)))
    assert up == Upload(ObjectRef("s3://uploads/a.jpg", None, None), None, "0055AED6DCD90281E5")


def test_the_event_may_arrive_as_json_text_or_bytes() -> None:
    event = s3_event(s3_record("a.jpg"))
    assert parse_event(json.dumps(event)) == parse_event(json.dumps(event).encode()) == parse_event(event)


def test_the_s3_test_event_is_skipped() -> None:
    test_event = {"Service": "Amazon S3", "Event": "s3:TestEvent", "Time": EVENT_TIME, "Bucket": "uploads",
                  "RequestId": "5582815E1AEA5ADF", "HostId": "8cLeGAmw098X5cv4Zkwcmo8vvZa3eH3eKxsPzbB9wrR+YstdA6Knx4Ip8EXAMPLE"}
    assert parse_event(test_event) == []
    assert parse_event(json.dumps(test_event)) == []


# ------------------------------------------------------------------ SNS and MinIO


def test_an_sns_envelope_is_unwrapped() -> None:
    inner = s3_event(s3_record("in+sns.jpg"))
    assert parse_event(sns(inner)) == parse_event(inner)
    assert split_s3(parse_event(json.dumps(sns(inner)))[0].ref.uri) == ("uploads", "in sns.jpg")


def test_an_sns_wrapped_test_event_is_skipped() -> None:
    assert parse_event(sns({"Service": "Amazon S3", "Event": "s3:TestEvent"})) == []


def test_minio_access_format_gives_every_created_object() -> None:
    payload = minio_access(
        s3_record("x%2Fy.png", name="s3:ObjectCreated:Put", bucket="media"),
        s3_record("gone.png", name="s3:ObjectRemoved:Delete", bucket="media"),
        s3_record("z+1.png", name="s3:ObjectCreated:Copy", bucket="media", size=7, etag="ff"),
    )
    ups = parse_event(json.dumps(payload))
    assert [u.ref for u in ups] == [
        ObjectRef("s3://media/x/y.png", 1234, "0123abcd"),
        ObjectRef("s3://media/z%201.png", 7, "ff"),
    ]
    assert all(u.at == EVENT_TS for u in ups)


def test_minio_access_format_may_hold_several_entries() -> None:
    payload = minio_access(s3_record("a.png")) + minio_access(s3_record("b.png"))
    assert [split_s3(u.ref.uri)[1] for u in parse_event(payload)] == ["a.png", "b.png"]


def test_a_minio_event_with_a_single_record_object_is_refused() -> None:
    with pytest.raises(BadEvent, match="Records must be an array"):
        parse_event({"Event": s3_record("a.png"), "EventTime": EVENT_TIME})


# ------------------------------------------------------------------ malformed


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        ("42", "expected a JSON object, got int"),
        (None, "expected a JSON object, got NoneType"),
        ({"hello": "world"}, "no Records"),
        ({"Records": {"eventName": "ObjectCreated:Put"}}, "Records must be an array"),
        ({"Records": ["ObjectCreated:Put"]}, "an event record must be an object"),
        (s3_event({"eventName": "ObjectCreated:Put"}), "without s3.bucket.name / s3.object.key"),
        (s3_event({"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "b"}, "object": {}}}),
         "without s3.bucket.name / s3.object.key"),
        (s3_event({"eventName": "ObjectCreated:Put", "s3": "nope"}), "without s3.bucket.name"),
        (s3_event(s3_record("")), "empty bucket or key"),
        (s3_event(s3_record("a.jpg", bucket="")), "empty bucket or key"),
        (s3_event(s3_record("a.jpg", time="yesterday")), "bad eventTime 'yesterday'"),
        ([{"Event": [s3_record("a.jpg")]}, 42], "expected a JSON object, got int"),
    ],
    ids=["text", "bytes", "number", "null", "no-records", "records-object", "record-string", "no-s3", "no-key",
         "s3-string", "empty-key", "empty-bucket", "bad-time", "minio-junk"],
)
def test_malformed_events_raise_bad_event(payload: Any, message: str) -> None:
    with pytest.raises(BadEvent, match=message):
        parse_event(payload)


def test_one_malformed_record_spoils_the_whole_event() -> None:
    """An event is accepted or refused whole: no half-enqueued notification."""
    with pytest.raises(BadEvent):
        parse_event(s3_event(s3_record("good.jpg"), {"eventName": "ObjectCreated:Put"}))


def test_bad_event_is_a_value_error() -> None:
    assert issubclass(BadEvent, ValueError)


@pytest.mark.parametrize(
    "payload",
    [b"\x80\x81 not utf-8", s3_event(s3_record("a.jpg", size="big"))],  # type: ignore[arg-type]
    ids=["not-utf8", "size-not-a-number"],
)
def test_every_malformed_event_is_a_bad_event_not_a_crash(payload: Any) -> None:
    """Listener.handle_raw only catches BadEvent: anything else escapes run_minio/run_sqs and ends the listener.

    A MinIO list entry that is not UTF-8, or an S3 record whose size is not a number, must be
    dropped like any other malformed event.
    """
    with pytest.raises(BadEvent):
        parse_event(payload)
