"""The in-process modes: bare model, model alone, decode alone, transformers pipeline, labelq.

* ``bare``: the model's forward on a ready float tensor (normalised, in the model's
  dtype and memory format) at batch B: the ceiling nothing that decodes can beat.
* ``model_alone``: :meth:`Classifier.predict` on ready uint8 batches (normalise on
  device, softmax, top-k, one device→host copy): the model's share of labelq's cost.
* ``decode_alone``: labelq's decode + prepare on in-memory bytes, in ``threads``
  threads (the decode pool of the engine): the CPU share of labelq's cost.
* ``pipeline``: ``transformers.pipeline("image-classification", batch_size=B)``
  over the file paths: what a user writes instead of labelq.
* ``labelq_run``: :func:`labelq.embedded.run_embedded` (``labelq run`` minus the
  process start and model load, exactly its own "images/s" clock), with the
  SQLite result table in a temporary folder; ``labelq_cli``: the real command.

torch's intra-op thread count is process-wide, and labelq sets it when it loads a
model on the CPU (``Settings.torch_threads``). The bare model, the model alone and
the pipeline therefore run with every core's thread (the machine's capacity, what
a user's pipeline gets), and each labelq measurement puts the count back after it.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from .common import QUIET, Measure, Probe, cores, log, settle, timed


def settings(model: Path, **overrides: Any) -> Any:
    from labelq.config import load_settings

    base: dict[str, Any] = {"models": [str(model)], "device": "cpu", "db_url": "sqlite:///:memory:"}
    base.update(overrides)
    return load_settings(**base)


def classifier(model: Path, **overrides: Any) -> Any:
    from labelq.models import load_classifier

    return load_classifier(str(model), settings(model, **overrides))


def _iters(step: Any, target_s: float) -> int:
    """How many calls of ``step`` fill about ``target_s`` seconds (at least 1)."""
    times: list[float] = []
    while len(times) < 3 and sum(times) < 0.5:  # a few short steps; one long one (ViT-B on a CPU) is enough
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return max(1, min(1000, round(target_s / max(min(times), 1e-4))))


def bare(clf: Any, batch: int, *, repeat: int, target_s: float = 1.0) -> Measure:
    with torch_threads(cores()):
        return _bare(clf, batch, repeat=repeat, target_s=target_s)


def _bare(clf: Any, batch: int, *, repeat: int, target_s: float) -> Measure:
    import torch

    h, w = clf.geometry.out_size if clf.geometry is not None else clf.input_shape()[1:]
    x = torch.randn(batch, 3, h, w).to(device=clf.device, dtype=clf.dtype)
    x = x.contiguous(memory_format=torch.channels_last) if clf.channels_last else x.contiguous()

    def step() -> None:
        with torch.inference_mode():
            clf.model(pixel_values=x).logits.float().cpu()

    step()
    n = _iters(step, target_s)

    def run() -> None:
        for _ in range(n):
            step()

    return timed("bare model (ready tensors)", batch * n, run, repeat=repeat, batch=batch, dtype=str(clf.dtype)[6:],
                 torch_threads=torch.get_num_threads())


def model_alone(clf: Any, batch: int, *, repeat: int, target_s: float = 1.0) -> Measure:
    with torch_threads(cores()):
        return _model_alone(clf, batch, repeat=repeat, target_s=target_s)


def _model_alone(clf: Any, batch: int, *, repeat: int, target_s: float) -> Measure:
    shape = clf.input_shape()
    rng = np.random.default_rng(0)
    if clf.geometry is not None:
        x = rng.integers(0, 256, (batch, *shape), dtype=np.uint8)
    else:
        x = rng.standard_normal((batch, *shape)).astype(np.float32)
    clf.predict(x)
    n = _iters(lambda: clf.predict(x), target_s)

    def run() -> None:
        for _ in range(n):
            clf.predict(x)

    import torch

    return timed("model alone (predict, uint8 in)", batch * n, run, repeat=repeat, batch=batch,
                 torch_threads=torch.get_num_threads())


def decode_alone(clf: Any, paths: list[Path], threads: int, *, repeat: int) -> Measure:
    """What the engine's decode pool does per image (decode, draft when fast, prepare), bytes in memory."""
    from labelq.images import Limits, decode

    s = settings(Path(clf.name))
    limits = Limits(s.max_bytes, s.max_pixels, frozenset(s.formats))
    datas = [p.read_bytes() for p in paths]
    draft = [clf.geometry] if clf.geometry is not None else []

    cpu = [0.0, 0]
    lock = threading.Lock()

    def one(data: bytes) -> np.ndarray:
        start = time.thread_time()
        out = clf.prepare(decode(data, limits, draft=draft))
        with lock:
            cpu[0] += time.thread_time() - start
            cpu[1] += 1
        return out

    with ThreadPoolExecutor(threads) as pool:
        def run() -> None:
            for _ in pool.map(one, datas):
                pass

        path = "fast" if clf.geometry is not None else "exact"
        m = timed(f"decode alone ({path})", len(datas), run, repeat=repeat, warmup=lambda: one(datas[0]),
                  threads=threads)
    # CPU time per image is what a busy machine disturbs least: cores / it is the rate on idle cores.
    m.extra["cpu_ms_per_image"] = round(1000 * cpu[0] / max(cpu[1], 1), 3)
    return m


