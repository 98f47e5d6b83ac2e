"""Shared fixtures: private servers on free ports, tiny random models, an image corpus.

Servers (see tests/support/ for how each is started and what it falls back to):
``redis_server`` / ``redis_url`` / ``redis_client`` / ``redis_factory``,
``s3_server`` / ``s3_client`` / ``s3_bucket``, ``postgres_server`` / ``postgres_url``,
``rabbitmq_server`` / ``amqp_url``. Models and data: ``tiny_vit``, ``tiny_timm``,
``corpus``. A missing server binary skips the test naming the package to install,
except under ``CI`` (any non-empty value), where it fails.

The whole session runs offline and isolated: hub access is switched off and
HF_HOME points at a temporary folder, AWS credentials are fake ("testing",
us-east-1) and no AWS config file is read, and ``LABELQ_*`` variables from the
caller's shell are removed so every test states its own settings.
Tests are marked ``unit``, ``integration`` or ``e2e`` by the folder they live in.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from labelq.testing import Corpus, build_timm, build_vit, make_corpus
from tests.support.clouds import Azurite, GcsEmulator
from tests.support.moto import MotoServer, fresh_bucket
from tests.support.postgres import PostgresServer
from tests.support.procs import MissingBinary
from tests.support.rabbit import RabbitServer
from tests.support.redis import RedisServer, SentinelGroup

logger = logging.getLogger(__name__)

TIERS = ("unit", "integration", "e2e")
_STATE: dict[str, str] = {}  # filled by pytest_configure, emptied by pytest_unconfigure

FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


# ---------------------------------------------------------------- session set-up


def _isolate_environment(home: Path) -> None:
    """Offline hub in a private HF_HOME, fake AWS credentials, no LABELQ_* from the caller."""
    clouds = ["STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS", "AZURE_STORAGE_CONNECTION_STRING"]
    for name in [k for k in os.environ if k.startswith("LABELQ_")] + ["AWS_PROFILE", "AWS_ENDPOINT_URL", *clouds]:
        os.environ.pop(name, None)
    os.environ.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_HOME": str(home / "hf"),
            "TORCH_HOME": str(home / "torch"),
            "XDG_STATE_HOME": str(home / "state"),  # background producers' logs (labelq.logs.private_folder)
            "TOKENIZERS_PARALLELISM": "false",
            "AWS_CONFIG_FILE": str(home / "aws-config-absent"),
            "AWS_SHARED_CREDENTIALS_FILE": str(home / "aws-credentials-absent"),
            **FAKE_AWS,
        }
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the tier markers and isolate the environment before any test module is imported."""
    for tier in TIERS:
        config.addinivalue_line("markers", f"{tier}: {tier} test (set from the tests/{tier}/ folder)")
    home = Path(tempfile.mkdtemp(prefix="labelq-test-home-"))
    _STATE["home"] = str(home)
    _isolate_environment(home)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the temporary HF_HOME and friends."""
    home = _STATE.pop("home", None)
    if home:
        shutil.rmtree(home, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test with its tier, from the folder under tests/ it lives in."""
    root = Path(__file__).parent
    for item in items:
        try:
            tier = Path(item.path).relative_to(root).parts[0]
        except ValueError:
            continue
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


def _need(start: Callable[[], Any]) -> Any:
    """Run a server's start; a missing binary skips (fails under CI) naming the package."""
    try:
        return start()
    except MissingBinary as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{exc} (CI must install it)", pytrace=False)
        pytest.skip(str(exc))


