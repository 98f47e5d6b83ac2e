"""High-availability settings without servers: sentinel:// URLs (Celery's form) parsed, checked and redacted,
the Sentinel master's name required, and the Celery app told about both Sentinel and quorum queues."""

from __future__ import annotations

import pytest
from kombu import Connection

from labelq.config import load_settings, redact
from labelq.errors import UsageError
from labelq.redis_client import connect
from labelq.tasks import make_app
from labelq.urls import SENTINEL_PORT, parse_sentinel_url

SECRET = "Zq7secretPW"
THREE = "sentinel://s1:26379;sentinel://s2:26380;sentinel://s3"


def refused(**settings: str) -> str:
    with pytest.raises(UsageError) as caught:
        load_settings(**settings)
    message = str(caught.value)
    assert SECRET not in message and "\n" not in message
    return message


# ------------------------------------------------------------------ parsing


def test_a_sentinel_list_gives_every_sentinel_with_the_default_port() -> None:
    parsed = parse_sentinel_url(THREE)
    assert parsed.sentinels == (("s1", 26379), ("s2", 26380), ("s3", SENTINEL_PORT))
    assert (parsed.db, parsed.username, parsed.password) == (0, None, None)


@pytest.mark.parametrize(
    "url",
    [
        f"sentinel://:{SECRET}@s1:26379/3;sentinel://s2:26379",  # on the first only (as kombu reads it)
        f"sentinel://:{SECRET}@s1:26379/3;sentinel://:{SECRET}@s2:26379/3",  # the same on each
        f"sentinel://:{SECRET}@s1:26379/3; sentinel://s2:26379",  # a space after the ;
    ],
)
def test_the_masters_password_and_db_come_from_the_first_sentinel_as_kombu_reads_them(url: str) -> None:
    parsed = parse_sentinel_url(url)
    assert (parsed.db, parsed.password) == (3, SECRET)
    kombu = Connection(url, transport_options={"master_name": "m"})  # what the broker connection will use
    assert (kombu.password, kombu.virtual_host, len(kombu.alt)) == (SECRET, "3", 2)


def test_a_percent_encoded_password_is_decoded() -> None:
    assert parse_sentinel_url("sentinel://app:Zq7%2Fse%3Bcret@s1").password == "Zq7/se;cret"
    assert parse_sentinel_url("sentinel://app:Zq7%2Fse%3Bcret@s1").username == "app"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (f"sentinel://:{SECRET}@s1/0;sentinel://:other@s2/0", "different databases or passwords"),
        ("sentinel://s1/0;sentinel://s2/1", "different databases or passwords"),
        (f"sentinel://s1;sentinel://:{SECRET}@s2", "different databases or passwords"),
        (f"sentinel://s1?password={SECRET}", "takes no ?options"),
        ("sentinel://s1:26379/zero", "database after the sentinel must be a number"),
        ("sentinel://s1:port", "port after the host must be a number"),
        ("sentinel://:26379", "needs a host"),
        ("sentinel://s1;redis://s2:6379", "starts with sentinel://, not redis://"),
        (f"sentinel://:{SECRET}/x@s1", "unencoded /, ? or #"),
    ],
)
def test_a_malformed_sentinel_url_is_one_settings_error_that_never_repeats_the_password(url: str, says: str) -> None:
    message = refused(broker_url=url, sentinel_master="mymaster")
    assert message.startswith("invalid settings: LABELQ_BROKER_URL:") and says in message
    assert says in refused(redis_url=url, sentinel_master="mymaster")


# ------------------------------------------------------------------ settings


def test_a_sentinel_url_needs_the_master_name() -> None:
    message = refused(broker_url=THREE)
    assert "LABELQ_SENTINEL_MASTER" in message and "LABELQ_BROKER_URL names Redis Sentinels" in message
    assert "LABELQ_RESULTS_URL names" in refused(broker_url="amqp://h//", results_url=THREE)
    assert "LABELQ_BROKER_URL and LABELQ_REDIS_URL name" in refused(broker_url=THREE, redis_url=THREE)
    assert "LABELQ_SENTINEL_MASTER" in refused(broker_url=THREE, sentinel_master="  ")


