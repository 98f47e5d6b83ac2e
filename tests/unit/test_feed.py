"""Decode processes (labelq.feed) and the engine with LABELQ_DECODE_PROCESSES: same pixels, per-item errors."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from labelq.config import Settings
from labelq.errors import LabelqError
from labelq.feed import DecodePool, PoolBroken
from labelq.images import Geometry, Limits, decode, fit
from labelq.objects import Stores, file_uri
from labelq.sources import iter_source, parse_source
from labelq.testing import CORPUS_MAX_PIXELS, Corpus

# A timm-style shortest-edge + crop geometry and a transformers-style fixed resize: two views, one decode.
GEOMETRIES = [Geometry(None, 256, (224, 224), "bicubic", crop_round=True), Geometry((224, 224), None, None, "bilinear")]
LIMITS = Limits(50 << 20, CORPUS_MAX_PIXELS, frozenset({"JPEG", "MPO", "PNG", "WEBP", "GIF", "TIFF", "BMP"}))


@pytest.fixture(scope="module")
def pool() -> Iterator[DecodePool]:
    with DecodePool(2, LIMITS, GEOMETRIES, slots=6) as p:
        yield p


def _threads_result(data: bytes) -> list[np.ndarray] | str:
    """What the engine's decode threads produce: pixels per geometry, or the error kind."""
    try:
        image = decode(data, LIMITS, draft=GEOMETRIES)
        return [fit(image, g) for g in GEOMETRIES]
    except LabelqError as exc:
        return exc.kind


def _pool_result(future: object) -> list[np.ndarray] | str:
    try:
        pixels, seconds = future.result(timeout=60)  # type: ignore[attr-defined]
    except LabelqError as exc:
        return exc.kind
    assert seconds > 0
    return pixels


def test_processes_give_the_threads_pixels_and_errors(pool: DecodePool, corpus: Corpus, photos: list[Path]) -> None:
    files = sorted(corpus.folder.iterdir()) + photos
    datas = [f.read_bytes() for f in files]
    # more images than slots: the backlog and slot reuse are exercised
    futures = [pool.submit(d) for d in datas]
    for f, data, got in zip(files, datas, [_pool_result(x) for x in futures], strict=True):
        want = _threads_result(data)
        if isinstance(want, str):
            assert got == want, f.name
            if f.name in corpus.expected:
                assert got == corpus.expected[f.name], f.name
        else:
            assert not isinstance(got, str), f"{f.name}: {got}"
            for a, b, g in zip(got, want, GEOMETRIES, strict=True):
                assert a.shape == (*g.out_size, 3) and a.dtype == np.uint8
                assert np.array_equal(a, b), f.name


def test_a_crashed_process_fails_only_its_image(pool: DecodePool, photos: list[Path]) -> None:
    big = max(photos, key=lambda p: p.stat().st_size).read_bytes()
    futures = [pool.submit(big) for _ in range(8)]
    victim = pool._procs[0]
    while not victim.in_flight:  # wait until it holds work
        time.sleep(0.001)
    os.kill(victim.process.pid, signal.SIGKILL)
    kinds = []
    for f in futures:
        got = _pool_result(f)
        kinds.append(got if isinstance(got, str) else "ok")
    assert kinds.count("corrupt") <= 1, kinds  # at most the image it was decoding (it may have just finished)
    assert kinds.count("ok") >= 7
    assert pool.broken is None
    assert all(p.process.is_alive() for p in pool._procs)  # replaced
    assert not isinstance(_pool_result(pool.submit(big)), str)  # and still working


def test_a_pool_whose_processes_cannot_start_gives_up(monkeypatch: pytest.MonkeyPatch, photos: list[Path]) -> None:
    def doomed(self: DecodePool) -> object:  # a process that exits at once, as under an unguarded __main__
        from labelq.feed import _Proc

        parent, child = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(target=os._exit, args=(3,), daemon=True)
        process.start()
        child.close()
        return _Proc(process, parent)

    monkeypatch.setattr(DecodePool, "_spawn", doomed)
    with DecodePool(1, LIMITS, GEOMETRIES, slots=4) as p:
        future = p.submit(photos[0].read_bytes())
        with pytest.raises(PoolBroken, match="__main__"):
            future.result(timeout=60)
        assert p.broken
        with pytest.raises(PoolBroken):
            p.submit(b"x")


