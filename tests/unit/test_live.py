"""live.py: the two batching knobs, and the Batcher over a real Engine and a real tiny ViT."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from labelq.config import Settings, load_settings
from labelq.engine import Engine
from labelq.errors import UsageError
from labelq.launcher import Slot, child_command, live_concurrency
from labelq.live import Batcher, validate_batching
from labelq.models import Classifier, load_classifier
from labelq.objects import ObjectRef, Stores, file_uri
from labelq.records import Record
from labelq.testing import CORPUS_MAX_PIXELS, Corpus

# ------------------------------------------------------------------ validate_batching


def test_sensible_knobs_pass() -> None:
    validate_batching(16, 0.05, 32)
    validate_batching(1, 10, 2)


def test_max_batch_size_under_1_says_which_knob() -> None:
    with pytest.raises(UsageError, match=r"max_batch_size must be at least 1 \(LABELQ_MAX_BATCH_SIZE\)"):
        validate_batching(0, 0.05, 32)


@pytest.mark.parametrize("timeout", [0, -0.5, 10.5])
def test_batch_timeout_outside_0_10_says_which_knob_and_gives_an_example(timeout: float) -> None:
    with pytest.raises(UsageError, match=r"batch_timeout must be between 0 and 10 seconds \(LABELQ_BATCH_TIMEOUT\)"):
        validate_batching(16, timeout, 32)


@pytest.mark.parametrize("concurrency", [8, 16])
def test_concurrency_must_exceed_max_batch_size_and_says_why(concurrency: int) -> None:
    with pytest.raises(UsageError) as info:
        validate_batching(16, 0.05, concurrency)
    message = str(info.value)
    assert f"concurrency {concurrency} must exceed max_batch_size 16" in message
    assert "a batch never fills" in message


def test_the_live_worker_runs_twice_max_batch_size_threads_on_the_live_queue() -> None:
    settings = Settings(max_batch_size=5, batch_timeout=0.2)
    assert live_concurrency(settings) == 10
    argv = child_command(Slot("live-cpu", "cpu", ""), settings, "INFO", live=True)
    assert argv[argv.index("--pool") + 1] == "threads"
    assert argv[argv.index("--concurrency") + 1] == "10"
    assert argv[argv.index("-Q") + 1] == "labelq.live"


def test_prefetch_window_of_the_live_worker_exceeds_the_flush_size() -> None:
    """celery-batches' first trap: prefetch (multiplier x concurrency) must exceed the flush size."""
    from labelq.worker import make_app

    settings = Settings(max_batch_size=16)
    prefetch = make_app(settings).conf.worker_prefetch_multiplier * live_concurrency(settings)
    assert prefetch > settings.max_batch_size


@pytest.mark.parametrize(("knob", "value"), [("batch_timeout", 0), ("batch_timeout", 11), ("max_batch_size", 0)])
def test_settings_refuse_bad_knobs_naming_the_variable(knob: str, value: float) -> None:
    with pytest.raises(UsageError, match=f"LABELQ_{knob.upper()}"):
        load_settings(**{knob: value})


# ------------------------------------------------------------------ Batcher


def settings() -> Settings:
    return Settings(device="cpu", max_pixels=CORPUS_MAX_PIXELS, fetch_threads=4, decode_threads=2)


@pytest.fixture(scope="module")
def vit(tiny_vit: Path) -> Classifier:
    return load_classifier(str(tiny_vit), settings())


