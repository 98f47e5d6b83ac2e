"""End-to-end fixtures: real `labelq` processes against the session's servers.

Two parts: ``labelq run`` helpers (``RUN_ENV``, ``labelq()``, ``mixed_folder``,
``expected_outcomes``; used by test_run_cli.py) and the distributed-mode fixtures
(workers, Redis databases, buckets; used by test_distributed.py and
test_reliability.py).

Workers are expensive to start (torch, transformers, a model load: ~8 s here), so
test modules start theirs once (``module_procs``) and tests share them; anything a
test starts itself goes through ``procs`` and is stopped when the test ends,
failed or not. Each module gets a Redis database of its own on the session's
redis-server (``redis_db``), so its workers never see another module's queue, and
a bucket of its own on the moto server (``module_bucket``).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from labelq.testing import CORPUS_MAX_PIXELS, VIT_LABELS, VIT_PROCESSOR, make_photos
from tests.support.moto import fresh_bucket
from tests.support.procs import HOST
from tests.support.redis import RedisServer
from tests.support.workers import LABELQ, Procs, by_key, cli, read_jsonl

# ---------------------------------------------------------------- labelq run (test_run_cli.py)

# Settings every `labelq run` test shares: CPU, and the pixel limit the corpus expectations assume.
RUN_ENV = {"LABELQ_DEVICE": "cpu", "LABELQ_MAX_PIXELS": str(CORPUS_MAX_PIXELS)}


@dataclass(frozen=True)
class Result:
    """A finished `labelq` command."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def flat_stdout(self) -> str:
        """stdout with every run of whitespace made one space (rich wraps long lines at 80 columns)."""
        return " ".join(self.stdout.split())


def labelq(*args: str, cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 300) -> Result:
    """Run ``labelq ARGS`` in ``cwd`` with the session's environment (no LABELQ_* of the caller) plus ``env``."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("LABELQ_")}
    full.update({"OMP_NUM_THREADS": "1", **(env or {})})
    proc = subprocess.run([LABELQ, *args], cwd=cwd, env=full, capture_output=True, text=True, timeout=timeout,
                          check=False)
    return Result(proc.returncode, proc.stdout, proc.stderr)


# Real photos (JPEG colour, PNG grey) shipped with the repo, with their LICENSES.md.
PHOTOS = Path(__file__).resolve().parents[2] / "examples" / "photos"


def _photo_names() -> list[str]:
    return sorted(p.name for p in PHOTOS.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


@pytest.fixture(scope="session")
def expected_outcomes(corpus: Any) -> dict[str, str]:
    """``{filename: "ok" or error kind}`` of every image in ``mixed_folder``."""
    return {**corpus.expected, **dict.fromkeys(_photo_names(), "ok")}


@pytest.fixture(scope="session")
def mixed_folder(corpus: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The corpus and the real example photos, copied, plus their LICENSES.md that no image suffix matches."""
    folder = tmp_path_factory.mktemp("mixed")
    for name in corpus.expected:
        shutil.copy2(corpus.folder / name, folder / name)
    for name in [*_photo_names(), "LICENSES.md"]:
        shutil.copy2(PHOTOS / name, folder / name)
    assert not set(corpus.expected) & set(_photo_names())
    return folder


# ---------------------------------------------------------------- distributed mode

_DBS = itertools.count(1)  # db 0 is the `redis_url` fixture's


@dataclass
class RedisDB:
    """One database of a redis-server: its URL and a client."""

    url: str
    client: Any

    def flush(self) -> None:
        self.client.flushdb()


@contextlib.contextmanager
def _database(server: RedisServer) -> Iterator[RedisDB]:
    import redis

    server.start()
    db = next(_DBS)
    if db > 15:
        pytest.fail("more e2e Redis databases than the server has (16)")
    client = redis.Redis(host=HOST, port=server.port, db=db, socket_timeout=10)
    client.flushdb()
    try:
        yield RedisDB(f"redis://{HOST}:{server.port}/{db}", client)
    finally:
        with contextlib.suppress(Exception):
            client.flushdb()
        client.close()


@pytest.fixture(scope="module")
def redis_db(redis_server: RedisServer) -> Iterator[RedisDB]:
    """A database of the session's redis-server for one module (flushed before and after)."""
    with _database(redis_server) as db:
        yield db


@pytest.fixture(scope="module")
def second_db(redis_server: RedisServer) -> Iterator[RedisDB]:
    """Another module database, for workers that must not share ``redis_db``'s queue."""
    with _database(redis_server) as db:
        yield db


@pytest.fixture(scope="module")
def module_procs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Procs]:
    """Processes shared by a module's tests, stopped when the module is done."""
    with Procs(tmp_path_factory.mktemp("module-procs")) as procs:
        yield procs


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    """Processes of one test, stopped at its end; their logs are printed if it fails."""
    p = Procs(tmp_path / "procs")
    try:
        yield p
    finally:
        p.close()
        if p.items:
            print(p.logs())  # shown by pytest only when the test failed


@pytest.fixture(scope="module")
def module_bucket(s3_client: Any) -> Iterator[str]:
    """A bucket for one module; emptied and deleted afterwards."""
    with fresh_bucket(s3_client, "labelq-e2e") as name:
        yield name