def test_pool_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="LABELQ_DECODE_PROCESSES"):
        DecodePool(0, LIMITS, GEOMETRIES)
    with pytest.raises(ValueError, match="geometry"):
        DecodePool(1, LIMITS, [])


# ---------------------------------------------------------------------- through the engine


def _run(engine_settings: Settings, clf: object, folder: Path) -> dict[str, object]:
    from labelq.engine import Engine

    source = parse_source(str(folder))
    stores = Stores(engine_settings, local_root=source.root)
    with Engine([clf], stores, engine_settings, worker="t") as engine:  # type: ignore[list-item]
        refs = list(iter_source(source, stores))
        records = [r for batch in engine.run(refs) for r in batch]
        used_processes = engine._feed is not None and engine._feed._started
    assert len(records) == len(refs)
    out: dict[str, object] = {Path(r.uri).name if not r.uri.startswith("file://") else r.uri.rsplit("/", 1)[-1]: r
                              for r in records}
    out["__processes__"] = used_processes
    return out


def _settings(**kw: object) -> Settings:
    return Settings(device="cpu", max_pixels=CORPUS_MAX_PIXELS, fetch_threads=4, decode_threads=2, batch_size=4,
                    **kw)  # type: ignore[arg-type]


def test_engine_with_decode_processes_labels_like_threads(tiny_vit: Path, corpus: Corpus) -> None:
    from labelq.models import load_classifier

    clf = load_classifier(str(tiny_vit), _settings())
    threads = _run(_settings(), clf, corpus.folder)
    procs = _run(_settings(decode_processes=2), clf, corpus.folder)
    assert procs.pop("__processes__") is True and threads.pop("__processes__") is False
    assert set(procs) == set(threads) == set(corpus.expected)
    for name, expected in corpus.expected.items():
        a, b = procs[name], threads[name]
        if expected == "ok":
            # batch-mates of the broken files are labelled, with the threads' exact scores (same pixels)
            assert a.status == "ok" and a.label == b.label, name  # type: ignore[attr-defined]
            assert a.score == pytest.approx(b.score, abs=1e-6), name  # type: ignore[attr-defined]
        else:
            assert a.status == "error" and a.error_kind == expected == b.error_kind, name  # type: ignore[attr-defined]


def test_engine_keeps_threads_for_the_exact_path(tiny_vit: Path, corpus: Corpus) -> None:
    from labelq.models import load_classifier

    s = _settings(decode_processes=2, fast_decode=False)
    clf = load_classifier(str(tiny_vit), s)
    assert clf.geometry is None
    got = _run(s, clf, corpus.folder)
    assert got.pop("__processes__") is False
    assert sorted(n for n, r in got.items() if r.status == "ok") == corpus.valid  # type: ignore[attr-defined]


def test_engine_falls_back_to_threads_when_processes_cannot_start(
    monkeypatch: pytest.MonkeyPatch, tiny_vit: Path, corpus: Corpus
) -> None:
    from labelq.models import load_classifier

    monkeypatch.setattr(DecodePool, "_spawn", lambda self: (_ for _ in ()).throw(OSError("no processes here")))
    s = _settings(decode_processes=2)
    clf = load_classifier(str(tiny_vit), s)
    got = _run(s, clf, corpus.folder)
    got.pop("__processes__")
    assert sorted(n for n, r in got.items() if r.status == "ok") == corpus.valid  # type: ignore[attr-defined]


def test_decode_processes_setting() -> None:
    assert Settings().decode_processes == 0
    assert Settings(decode_processes=4).decode_processes == 4
    with pytest.raises(ValueError):
        Settings(decode_processes=-1)
    assert file_uri(Path("/x")).startswith("file://")
