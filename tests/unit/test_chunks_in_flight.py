"""Several chunks in flight through one engine (LABELQ_CHUNKS_IN_FLIGHT).

A bulk worker's task threads share one engine: their fetches and decodes share the
pools, one batch is on the models at a time, and a chunk that needs other models
waits until the chunks inside have finished. Each run still yields exactly its own
records.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labelq.config import Settings
from labelq.engine import Engine
from labelq.launcher import Slot, child_command
from labelq.models import Classifier, load_classifier
from labelq.objects import ObjectRef, Stores
from labelq.records import Record
from labelq.sources import iter_source, parse_source
from labelq.testing import CORPUS_MAX_PIXELS, Corpus


def _settings(**kw: Any) -> Settings:
    return Settings(device="cpu", max_pixels=CORPUS_MAX_PIXELS, fetch_threads=4, decode_threads=2, batch_size=4, **kw)


class OnTheModel:
    """A forward pre/post hook pair: how many batches were on the model at once, at most."""

    def __init__(self, clf: Classifier) -> None:
        self.now = self.most = self.batches = 0
        self.lock = threading.Lock()
        self.handles = [clf.model.register_forward_pre_hook(self.enter), clf.model.register_forward_hook(self.leave)]

    def enter(self, *_: Any) -> None:
        with self.lock:
            self.now += 1
            self.batches += 1
            self.most = max(self.most, self.now)
        time.sleep(0.01)  # long enough for another thread to try its way in

    def leave(self, *_: Any) -> None:
        with self.lock:
            self.now -= 1

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@pytest.fixture(scope="module")
def vit(tiny_vit: Path) -> Classifier:
    return load_classifier(str(tiny_vit), _settings())


@pytest.fixture(scope="module")
def mnv3(tiny_timm: Path) -> Classifier:
    return load_classifier(str(tiny_timm), _settings())


@pytest.fixture
def refs(corpus: Corpus) -> Iterator[tuple[list[ObjectRef], Stores]]:
    source = parse_source(str(corpus.folder))
    stores = Stores(_settings(), local_root=source.root)
    yield list(iter_source(source, stores)), stores


def _run_in_threads(engine: Engine, clf: Classifier, parts: list[list[ObjectRef]]) -> list[list[Record]]:
    out: list[list[Record]] = [[] for _ in parts]
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            with engine.using([clf]):
                for batch in engine.run(parts[i], job=f"j{i}"):
                    out[i].extend(batch)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(parts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    return out


@pytest.mark.parametrize("overlap", [False, True], ids=["plain", "overlap"])
def test_concurrent_runs_label_like_one_run_with_one_batch_on_the_model_at_a_time(
        vit: Classifier, corpus: Corpus, refs: tuple[list[ObjectRef], Stores], overlap: bool) -> None:
    objects, stores = refs
    with Engine([vit], stores, _settings(), worker="t") as engine:
        engine.overlap = overlap
        alone = {r.uri: r for batch in engine.run(objects) for r in batch}
        watch = OnTheModel(vit)
        try:
            parts = [objects[0::3], objects[1::3], objects[2::3]]
            got = _run_in_threads(engine, vit, parts)
        finally:
            watch.remove()
    assert watch.batches >= 3 and watch.most == 1  # the runs' batches took turns on the model
    for part, records in zip(parts, got, strict=True):
        assert sorted(r.uri for r in records) == sorted(o.uri for o in part)  # its own objects, each once
        assert {r.job for r in records} == {records[0].job}
    for record in (r for records in got for r in records):
        a = alone[record.uri]
        assert (record.status, record.error_kind, record.label) == (a.status, a.error_kind, a.label), record.uri
        if record.ok:
            assert record.score == pytest.approx(a.score, abs=1e-5)
    assert len(alone) == len(corpus.expected)


def test_a_run_with_other_models_waits_for_the_runs_inside_and_later_arrivals_wait_for_it(
        vit: Classifier, mnv3: Classifier, refs: tuple[list[ObjectRef], Stores]) -> None:
    _, stores = refs
    events: list[str] = []
    release = {name: threading.Event() for name in ("a", "b", "c")}

    with Engine([vit], stores, _settings(), worker="t") as engine:

        def hold(name: str, clf: Classifier) -> None:
            with engine.using([clf]):
                events.append(f"{name} in with {engine.classifiers[0].name.rsplit('/', 1)[-1]}")
                release[name].wait(30)
            events.append(f"{name} out")

        a = threading.Thread(target=hold, args=("a", vit))
        a.start()
        _wait(lambda: events == ["a in with " + _short(vit)], events)
        b = threading.Thread(target=hold, args=("b", mnv3))  # other models: waits for a
        b.start()
        time.sleep(0.2)
        c = threading.Thread(target=hold, args=("c", vit))  # a's models, but after b asked to switch
        c.start()
        time.sleep(0.2)
        assert events == ["a in with " + _short(vit)]
        release["a"].set()
        _wait(lambda: f"b in with {_short(mnv3)}" in events)
        time.sleep(0.2)
        assert f"c in with {_short(vit)}" not in events  # c waits for b, which now holds the other model
        release["b"].set()
        _wait(lambda: f"c in with {_short(vit)}" in events)
        release["c"].set()
        for t in (a, b, c):
            t.join(10)
    assert events == [f"a in with {_short(vit)}", "a out", f"b in with {_short(mnv3)}", "b out",
                      f"c in with {_short(vit)}", "c out"]


def test_runs_with_the_same_models_are_inside_together(vit: Classifier, refs: tuple[list[ObjectRef], Stores]) -> None:
    _, stores = refs
    inside = threading.Barrier(3, timeout=10)  # breaks (and raises) unless all three are inside at once
    with Engine([vit], stores, _settings(), worker="t") as engine:

        def one() -> None:
            with engine.using([vit]):
                inside.wait()

        threads = [threading.Thread(target=one) for _ in range(2)]
        for t in threads:
            t.start()
        with engine.using([vit]):
            inside.wait()
        for t in threads:
            t.join(10)


def test_the_bulk_worker_runs_chunks_in_flight_task_threads() -> None:
    slot = Slot("cpu", "cpu", "")
    argv = child_command(slot, Settings(chunks_in_flight=3), "INFO")
    assert argv[argv.index("--pool") + 1] == "threads" and argv[argv.index("--concurrency") + 1] == "3"
    assert argv[argv.index("-Q") + 1] == "labelq"
    one = child_command(slot, Settings(chunks_in_flight=1), "INFO")
    assert one[one.index("--pool") + 1] == "solo" and "--concurrency" not in one


def _short(clf: Classifier) -> str:
    return clf.name.rsplit("/", 1)[-1]


def _wait(predicate: Any, seen: Any = None, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; seen {seen}")
        time.sleep(0.01)

