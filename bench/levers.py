"""Levers: one setting toggled at a time, steady-state engine img/s before and after.

Every lever is a :class:`labelq.config.Settings` field, measured as the engine's
img/s over the same files with the classifier warmed up at the run's batch size
(so ``compile`` is timed after compiling), runs interleaved round-robin. torch's
thread count is process-wide and labelq sets it when a model loads, so each run
sets its lever's ``torch_threads`` again before it starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import Probe, log, settle
from .modes import torch_threads


def plan(model_name: str, quick: bool, cores: int) -> list[tuple[str, Any, dict[str, Any]]]:
    """(lever, value, settings overrides); the first entry is the defaults."""
    from labelq.config import load_settings

    d = load_settings(models=["x"])
    more = [max(1, cores // 2), 2 * cores] if cores > 1 else [2]
    levers: list[tuple[str, Any, dict[str, Any]]] = [("defaults", "-", {})]
    levers += [("fast_decode", False, {"fast_decode": False})]
    if hasattr(d, "torch_threads"):
        levers += [("torch_threads", n, {"torch_threads": n}) for n in sorted({1, cores}) if n != d.torch_threads]
    if model_name != "vit":
        levers += [("decode_threads", n, {"decode_threads": n}) for n in more if n != d.decode_threads]
        if hasattr(d, "torch_threads") and cores > 1:
            levers += [("torch_threads + decode_threads", f"{cores} + 1", {"torch_threads": cores, "decode_threads": 1})]
    if model_name != "vit":  # for ViT-B on a CPU the model is the whole cost: pools and prefetch do not show
        levers += [("fetch_threads", n, {"fetch_threads": n}) for n in (1, 4)]
        levers += [("prefetch_batches", n, {"prefetch_batches": n}) for n in (1, 4) if n != d.prefetch_batches]
    if model_name != "vit":
        levers += [("channels_last", not d.channels_last, {"channels_last": not d.channels_last})]
    levers += [("dtype", "bfloat16", {"dtype": "bfloat16"})]
    if not quick:
        levers += [("compile", True, {"compile": True})]
    return levers


def run(model_name: str, model: Path, folder: Path, *, repeat: int, quick: bool, cores: int,
        batch_size: int) -> list[dict[str, Any]]:
    """Every lever's engine is built and warmed up first; then the runs go round-robin, ``repeat`` rounds.

    Interleaving spreads whatever else the machine is doing over all levers alike; the
    best run of each is kept.
    """
    import time

    from labelq.config import load_settings
    from labelq.engine import Engine
    from labelq.models import load_classifier
    from labelq.objects import Stores
    from labelq.sources import iter_source, parse_source

    from .modes import settings as make_settings

    defaults = load_settings(models=["x"])
    source = parse_source(str(folder))
    prepared: list[dict[str, Any]] = []
    for lever, value, overrides in plan(model_name, quick, cores):
        row: dict[str, Any] = {"lever": lever, "value": value,
                               "default": "-" if lever == "defaults" else _default(defaults, lever)}
        try:
            s = make_settings(model, batch_size=batch_size, **overrides)
            threads = getattr(s, "torch_threads", None)  # what labelq set while loading this lever's model
            with torch_threads(None):
                clf = load_classifier(str(model), s)
                start = time.perf_counter()
                clf.warmup(s.batch_size)
                row["warmup_s"] = round(time.perf_counter() - start, 2)
            stores = Stores(s, local_root=source.root)
            engine = Engine([clf], stores, s, worker="bench")
            prepared.append({"row": row, "engine": engine, "threads": threads, "runs": [],
                             "refs": list(iter_source(source, stores))})
        except Exception as exc:  # noqa: BLE001 - a lever that fails here (compile without a compiler) is reported
            log(f"  lever {lever}={value}: failed: {type(exc).__name__}: {exc}")
            row["error"] = f"{type(exc).__name__}: {exc}"[:300]
            prepared.append({"row": row})
    live = [p for p in prepared if "engine" in p]
    for p in live:  # one untimed pass each: pools started, files in the page cache
        with torch_threads(p["threads"]):
            sum(len(r) for r in p["engine"].run(p["refs"]))
    for _ in range(repeat):
        for p in live:
            settle()
            with torch_threads(p["threads"]):
                probe = Probe()
                start = time.perf_counter()
                n = sum(len(r) for r in p["engine"].run(p["refs"]))
                p["runs"].append(time.perf_counter() - start)
                p.setdefault("foreign", []).append(round(probe.foreign_cores(), 2))
            assert n == len(p["refs"])
    base = next((len(p["refs"]) / min(p["runs"]) for p in live if p["row"]["lever"] == "defaults"), 0.0)
    rows = []
    for p in prepared:
        row = p["row"]
        if "engine" in p:
            ips = len(p["refs"]) / min(p["runs"])
            best = p["runs"].index(min(p["runs"]))
            row.update({"images_per_s": round(ips, 1), "vs_defaults": round(ips / base, 3) if base else None,
                        "runs_s": [round(r, 3) for r in p["runs"]], "foreign_cores": p["foreign"],
                        "best_run_foreign_cores": p["foreign"][best],
                        "stage_seconds": {k: round(v, 2) for k, v in p["engine"].stats.seconds.items()}})
            p["engine"].close()
            log(f"  lever {row['lever'] + '=' + str(row['value']):<44} {ips:8.1f} img/s  x {row['vs_defaults']:.2f}"
                f"  (others used {p['foreign'][best]:.2f} cores)")
        rows.append(row)
    if model_name == "vit":
        rows += attention(model, batch=8, repeat=repeat)
    return rows


def attention(model: Path, *, batch: int, repeat: int) -> list[dict[str, Any]]:
    """ViT only: the bare model with SDPA attention (transformers' default, what labelq loads) vs eager."""
    import torch
    from transformers import AutoModelForImageClassification

    from .common import timed

    rows = []
    x = torch.randn(batch, 3, 224, 224)
    for impl in ("sdpa", "eager"):
        net = AutoModelForImageClassification.from_pretrained(str(model), attn_implementation=impl).eval()

        def step(net: Any = net) -> None:
            with torch.inference_mode():
                net(pixel_values=x)

        step()
        m = timed(f"lever attention={impl} (bare)", batch, step, repeat=max(2, repeat), batch=batch)
        rows.append({"lever": "attention (bare model, not a setting)", "value": impl, "default": "sdpa",
                     "images_per_s": round(m.ips, 2)})
    return rows


def _default(defaults: Any, lever: str) -> Any:
    if lever == "torch_threads + decode_threads":
        return f"{getattr(defaults, 'torch_threads', '-')} + {defaults.decode_threads}"
    return getattr(defaults, lever, "-")