class Writes:
    """The Batcher's ``write``: remembers each call's job and records, and when it came."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[Record], float]] = []
        self.lock = threading.Lock()
        self.fail: Exception | None = None

    def __call__(self, job: str, records: list[Record]) -> None:
        with self.lock:
            self.calls.append((job, list(records), time.monotonic()))
        if self.fail is not None:
            raise self.fail

    def sizes(self) -> list[int]:
        return [len(records) for _, records, _ in self.calls]


@pytest.fixture
def make_batcher(vit: Classifier, corpus: Corpus) -> Iterator[Callable[..., tuple[Batcher, Writes]]]:
    made: list[tuple[Batcher, Engine]] = []

    def make(*, max_batch_size: int, batch_timeout: float) -> tuple[Batcher, Writes]:
        engine = Engine([vit], Stores(settings(), local_root=corpus.folder), settings(), worker="test")
        writes = Writes()
        batcher = Batcher(engine, {vit.name: vit}.__getitem__, writes, max_batch_size=max_batch_size,
                          batch_timeout=batch_timeout)
        made.append((batcher, engine))
        return batcher, writes

    try:
        yield make
    finally:
        for batcher, engine in made:
            batcher.close()
            engine.close()


def ref(corpus: Corpus, name: str) -> ObjectRef:
    return ObjectRef(file_uri(corpus.folder / name))


def results(futures: list[Future[list[Record]]], timeout: float = 60) -> list[list[Record]]:
    return [f.result(timeout=timeout) for f in futures]


def test_a_batch_flushes_as_soon_as_max_batch_size_items_are_ready(
    make_batcher: Callable[..., tuple[Batcher, Writes]], corpus: Corpus, vit: Classifier
) -> None:
    # batch_timeout is the largest allowed: a flush before it can only be the size trigger.
    batcher, writes = make_batcher(max_batch_size=4, batch_timeout=10)
    names = corpus.valid[:8]
    start = time.monotonic()
    futures = [batcher.submit("j", ref(corpus, n), [vit.name]) for n in names]
    got = results(futures, timeout=30)
    elapsed = time.monotonic() - start
    assert writes.sizes() == [4, 4]
    assert elapsed < 8, f"8 items took {elapsed:.1f}s: the batches waited for batch_timeout instead of flushing at 4"
    for name, recs in zip(names, got, strict=True):
        assert [r.uri for r in recs] == [ref(corpus, name).uri]  # each task gets its own record back
        assert recs[0].ok and recs[0].model == vit.name and recs[0].label in ("normal", "nsfw")
        assert recs[0].job == "j" and recs[0].worker == "test"


def test_a_lone_item_flushes_alone_after_about_batch_timeout(
    make_batcher: Callable[..., tuple[Batcher, Writes]], corpus: Corpus, vit: Classifier
) -> None:
    timeout = 0.5
    batcher, writes = make_batcher(max_batch_size=8, batch_timeout=timeout)
    start = time.monotonic()
    [recs] = results([batcher.submit("j", ref(corpus, "rgb.png"), [vit.name])])
    elapsed = time.monotonic() - start
    assert writes.sizes() == [1]
    assert recs[0].ok
    # It waited for company (the deadline starts once decoded, so never less than the timeout)...
    assert elapsed >= timeout * 0.95, f"flushed after {elapsed:.2f}s, before batch_timeout {timeout}s"
    # ...and not much more: a generous bound for a busy 2-core machine, not a timing benchmark.
    assert elapsed < timeout + 3.0, f"a lone item took {elapsed:.2f}s with batch_timeout {timeout}s"


def test_items_arriving_within_the_timeout_share_one_batch(
    make_batcher: Callable[..., tuple[Batcher, Writes]], corpus: Corpus, vit: Classifier
) -> None:
    batcher, writes = make_batcher(max_batch_size=8, batch_timeout=1.0)
    first = batcher.submit("j", ref(corpus, "rgb.png"), [vit.name])
    time.sleep(0.2)
    second = batcher.submit("j", ref(corpus, "photo.bmp"), [vit.name])
    results([first, second])
    assert writes.sizes() == [2]


def test_a_broken_file_gets_its_error_record_and_its_batch_mates_are_labelled(
    make_batcher: Callable[..., tuple[Batcher, Writes]], corpus: Corpus, vit: Classifier
) -> None:
    batcher, writes = make_batcher(max_batch_size=5, batch_timeout=5)
    good = ["baseline.jpg", "rgb.png", "photo.webp"]
    bad = {"truncated.jpg": "corrupt", "missing.jpg": "not_found"}
    names = [good[0], "truncated.jpg", good[1], "missing.jpg", good[2]]
    got = dict(zip(names, results([batcher.submit("j", ref(corpus, n), [vit.name]) for n in names]), strict=True))
    assert writes.sizes() == [5]  # one batch: the broken items did not split or fail it
    for name in good:
        [rec] = got[name]
        assert rec.ok, f"{name}: {rec.error}"
        assert rec.label in ("normal", "nsfw") and 0.0 <= (rec.score or -1) <= 1.0
    for name, kind in bad.items():
        [rec] = got[name]
        assert rec.status == "error" and rec.error_kind == kind and rec.error
    written = {r.uri: r for _, records, _ in writes.calls for r in records}
    assert set(written) == {ref(corpus, n).uri for n in names}  # every item's record was written


def test_items_of_different_jobs_in_one_batch_are_written_per_job(
    make_batcher: Callable[..., tuple[Batcher, Writes]], corpus: Corpus, vit: Classifier
) -> None:
    batcher, writes = make_batcher(max_batch_size=4, batch_timeout=5)
    jobs = ["a", "b", "a", "b"]
    got = results([batcher.submit(j, ref(corpus, n), [vit.name]) for j, n in zip(jobs, corpus.valid, strict=False)])
    assert sorted((job, len(records)) for job, records, _ in writes.calls) == [("a", 2), ("b", 2)]
    assert [recs[0].job for recs in got] == jobs


def test_a_failed_write_fails_every_task_of_that_batch(
    make_batcher: Callable[..., tuple[Batcher, Writes]], corpus: Corpus, vit: Classifier
) -> None:
    """No task may be acknowledged for a record that was not written (Celery redelivers it)."""
    batcher, writes = make_batcher(max_batch_size=2, batch_timeout=0.3)
    writes.fail = ConnectionError("redis went away")
    futures = [batcher.submit("j", ref(corpus, n), [vit.name]) for n in corpus.valid[:2]]
    for f in futures:
        with pytest.raises(ConnectionError, match="redis went away"):
            f.result(timeout=30)
    writes.fail = None
    [recs] = results([batcher.submit("j", ref(corpus, corpus.valid[0]), [vit.name])])  # the flusher lives on
    assert recs[0].ok


def test_close_stops_the_flusher_thread(make_batcher: Callable[..., tuple[Batcher, Writes]]) -> None:
    batcher, _ = make_batcher(max_batch_size=2, batch_timeout=0.05)
    thread: Any = batcher._thread
    assert thread.is_alive()
    batcher.close()
    assert not thread.is_alive()