def pipeline(model: Path, paths: list[Path], batch: int, *, repeat: int) -> Measure:
    with torch_threads(cores()):
        return _pipeline(model, paths, batch, repeat=repeat)


def _pipeline(model: Path, paths: list[Path], batch: int, *, repeat: int) -> Measure:
    import torch
    from transformers import pipeline as make_pipeline

    pipe = make_pipeline("image-classification", model=str(model), device="cpu")
    names = [str(p) for p in paths]

    def run() -> None:
        with torch.inference_mode():
            out = pipe(names, batch_size=batch)
        assert len(out) == len(names)

    m = timed("transformers pipeline", len(names), run, repeat=repeat, warmup=lambda: pipe(names[:2], batch_size=2),
              batch=batch)
    return m


@contextlib.contextmanager
def _tmp_db() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="labelq-bench-") as tmp:
        yield f"sqlite:///{tmp}/labelq.db"


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` inside the block (None: left as is)."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def labelq_run(model: Path, folder: Path, *, repeat: int, name: str = "labelq run (embedded)",
               **overrides: Any) -> Measure:
    """``labelq run FOLDER --force`` in this process, timed by its own summary clock.

    ``overrides``: settings (``batch_size``, ``torch_threads``, ...). torch's thread count, which
    labelq sets while loading the model, is put back afterwards.
    """
    from labelq.embedded import run_embedded

    runs: list[float] = []
    foreign: list[float] = []
    images = 0
    while len(runs) < repeat or (len(runs) < 2 * repeat + 1 and foreign[runs.index(min(runs))] > QUIET["threshold"]):
        settle()
        with _tmp_db() as db, torch_threads(None):
            probe = Probe()
            summary = run_embedded(str(folder), settings(model, db_url=db, **overrides), force=True, progress=False)
            foreign.append(round(probe.foreign_cores(), 2))
        if summary.errors:
            raise RuntimeError(f"labelq run produced errors: {dict(summary.errors)}")
        images = summary.images
        runs.append(summary.seconds)
    params = dict(overrides)
    m = Measure(name, images, runs, params, {"foreign_cores": foreign})
    log(f"  {name:<34} {m.ips:8.1f} img/s  ({images} images, best of {len(runs)}: {m.best_s:.2f}s, others used "
        f"{m.best_foreign:.2f} cores) " + " ".join(f"{k}={v}" for k, v in params.items()))
    return m


_SUMMARY = re.compile(r"labelled (\d+) images\b.*? in ([\d.]+)s: ([\d.]+) images/s")


def labelq_cli(model: Path, folder: Path, *, repeat: int, batch: int, env: dict[str, str] | None = None,
               name: str = "labelq run (CLI)") -> Measure:
    """``labelq run FOLDER --force --quiet`` as a subprocess; its own printed images/s (model load excluded).

    ``env``: extra environment, e.g. ``LABELQ_TORCH_THREADS`` or the PROTOTYPE ``OMP_WAIT_POLICY=PASSIVE``,
    which must be set before torch starts and so cannot be tried in this process.
    """
    runs: list[float] = []
    foreign: list[float] = []
    wall: list[float] = []
    images = 0
    full_env = dict(os.environ, COLUMNS="300", **(env or {}))  # rich wraps the summary line at 80 columns
    while len(runs) < repeat or (len(runs) < 2 * repeat + 1 and foreign[runs.index(min(runs))] > QUIET["threshold"]):
        settle()
        with tempfile.TemporaryDirectory(prefix="labelq-bench-") as tmp:
            def ours() -> float:
                children = resource.getrusage(resource.RUSAGE_CHILDREN)
                return time.process_time() + children.ru_utime + children.ru_stime

            probe = Probe(ours)
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "labelq", "run", str(folder), "--model", str(model),
                                   "--device", "cpu", "--batch-size", str(batch), "--db", f"sqlite:///{tmp}/l.db",
                                   "--force", "--quiet"], env=full_env, capture_output=True, text=True, timeout=900,
                                  check=False)
            wall.append(time.perf_counter() - start)
            foreign.append(round(probe.foreign_cores(), 2))
        found = _SUMMARY.search(proc.stdout)
        if proc.returncode != 0 or found is None:
            raise RuntimeError(f"labelq run failed ({proc.returncode}): {proc.stdout[-500:]} {proc.stderr[-1500:]}")
        images = int(found.group(1))
        runs.append(images / float(found.group(3)))  # seconds from its own rate (more digits than its seconds)
    params = {"batch": batch, **(env or {})}
    m = Measure(name, images, runs, params, {"foreign_cores": foreign, "wall_s_with_start_and_load": wall})
    log(f"  {name:<34} {m.ips:8.1f} img/s  ({images} images, best of {len(runs)}: {m.best_s:.2f}s, whole command "
        f"{min(wall):.1f}s, others used {m.best_foreign:.2f} cores) " + " ".join(f"{k}={v}" for k, v in params.items()))
    return m
