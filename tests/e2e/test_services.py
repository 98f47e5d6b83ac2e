"""One place decides which Redis and which record store (labelq/services.py), for every process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis

from labelq import keys
from tests.e2e.conftest import export_job, file_uris, once_each, write_photos
from tests.support.workers import Procs, cli, labelq_env

pytestmark = pytest.mark.slow


def test_records_in_a_second_redis_are_written_there_and_read_from_there(
        tmp_path: Path, redis_factory: Any, procs: Procs, tiny_vit: Path, photo_bytes: list[bytes]) -> None:
    """LABELQ_REDIS_URL=A (jobs, broker) and LABELQ_RESULTS_URL=redis://B: the worker writes the records to B,
    and export, status --errors and ping read B (before: the worker wrote to A, export read B, and came back empty)."""
    a, b = redis_factory(), redis_factory()
    paths = write_photos(tmp_path / "in", photo_bytes[:10])
    (tmp_path / "in" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    env = labelq_env(broker=a.url, redis=a.url, results=b.url, models=[tiny_vit], local_root=str(tmp_path),
                     chunk_size=8, batch_size=8)
    procs.worker(env)
    cli(["enqueue", str(tmp_path / "in"), "--job", "J", "--wait"], env, cwd=tmp_path, timeout=180).check()
    records = export_job(env, "J", tmp_path)
    once_each(records, file_uris([*paths, tmp_path / "in" / "broken.jpg"]), str(tiny_vit))
    with redis.Redis.from_url(a.url) as ca, redis.Redis.from_url(b.url) as cb:
        assert list(ca.scan_iter(keys.records("*"))) == []
        assert cb.hlen(keys.records(str(tiny_vit))) == 11
        assert cb.hlen(keys.job_records("J", str(tiny_vit))) == 11
        assert ca.exists(keys.job("J")) and not cb.exists(keys.job("J"))
    errors = cli(["status", "J", "--errors"], env, cwd=tmp_path).check().stdout
    assert "broken.jpg" in errors
    ping = cli(["ping", "--no-workers"], env, cwd=tmp_path).check().stdout
    assert "results" in ping and "ok" in ping
