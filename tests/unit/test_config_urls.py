"""Service URLs in settings: every form redacted, every Redis form redis-py accepts accepted (and made
kombu-safe for the broker), every malformed one a single settings error that never repeats the secret."""

from __future__ import annotations

import pytest
from kombu import Connection
from kombu.utils.url import parse_url as kombu_parse
from redis.connection import parse_url as redis_parse

from labelq.config import load_settings, redact
from labelq.errors import UsageError

SECRET = "Zq7secretPW"


# ------------------------------------------------------------------ redact


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        (f"redis://:{SECRET}@h:6379/0", "redis://***@h:6379/0"),
        (f"redis://user:{SECRET}@h/0", "redis://user:***@h/0"),
        (f"redis://{SECRET}@h/0", "redis://***@h/0"),  # a lone userinfo may be a token
        ("redis://:Zq7%2Fsecret%23PW@h/0", "redis://***@h/0"),
        (f"rediss://h:6380/0?password={SECRET}", "rediss://h:6380/0?password=***"),
        (f"redis://h/0?db=1&password={SECRET}&ssl=0", "redis://h/0?db=1&password=***&ssl=0"),
        (f"unix:///run/redis.sock?db=2&password={SECRET}", "unix:///run/redis.sock?db=2&password=***"),
        (f"amqp://guest:{SECRET}@rabbit:5672/vhost", "amqp://guest:***@rabbit:5672/vhost"),
        (f"postgresql+psycopg://app:{SECRET}@db:5432/labels", "postgresql+psycopg://app:***@db:5432/labels"),
        (f"https://sqs.example/q?token={SECRET}&secret={SECRET}&key={SECRET}",
         "https://sqs.example/q?token=***&secret=***&key=***"),
        (f"https://b.s3.example/k.jpg?X-Amz-Credential={SECRET}&X-Amz-Signature={SECRET}"
         f"&X-Amz-Security-Token={SECRET}&X-Amz-Expires=60",
         "https://b.s3.example/k.jpg?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Security-Token=***"
         "&X-Amz-Expires=60"),
        (f"https://h/x?AWSAccessKeyId=AKIA&api_key={SECRET}&passwd={SECRET}#top",
         "https://h/x?AWSAccessKeyId=***&api_key=***&passwd=***#top"),
        ("sqlite:///labelq.db", "sqlite:///labelq.db"),
        ("memory://", "memory://"),
    ],
)
def test_redact_hides_the_password_and_secret_query_values(url: str, shown: str) -> None:
    assert redact(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        "redis://:Zq7se@cretPW@h:6379/0",  # @ unencoded: the last @ ends the userinfo
        "redis://:Zq7se/cretPW@h:6379/0",  # /, # and ? unencoded: where the userinfo ends is a guess
        "redis://:Zq7se#cretPW@h:6379/0",
        "redis://:Zq7se?cretPW@h:6379/0",
        "redis://user:Zq7se/cr?et#PW@h:6379/0",
        "redis://user:Zq7se:cret@PW@h/0?password=Zq7secretPW",
        "amqp://guest:Zq7se/cretPW@rabbit//",
        "postgresql://app:Zq7se/cr#etPW@db/labels",
        "redis://:Zq7se[cretPW@h/0",
    ],
)
def test_redact_never_shows_any_part_of_a_malformed_password(url: str) -> None:
    shown = redact(url)
    assert "Zq7" not in shown and "PW" not in shown and "cret" not in shown, shown
    assert shown.startswith(url.split("://")[0] + "://")


@pytest.mark.parametrize(("url", "text"), [
    # SQLAlchemy splits at the first @ and psycopg names the rest of the password as the host
    ("postgresql://bob:Sup3r@S3cretPw@db:5432/x", "failed to resolve host 'S3cretPw@db'"),
    ("postgresql://bob:Sup3r%2FS3cretPw@db/x", "password Sup3r/S3cretPw rejected"),  # decoded form
    ("postgresql://S3cretPwAsUser@db/x", 'FATAL:  role "S3cretPwAsUser" does not exist'),  # no user: all hidden
    ("postgresql://db/x?password=S3cretPw&sslmode=require", "with password S3cretPw"),
    ("postgresql://bob:Sup3rS3cretPw@db/x", "cannot use postgresql://bob:Sup3rS3cretPw@db/x: bad"),
])
def test_scrub_hides_every_form_and_piece_of_a_urls_secret(url: str, text: str) -> None:
    from labelq.urls import scrub

    out = scrub(text, url)
    assert "S3cretPw" not in out and "***" in out, out
    assert scrub("nothing secret here", url) == "nothing secret here"


def test_redact_passes_through_what_is_not_a_url() -> None:
    assert (redact(None), redact(""), redact("localhost")) == ("", "", "localhost")


# ------------------------------------------------------------------ Redis URLs that are accepted


def broker(url: str) -> str:
    return load_settings(broker_url=url).broker_url