# ---------------------------------------------------------------- Redis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server for the session (no AOF): ``.url``, ``.port``, ``.stop()``, ``.start()``.

    A test that stops it should start it again; ``redis_url`` restarts it if not.
    """
    server = _need(lambda: RedisServer(tmp_path_factory.mktemp("redis")).start())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., RedisServer]]:
    """Make extra private redis-servers for one test, e.g. ``redis_factory(aof=True)`` for restart tests."""
    servers: list[RedisServer] = []

    def make(*, aof: bool = False) -> RedisServer:
        server = _need(lambda: RedisServer(tmp_path_factory.mktemp("redis-extra"), aof=aof).start())
        servers.append(server)
        return server

    try:
        yield make
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The session server's db 0, flushed before and after the test."""
    redis_server.start()  # no-op unless a previous test left it stopped
    with redis_server.client() as client:
        client.flushdb()
    try:
        yield redis_server.url
    finally:
        redis_server.start()
        with redis_server.client() as client:
            client.flushdb()


@pytest.fixture
def redis_client(redis_url: str, redis_server: RedisServer) -> Iterator[Any]:
    """A ``redis.Redis`` on the clean db of ``redis_url``."""
    with redis_server.client() as client:
        yield client


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[SentinelGroup]:
    """A fresh Redis Sentinel group per test (a master, a replica, three sentinels): the tests kill its master."""
    group = _need(lambda: SentinelGroup(tmp_path / "ha", sentinels=3).start())
    try:
        yield group
    finally:
        group.stop()


# ---------------------------------------------------------------- S3


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """moto's server over HTTP in a subprocess: ``.endpoint_url`` reaches it from any process."""
    server = _need(lambda: MotoServer(tmp_path_factory.mktemp("moto")).start())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def s3_client(s3_server: MotoServer) -> Any:
    """A boto3 S3 client for the moto server (fake credentials, us-east-1)."""
    import boto3

    return boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name="us-east-1")


@pytest.fixture
def s3_bucket(s3_client: Any) -> Iterator[str]:
    """A fresh, empty bucket's name; it and its objects are deleted after the test."""
    with fresh_bucket(s3_client, "labelq-test") as name:
        yield name


# ---------------------------------------------------------------- Google Cloud Storage, Azure Blob


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcsEmulator]:
    """gcp-storage-emulator on a free port: ``.env`` (STORAGE_EMULATOR_HOST) reaches it, ``.client()``."""
    server = _need(lambda: GcsEmulator(tmp_path_factory.mktemp("gcs")).start())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """Azurite's blob service on a free port: ``.env`` (AZURE_STORAGE_CONNECTION_STRING), ``.client()``."""
    server = _need(lambda: Azurite(tmp_path_factory.mktemp("azurite")).start())
    try:
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A private PostgreSQL cluster (or a throwaway database on 127.0.0.1:5432): ``.url``, ``.mode``."""
    server = _need(lambda: PostgresServer().start())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """``postgresql+psycopg://postgres@127.0.0.1:PORT/DB`` for SQLAlchemy."""
    return postgres_server.url


# ---------------------------------------------------------------- RabbitMQ


@pytest.fixture(scope="session")
def rabbitmq_server() -> Iterator[RabbitServer]:
    """A private RabbitMQ node (or a throwaway vhost on 127.0.0.1:5672): ``.url``, ``.mode``."""
    server = _need(lambda: RabbitServer().start())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def amqp_url(rabbitmq_server: RabbitServer) -> str:
    """``amqp://guest:guest@127.0.0.1:PORT/VHOST``."""
    return rabbitmq_server.url


# ---------------------------------------------------------------- models and images


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a tiny random ViT laid out like Falconsai/nsfw_image_detection (labels normal, nsfw)."""
    return build_vit(tmp_path_factory.mktemp("models") / "tiny-vit")


@pytest.fixture(scope="session")
def tiny_timm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a random timm mobilenetv3_small_100 laid out like timm/mobilenetv3_small_100.lamb_in1k."""
    return build_timm(tmp_path_factory.mktemp("models") / "tiny-timm")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """The image corpus of labelq.testing.make_corpus: ``.folder``, ``.expected``, ``.valid``, ``.broken``."""
    folder = tmp_path_factory.mktemp("corpus")
    return Corpus(folder=folder, expected=make_corpus(folder))
