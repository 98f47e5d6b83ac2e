"""A real worker's Prometheus endpoint and `labelq ping`, as a compose healthcheck uses them.

One ``labelq worker --devices cpu`` (tiny ViT, ``LABELQ_METRICS_PORT`` on a free port)
serves the module. It labels the test corpus (18 images, 6 broken files) through
``labelq enqueue --wait``; /metrics, scraped over HTTP, must count exactly what the
export holds: records by model, status and label, errors by kind, the stage
histograms, the model's load time, the chunks. With its consumer paused, the
autoscaling gauges must show the waiting chunks and their age, then drop to zero.
``labelq ping`` must exit 0 naming the worker's node, device and model, and
non-zero for a dead broker or a node that does not exist.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from labelq.testing import CORPUS_MAX_PIXELS, Corpus
from tests.support.procs import free_port
from tests.support.redis import RedisServer
from tests.support.workers import Procs, Worker, cli, labelq_env

CHUNK = 10
QUEUE = "labelq"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    """GET /metrics and parse it: (sample name, labels) → value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; a missing sample is 0 (a counter never incremented is not exported)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def labelled(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


@pytest.fixture(scope="module")
def setup(redis_server: RedisServer, tiny_vit: Path, corpus: Corpus,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A worker with metrics on a free port, on the session's Redis (flushed before and after)."""
    redis_server.start()
    with redis_server.client() as client:
        client.flushdb()
    port = free_port()
    env = labelq_env(broker=redis_server.url, models=[tiny_vit], local_root=corpus.folder, metrics_port=port,
                     max_pixels=CORPUS_MAX_PIXELS, chunk_size=CHUNK, batch_size=8, log_level="INFO")
    folder = tmp_path_factory.mktemp("metrics-ping")
    with Procs(folder) as procs:
        worker = procs.worker(env, timeout=180)
        try:
            yield {"env": env, "port": port, "worker": worker, "procs": procs, "model": str(tiny_vit),
                   "corpus": corpus, "cwd": folder, "redis": redis_server}
        finally:
            with redis_server.client() as client:
                client.flushdb()


def run(args: list[str], setup: dict[str, Any], *, timeout: float = 120, **env: str) -> Any:
    return cli(args, {**setup["env"], **env}, timeout=timeout, cwd=setup["cwd"])


def exported(setup: dict[str, Any], job: str) -> list[dict[str, Any]]:
    out = run(["export", job, "--format", "jsonl"], setup).check()
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def test_metrics_count_what_was_labelled(setup: dict[str, Any]) -> None:
    port, model, corpus = setup["port"], setup["model"], setup["corpus"]
    before = scrape(port)
    assert value(before, "labelq_model_load_seconds", model=model) > 0  # set at start-up, before any chunk
    assert value(before, "labelq_queue_depth", queue=QUEUE) == 0

    job = "metrics-corpus"
    run(["enqueue", str(corpus.folder), "--job", job, "--wait"], setup).check()
    after = scrape(port)
    records = exported(setup, job)
    n = len(corpus.expected)
    assert len(records) == n == 24

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # images by model, status and top-1 label: exactly the export's counts
    ok_labels = Counter(r["label"] for r in records if r["status"] == "ok")
    assert sum(ok_labels.values()) == len(corpus.valid) == 18
    for label, count in ok_labels.items():
        assert delta("labelq_images_total", model=model, status="ok", label=label) == count, label
    assert delta("labelq_images_total", model=model, status="error", label="") == len(corpus.broken) == 6
    images = labelled(after, "labelq_images_total")
    assert sum(images.values()) - sum(labelled(before, "labelq_images_total").values()) == n
    assert {dict(k)["model"] for k in images} == {model}
    # errors by kind, as the corpus promises and the export says
    kinds = Counter(r["error_kind"] for r in records if r["status"] == "error")
    assert kinds == Counter(corpus.broken.values())
    for kind, count in kinds.items():
        assert delta("labelq_errors_total", model=model, kind=kind) == count, kind
    # stage histograms: fetch and decode once per object, infer per batch of the valid ones, writes per batch
    assert delta("labelq_stage_seconds_count", stage="fetch") == n
    assert delta("labelq_stage_seconds_count", stage="decode") == n
    infers = delta("labelq_stage_seconds_count", stage="infer")
    assert infers >= 3  # three chunks of <= 10 objects, each with valid images
    assert delta("labelq_batch_size_count") == infers
    assert delta("labelq_batch_size_sum") == 18  # every valid image went through the model once
    assert delta("labelq_stage_seconds_count", stage="write") >= 3
    for stage in ("fetch", "decode", "infer", "write"):
        assert delta("labelq_stage_seconds_sum", stage=stage) > 0, stage
        assert value(after, "labelq_stage_seconds_bucket", stage=stage, le="+Inf") == value(
            after, "labelq_stage_seconds_count", stage=stage)
    assert delta("labelq_chunks_total") == -(-n // CHUNK) == 3
    # nothing left waiting: the autoscalers' signals are at zero
    assert value(after, "labelq_queue_depth", queue=QUEUE) == 0
    with setup["redis"].client() as client:
        stale = client.zrange("labelq:chunks", 0, -1)
    assert value(after, "labelq_waiting_chunks") == 0, f"chunks listed as waiting after the job is done: {stale}"
    assert value(after, "labelq_oldest_waiting_chunk_seconds") == 0


def test_queue_gauges_show_waiting_chunks_for_autoscalers(setup: dict[str, Any]) -> None:
    """With the worker's consumer paused, a job's chunks wait: depth, count and age are visible."""
    from labelq.config import load_settings
    from labelq.worker import make_app

    port, worker, corpus = setup["port"], setup["worker"], setup["corpus"]
    assert isinstance(worker, Worker)
    app = make_app(load_settings(broker_url=setup["env"]["LABELQ_BROKER_URL"]))
    before = scrape(port)
    replies = app.control.cancel_consumer(QUEUE, destination=[worker.node], reply=True, timeout=10)
    assert replies and worker.node in replies[0], replies
    try:
        job = "metrics-waiting"
        run(["enqueue", str(corpus.folder), "--job", job, "--force"], setup).check()
        time.sleep(1.1)
        waiting = scrape(port)
        assert value(waiting, "labelq_queue_depth", queue=QUEUE) == 3
        assert value(waiting, "labelq_waiting_chunks") == 3
        assert value(waiting, "labelq_oldest_waiting_chunk_seconds") >= 1.0
    finally:
        app.control.add_consumer(QUEUE, destination=[worker.node], reply=True, timeout=10)
    run(["status", job, "--follow"], setup).check()
    after = scrape(port)
    assert value(after, "labelq_queue_depth", queue=QUEUE) == 0
    assert value(after, "labelq_waiting_chunks") == 0
    assert value(after, "labelq_oldest_waiting_chunk_seconds") == 0
    assert value(after, "labelq_chunks_total") - value(before, "labelq_chunks_total") == 3


def test_ping_names_the_worker_its_device_and_model(setup: dict[str, Any]) -> None:
    worker, model, corpus = setup["worker"], setup["model"], setup["corpus"]
    out = run(["ping", "--node", worker.node, "--source", str(corpus.folder)], setup).check()
    text = " ".join(out.stdout.split())
    assert "ok broker" in text and "ok job state (redis)" in text and "ok storage" in text
    assert "ok workers: 1 answering" in text
    assert f"{worker.node}: device cpu, models {model}" in text
    assert "DOWN" not in text
    plain = run(["ping"], setup).check()  # any worker will do
    assert worker.node in plain.stdout


def test_ping_fails_for_a_node_that_does_not_exist(setup: dict[str, Any]) -> None:
    out = run(["ping", "--node", "gpu7@nowhere", "--timeout", "2"], setup)
    assert out.returncode == 1, out
    text = " ".join(out.stdout.split())
    assert "DOWN workers: no worker answered within 2s (gpu7@nowhere)" in text
    assert "ok broker" in text  # only the missing node is down


def test_ping_fails_for_a_dead_broker(setup: dict[str, Any]) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    out = run(["ping", "--timeout", "2"], setup, timeout=90, LABELQ_BROKER_URL=dead)
    assert out.returncode != 0, out
    text = " ".join(out.stdout.split())
    assert f"DOWN broker: {dead}" in text and "DOWN job state (redis)" in text
    # the same without asking for workers: a broker healthcheck for the producer side
    out = run(["ping", "--no-workers"], setup, timeout=90, LABELQ_BROKER_URL=dead)
    assert out.returncode != 0 and "DOWN broker" in out.stdout, out
    assert run(["ping", "--no-workers"], setup).check().returncode == 0