@pytest.mark.parametrize(
    ("given", "used"),
    [
        ("redis://h:6379/0?password=p%2Fw", "redis://:p%2Fw@h:6379/0"),
        ("redis://h/0?password=pw&db=3", "redis://:pw@h/3"),
        ("redis://h/?db=3", "redis://h/3"),
        ("redis://alice@h/0?password=pw", "redis://alice:pw@h/0"),
        ("redis://h/0?username=alice&password=pw", "redis://alice:pw@h/0"),
        ("rediss://h:6380/0?password=pw&ssl_cert_reqs=required", "rediss://:pw@h:6380/0?ssl_cert_reqs=required"),
        ("amqp://rabbit:5672/vh?password=pw", "amqp://:pw@rabbit:5672/vh"),
    ],
)
def test_a_broker_password_given_as_a_query_parameter_moves_into_the_userinfo(given: str, used: str) -> None:
    url = broker(given)
    assert url == used
    Connection(url)  # kombu no longer fails on it ("got multiple values for keyword argument 'password'")
    if url.startswith("redis"):
        assert kombu_parse(url)["password"] == redis_parse(given).get("password") == redis_parse(url).get("password")


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "redis://:p%2Fw%23x%40y@h:6379/0",
        "redis://:p@ss@h/0",  # an unencoded @ is unambiguous: the last one ends the userinfo
        "redis://user:pa:ss@h/1",
        "rediss://:pw@h:6380/0?ssl_cert_reqs=none",
        "amqp://guest:guest@rabbit:5672//",
        "memory://",
    ],
)
def test_broker_urls_kombu_and_redis_py_read_alike_are_kept_as_given(url: str) -> None:
    assert broker(url) == url
    if url.startswith("redis"):
        assert kombu_parse(url)["password"] == redis_parse(url).get("password")


@pytest.mark.parametrize(
    "url",
    [
        "redis://h/0?password=pw",
        "unix:///run/redis.sock?db=2&password=pw",
        "unix:///run/redis.sock",
        "rediss://:p%2Fw@h:6380/2",
    ],
)
def test_job_and_result_redis_urls_are_accepted_as_redis_py_accepts_them(url: str) -> None:
    redis_parse(url)
    settings = load_settings(redis_url=url, results_url=url)
    assert (settings.redis_url, settings.results_url) == (url, url)


def test_sql_result_urls_are_left_to_sqlalchemy() -> None:
    url = "postgresql://app:pa/ss@db:5432/labels"  # SQLAlchemy reads an unencoded / in a password
    assert load_settings(results_url=url).results_url == url


# ------------------------------------------------------------------ ... and those refused, with one clear line


def refused(**settings: str) -> str:
    with pytest.raises(UsageError) as info:
        load_settings(**settings)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("char", ["/", "#", "?"])
@pytest.mark.parametrize("field", ["broker_url", "redis_url", "results_url"])
def test_an_unencoded_slash_hash_or_question_mark_in_a_password_is_refused_without_echoing_it(
    field: str, char: str
) -> None:
    message = refused(**{field: f"redis://:Zq7se{char}cretPW@h:6379/0"})
    assert message.startswith(f"invalid settings: LABELQ_{field.upper()}: ")
    assert "percent-encode" in message and "redis://:PASSWORD@host:6379/0" in message
    assert "Zq7" not in message and "cretPW" not in message


def test_an_unencoded_bracket_in_a_password_is_refused_without_echoing_it() -> None:
    message = refused(broker_url="redis://:Zq7se[cretPW@h:6379/0")
    assert "percent-encode" in message and "%5B" in message and "Zq7" not in message


def test_an_amqp_password_with_a_slash_is_refused_too() -> None:
    message = refused(broker_url="amqp://guest:Zq7se/cretPW@rabbit:5672//")
    assert "LABELQ_BROKER_URL" in message and "percent-encode" in message and "Zq7" not in message


@pytest.mark.parametrize("field", ["broker_url", "redis_url"])
def test_a_password_given_twice_is_refused(field: str) -> None:
    message = refused(**{field: f"redis://:{SECRET}@h/0?password=other{SECRET}"})
    assert "given twice" in message and SECRET not in message


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis://h:63x9/0", "port after the host must be a number"),
        ("redis://h:6379/zero", "database after the host must be a number"),
        ("redis://h:6379/0?db=zero", "Invalid value for 'db'"),
        ("redis://h:6379/0?socket_timeout=soon", "Invalid value for 'socket_timeout'"),
    ],
)
def test_malformed_redis_urls_say_what_is_wrong(url: str, says: str) -> None:
    assert says in refused(redis_url=url)


def test_an_unknown_broker_scheme_is_refused() -> None:
    message = refused(broker_url="kafka://h:9092")
    assert "LABELQ_BROKER_URL" in message and "redis://" in message and "kafka://" in message


# ------------------------------------------------------------------ S3 and SQS endpoints


@pytest.mark.parametrize("field", ["s3_endpoint_url", "sqs_endpoint_url"])
@pytest.mark.parametrize("url", ["http://localhost:9000", "https://s3.eu-west-1.amazonaws.com", "http://[::1]:4566/"])
def test_http_endpoints_are_accepted(field: str, url: str) -> None:
    assert getattr(load_settings(**{field: url}), field) == url


@pytest.mark.parametrize("field", ["s3_endpoint_url", "sqs_endpoint_url"])
@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("localhost:9000", "must be an http:// or https:// URL with a host"),
        ("minio", "must be an http:// or https:// URL with a host"),
        ("ftp://files.example", "must be an http:// or https:// URL with a host"),
        ("http://", "must be an http:// or https:// URL with a host"),
        ("http://minio:nine/", "port after the host must be a number"),
        ("http://[::1:9000", "cannot be parsed"),
    ],
)
def test_a_malformed_endpoint_is_one_settings_error(field: str, url: str, says: str) -> None:
    message = refused(**{field: url})
    assert message.startswith(f"invalid settings: LABELQ_{field.upper()}: ")
    assert says in message


def test_a_validation_error_raised_by_settings_itself_never_shows_the_url() -> None:
    from pydantic import ValidationError

    from labelq.config import Settings

    with pytest.raises(ValidationError) as info:
        Settings(broker_url=f"redis://:Zq7/{SECRET}@h/0")
    assert "Zq7" not in str(info.value) and SECRET not in str(info.value)
