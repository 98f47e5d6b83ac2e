"""Shared pieces of the benchmark: where things live, timing, machine details.

Every throughput in the bench is images per second of wall-clock time, measured
after a warm-up, best of ``repeat`` runs (the machine may be shared: the best run
is the one least disturbed by others; every run is kept in the JSON).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
CACHE = OUT / "cache"  # generated photos and random-init models, reused across runs
DOCS = ROOT / "docs"

FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


def offline_env() -> None:
    """No hub, no telemetry, fake AWS credentials, no LABELQ_* from the caller's shell."""
    for name in [k for k in os.environ if k.startswith("LABELQ_")] + ["AWS_PROFILE", "AWS_ENDPOINT_URL"]:
        os.environ.pop(name, None)
    os.environ.update(
        {
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "AWS_CONFIG_FILE": str(CACHE / "aws-config-absent"),
            "AWS_SHARED_CREDENTIALS_FILE": str(CACHE / "aws-credentials-absent"),
            **FAKE_AWS,
        }
    )


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, library versions and the load on the machine now."""
    import PIL
    import torch
    import transformers

    model = platform.processor() or platform.machine()
    flags = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=False).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                model = value.strip()
            if key.strip() == "Flags":
                flags = value
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30 if hasattr(os, "sysconf") else 0
    info: dict[str, Any] = {
        "cpu": model,
        "cores": cores(),
        "avx512_bf16": "avx512_bf16" in flags.split(),
        "amx": "amx_bf16" in flags.split(),
        "memory_gib": round(mem_gb, 1),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "transformers": transformers.__version__,
        "pillow": PIL.__version__,
        "pillow_simd": "post" in PIL.__version__,
        "libjpeg_turbo": _libjpeg_turbo(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    return info


def _libjpeg_turbo() -> bool | None:
    try:
        from PIL import features

        return bool(features.check_feature("libjpeg_turbo"))
    except Exception:  # noqa: BLE001 - old Pillow
        return None


@dataclass
class Measure:
    """One throughput: images per second, best of the runs; every run kept."""

    name: str
    images: int
    runs_s: list[float]
    params: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def best_foreign(self) -> float | None:
        """CPU cores others used during the best run, where measured."""
        foreign = self.extra.get("foreign_cores")
        return foreign[self.runs_s.index(self.best_s)] if foreign else None

    @property
    def best_s(self) -> float:
        return min(self.runs_s)

    @property
    def ips(self) -> float:
        return self.images / self.best_s if self.runs_s and self.best_s > 0 else 0.0

    @property
    def ips_median(self) -> float:
        ordered = sorted(self.runs_s)
        return self.images / ordered[len(ordered) // 2] if ordered else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["images_per_s"] = round(self.ips, 2)
        d["images_per_s_median"] = round(self.ips_median, 2)
        d["load_avg_1m"] = round(os.getloadavg()[0], 2)
        return d


def busy_seconds() -> float:
    """CPU seconds every process on the machine has used since boot (Linux ``/proc/stat``)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            parts = [int(x) for x in f.readline().split()[1:9]]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = parts
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class Probe:
    """How much CPU others used while we measured: machine busy time minus ours, in cores.

    ``ours`` returns the CPU seconds of our processes (default: this process); add
    the subprocesses a measurement starts. Imprecise by a few jiffies; meant to
    flag a run that shared the cores with someone else's work.
    """

    def __init__(self, ours: Callable[[], float] = time.process_time) -> None:
        self.ours = ours
        self.t0, self.busy0, self.own0 = time.perf_counter(), busy_seconds(), ours()

    def foreign_cores(self) -> float:
        wall = max(time.perf_counter() - self.t0, 1e-6)
        foreign = (busy_seconds() - self.busy0) - (self.ours() - self.own0)
        return max(0.0, foreign / wall)


QUIET = {"wait_s": 20.0, "threshold": 0.25}  # set from the command line


def settle() -> float:
    """Wait (up to QUIET["wait_s"]) until others use under QUIET["threshold"] cores; returns what they used last."""
    deadline = time.monotonic() + QUIET["wait_s"]
    while True:
        probe = Probe()
        time.sleep(0.3)
        load = probe.foreign_cores()
        if load < QUIET["threshold"] or time.monotonic() >= deadline:
            return load
        time.sleep(0.5)


def timed(name: str, images: int, run: Callable[[], Any], *, repeat: int, warmup: Callable[[], Any] | None = None,
          **params: Any) -> Measure:
    """Run ``warmup`` once, then ``run`` ``repeat`` times (a few more when others disturbed the best one).

    Each run waits for a quiet machine first (:func:`settle`) and records the CPU
    others used during it; the best run is kept with its figure.
    """
    if warmup is not None:
        warmup()
    runs: list[float] = []
    foreign: list[float] = []
    tries = 0
    while tries < repeat or (tries < 2 * repeat + 1 and foreign[runs.index(min(runs))] > QUIET["threshold"]):
        tries += 1
        settle()
        probe = Probe()
        start = time.perf_counter()
        run()
        runs.append(time.perf_counter() - start)
        foreign.append(round(probe.foreign_cores(), 2))
    m = Measure(name, images, runs, params)
    m.extra["foreign_cores"] = foreign
    log(f"  {name:<34} {m.ips:8.1f} img/s  ({images} images, best of {len(runs)}: {m.best_s:.2f}s, others used "
        f"{foreign[runs.index(min(runs))]:.2f} cores) {_fmt(params)}")
    return m


def _fmt(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


def limit_ips(decode_ips: float, model_ips: float) -> float:
    """Throughput when decode and model take turns on the same cores: 1 / (1/d + 1/m)."""
    if decode_ips <= 0 or model_ips <= 0:
        return 0.0
    return 1.0 / (1.0 / decode_ips + 1.0 / model_ips)