def put_objects(s3_client: Any, bucket: str, objects: Mapping[str, bytes], **extra: Any) -> dict[str, str]:
    """Upload ``{key: bytes}`` (8 at a time); returns ``{uri: etag}``."""

    def put(item: tuple[str, bytes]) -> tuple[str, str]:
        key, data = item
        resp = s3_client.put_object(Bucket=bucket, Key=key, Body=data, **extra)
        return f"s3://{bucket}/{key}", resp["ETag"].strip('"')

    with ThreadPoolExecutor(8) as pool:
        return dict(pool.map(put, objects.items()))


@pytest.fixture(scope="session")
def photo_bytes(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """900 distinct small textured JPEGs (160x120, a few KB each), made once."""
    folder = tmp_path_factory.mktemp("photos")
    return [p.read_bytes() for p in make_photos(folder, 900, size=(160, 120), seed=7)]


@pytest.fixture(scope="session")
def corpus_bytes(corpus: Any) -> dict[str, bytes]:
    """Every file of the shared corpus, by name."""
    return {name: (corpus.folder / name).read_bytes() for name in corpus.expected}


@pytest.fixture(scope="session")
def slow_vit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random ViT-S/16 (384 wide, 12 layers, ~22 M parameters) laid out like the default model.

    About 0.1 s per image on one core: slow enough that a chunk of 16 takes a couple
    of seconds, so a test can kill a worker in the middle of one.
    """
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    path = tmp_path_factory.mktemp("models") / "slow-vit"
    config = ViTConfig(
        image_size=224, patch_size=16, hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
        intermediate_size=1536, qkv_bias=True, id2label=dict(VIT_LABELS),
        label2id={v: k for k, v in VIT_LABELS.items()},
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ViTForImageClassification(config).save_pretrained(path)
    ViTImageProcessor(**VIT_PROCESSOR).save_pretrained(path)
    return path


def jpeg(size: tuple[int, int], *, noise: bool = False, quality: int = 90, seed: int = 0) -> bytes:
    """A JPEG of ``size`` (width, height): flat grey, or noise (big files)."""
    rng = np.random.default_rng(seed)
    width, height = size
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8) if noise else np.full((height, width, 3), 128, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png(size: tuple[int, int]) -> bytes:
    """A flat PNG of ``size``: many pixels in few bytes."""
    buf = io.BytesIO()
    Image.new("L", size, 77).save(buf, "PNG")
    return buf.getvalue()


class PasswordRedis(RedisServer):
    """A private redis-server that wants a password (``--requirepass``)."""

    def __init__(self, folder: Path, password: str) -> None:
        super().__init__(folder)
        self.password = password

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@{HOST}:{self.port}/0"

    def argv(self) -> list[str]:
        return [*super().argv(), "--requirepass", self.password]

    def client(self) -> Any:
        import redis

        return redis.Redis(host=HOST, port=self.port, db=0, password=self.password, socket_connect_timeout=2,
                           socket_timeout=5)


@pytest.fixture
def password_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PasswordRedis]:
    """A redis-server with ``--requirepass`` (a random password), for one test."""
    import secrets

    server = PasswordRedis(tmp_path_factory.mktemp("redis-auth"), "Pw" + secrets.token_hex(12))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def job_hash(client: Any, job: str) -> dict[str, str]:
    """The job's state hash, decoded (see labelq.keys)."""
    from labelq import keys

    return {k.decode(): v.decode() for k, v in client.hgetall(keys.job(job)).items()}


# ---------------------------------------------------------------- jobs driven by the CLI (faults, heal, HA, scale)


def write_photos(folder: Path, data: list[bytes], prefix: str = "p") -> list[Path]:
    """``data`` as ``{prefix}_0000.jpg``, ``{prefix}_0001.jpg``, … in ``folder`` (made if missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, blob in enumerate(data):
        path = folder / f"{prefix}_{i:04d}.jpg"
        path.write_bytes(blob)
        out.append(path)
    return out


def file_uris(paths: list[Path]) -> set[str]:
    return {p.resolve().as_uri() for p in paths}


def job_status(env: dict[str, str], job: str, cwd: Path) -> dict[str, Any]:
    """``labelq status JOB --json``."""
    import json

    return json.loads(cli(["status", job, "--json"], env, cwd=cwd).check().stdout)


def export_job(env: dict[str, str], job: str, cwd: Path) -> list[dict[str, Any]]:
    """``labelq export JOB`` to a fresh file, read back."""
    out = cwd / f"{job}-{time.monotonic_ns()}.jsonl"
    cli(["export", job, "-o", str(out)], env, cwd=cwd).check()
    return read_jsonl(out)


def once_each(records: list[dict[str, Any]], uris: set[str], model: str) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """One record per object for ``model``, none twice and nothing else; the records by (uri, model)."""
    pairs = by_key(records)
    twice = {k: len(v) for k, v in pairs.items() if len(v) > 1}
    assert not twice, f"records written twice: {twice}"
    assert set(pairs) == {(u, model) for u in uris}
    return pairs


def broken_copy(model: Path, where: Path) -> Path:
    """The model's folder with its weights replaced by garbage: the config resolves, the load fails."""
    shutil.copytree(model, where)
    (where / "model.safetensors").write_bytes(b"\x00\x01 not a safetensors file" * 10)
    return where