def test_a_sentinel_broker_is_also_the_job_state_and_record_store() -> None:
    settings = load_settings(broker_url=THREE, sentinel_master="mymaster")
    assert settings.broker_url == settings.jobs_redis == settings.results == THREE
    assert settings.sentinel_master == "mymaster"
    amqp = load_settings(broker_url="amqp://h//", redis_url=THREE, sentinel_master="m")
    assert amqp.jobs_redis == amqp.results == THREE


def test_connect_without_the_master_name_is_one_clear_error() -> None:
    with pytest.raises(UsageError, match="LABELQ_SENTINEL_MASTER"):
        connect(THREE, check=False)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"sentinel://:{SECRET}@s1:26379/0;sentinel://s2:26379", "sentinel://***@s1:26379/0;sentinel://s2:26379"),
        (f"sentinel://app:{SECRET}@s1;sentinel://app:{SECRET}@s2", "sentinel://app:***@s1;sentinel://app:***@s2"),
        (f"redis://:{SECRET};x@h:6379/0", "redis://***@h:6379/0"),  # a ; in a password is not a list
    ],
)
def test_redact_hides_the_password_of_every_sentinel(url: str, shown: str) -> None:
    assert redact(url) == shown


# ------------------------------------------------------------------ the Celery app


def test_a_sentinel_broker_gives_kombu_the_master_name() -> None:
    app = make_app(load_settings(broker_url=THREE, sentinel_master="mymaster"))
    options = app.conf.broker_transport_options
    assert options["master_name"] == "mymaster" and options["sentinel_kwargs"]["socket_timeout"] > 0
    assert app.conf.broker_url == THREE
    assert "master_name" not in make_app(load_settings(broker_url="redis://h:6379/0")).conf.broker_transport_options


def test_quorum_queues_are_declared_as_quorum_with_a_topic_exchange_and_no_global_qos() -> None:
    from celery.utils.quorum_queues import detect_quorum_queues

    settings = load_settings(broker_url="amqp://guest:guest@h:5672//", amqp_quorum=True)
    app = make_app(settings)
    queue = app.amqp.queues[settings.queue]
    assert queue.queue_arguments == {"x-queue-type": "quorum"} and queue.exchange.type == "topic"
    live = app.amqp.queues[settings.live_queue]
    assert live.queue_arguments == {"x-queue-type": "quorum"} and live.exchange.type == "topic"
    assert detect_quorum_queues(app, "amqp") == (True, settings.queue)
    classic = make_app(load_settings(broker_url="amqp://guest:guest@h:5672//"))
    assert not classic.amqp.queues[settings.queue].queue_arguments
    assert not make_app(load_settings(broker_url="redis://h/0", amqp_quorum=True)).amqp.queues[settings.queue].queue_arguments


def test_an_amqp_failover_list_is_checked_url_by_url_and_kept() -> None:
    three = "amqp://u:p@r1:5672//;amqp://u:p@r2:5672//;amqp://u:p@r3:5672//"
    assert load_settings(broker_url=three).broker_url == three
    moved = load_settings(broker_url=f"amqp://r1:5672//?password={SECRET};amqp://r2:5672//").broker_url
    assert moved == f"amqp://:{SECRET}@r1:5672//;amqp://r2:5672//"
    assert "same scheme" in refused(broker_url="amqp://r1//;redis://r2:6379/0")
    assert "unencoded /, ? or #" in refused(broker_url=f"amqp://r1//;amqp://u:{SECRET}/x@r2//")
    assert redact(f"amqp://u:{SECRET}@r1//;amqp://u:{SECRET}@r2//") == "amqp://u:***@r1//;amqp://u:***@r2//"
