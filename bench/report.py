"""The bench's outputs: the table, the targets of issue 5, a markdown summary and the plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

MAIN_SIZE = "1920x1080"


def _foreign(res: dict[str, Any], group: str, key: str | None) -> float | None:
    """CPU cores others used during the best run of a measure, where recorded."""
    d = res["details"].get(group)
    for part in (key.split("/") if key is not None else []):
        d = d.get(part) if d else None
    if not d:
        return None
    runs, foreign = d.get("runs_s") or [], (d.get("extra") or {}).get("foreign_cores")
    return foreign[runs.index(min(runs))] if runs and foreign else None


def headline(res: dict[str, Any]) -> list[tuple[str, float, float | None]]:
    """(mode, img/s, others' cores) rows of the main table: the main size and batch."""
    size, b = MAIN_SIZE, str(res["batch"])
    m = res["measures"]
    rows = [
        ("bare model, ready tensors (ceiling)", m["bare"].get(b), "bare", b),
        ("model alone: Classifier.predict on uint8", m["model_alone"].get(b), "model_alone", b),
        ("decode alone: labelq fast path, all cores", m["decode_fast"].get(size), "decode_fast", size),
        ("model alone, measured next to labelq's runs (best)", (res.get("limit_inputs") or {}).get(size, {}).get("model"),
         "", None),
        ("decode + model limit, shared cores", res["limit"].get(size), "", None),
        ("transformers pipeline", m["pipeline"].get(size), "pipeline", size),
        ("naive Celery, one task per image", m.get("naive"), "naive", None),
        ("labelq run (embedded)", m["labelq_run"].get(size), "labelq_run", size),
        ("labelq run CLI, own clock", m.get("labelq_cli", {}).get("default"), "labelq_cli", "default"),
    ]
    before = m.get("labelq_run_before", {})
    if before.get(size):
        threads = res["machine"]["cores"]
        rows.append((f"labelq run, torch_threads={threads}", before[size], "labelq_run_before", size))
    for key, v in m.get("labelq_cli", {}).items():
        if key != "default":
            prefix = "PROTO " if "OMP_WAIT_POLICY" in key else ""
            rows.append((f"{prefix}labelq run CLI, {key}", v, "labelq_cli", key))
    for name, d in res.get("distributed", {}).items():
        rows.append((f"distributed, job clock: {name}", d["job"], "distributed", f"{name}/job"))
        rows.append((f"distributed, enqueue --wait wall: {name}", d["wall"], "distributed", f"{name}/wall"))
    return [(name, float(v), _foreign(res, group, key)) for name, v, group, key in rows if v]


def table(res: dict[str, Any]) -> str:
    m = res["measures"]
    pipe = m["pipeline"].get(MAIN_SIZE) or 0
    naive = m.get("naive") or 0
    bare = m["bare"].get(str(res["batch"])) or 0
    limit = res["limit"].get(MAIN_SIZE) or 0
    lines = [
        f"{res['model_desc']} — {res['counts'][MAIN_SIZE]} distinct {MAIN_SIZE} JPEGs, batch {res['batch']}, "
        f"{res['machine']['cores']} cores ({res['machine']['cpu']}), best of {res['repeat']}+ runs",
        "",
        f"| {'mode':<58} | {'img/s':>8} | {'× pipeline':>10} | {'× naive':>8} | {'% of bare':>9} | {'% of limit':>10} "
        f"| {'others':>6} |",
        f"|{'-' * 60}|{'-' * 9}:|{'-' * 11}:|{'-' * 9}:|{'-' * 10}:|{'-' * 11}:|{'-' * 7}:|",
    ]
    for name, v, foreign in headline(res):
        lines.append(
            f"| {name:<58} | {v:8.1f} | {_ratio(v, pipe):>10} | {_ratio(v, naive):>8} | {_pct(v, bare):>9} | "
            f"{_pct(v, limit):>10} | {'-' if foreign is None else f'{foreign:.2f}':>6} |"
        )
    lines.append("")
    lines.append("others: CPU cores used by other processes on the machine during the best run (0 = undisturbed).")
    return "\n".join(lines)


def by_size_table(res: dict[str, Any]) -> str:
    m = res["measures"]
    lines = [
        f"| {'size':<10} | {'decode alone':>12} | {'limit':>7} | {'pipeline':>8} | {'labelq run':>10} | "
        f"{'× pipeline':>10} | {'% of limit':>10} | {'all-core torch':>15} | {'% of limit':>10} |",
        f"|{'-' * 12}|{'-' * 13}:|{'-' * 8}:|{'-' * 9}:|{'-' * 11}:|{'-' * 11}:|{'-' * 11}:|{'-' * 16}:|{'-' * 11}:|",
    ]
    for size in res["sizes"]:
        d, lim = m["decode_fast"].get(size, 0), res["limit"].get(size, 0)
        p, q = m["pipeline"].get(size, 0), m["labelq_run"].get(size, 0)
        proto = m.get("labelq_run_before", {}).get(size, 0)
        lines.append(f"| {size:<10} | {d:12.1f} | {lim:7.1f} | {p:8.1f} | {q:10.1f} | {_ratio(q, p):>10} | "
                     f"{_pct(q, lim):>10} | {proto:15.1f} | {_pct(proto, lim):>10} |")
    return "\n".join(lines)


def by_batch_table(res: dict[str, Any]) -> str:
    m = res["measures"]
    lines = [
        f"| {'batch':>5} | {'bare':>8} | {'model alone':>11} | {'labelq run':>10} | {'pipeline':>8} |",
        f"|{'-' * 6}:|{'-' * 9}:|{'-' * 12}:|{'-' * 11}:|{'-' * 9}:|",
    ]
    counts = res.get("sweep_counts", {})
    for b in res["batches"]:
        k = str(b)
        lines.append(f"| {b:>5} | {m['bare'].get(k, 0):8.1f} | {m['model_alone'].get(k, 0):11.1f} | "
                     f"{m['labelq_batch'].get(k, 0):10.1f} | {m['pipeline_batch'].get(k, 0):8.1f} |"
                     + (f" (labelq on {counts[k][0]}, pipeline on {counts[k][1]} images)" if k in counts else ""))
    return "\n".join(lines)


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets of issue 5 that a CPU run can check, each with its figure and verdict."""
    m = res["measures"]
    q = m["labelq_run"].get(MAIN_SIZE) or 0
    pipe = m["pipeline"].get(MAIN_SIZE) or 0
    limit = res["limit"].get(MAIN_SIZE) or 0
    out = [
        _target("labelq run ≥ 3× transformers pipeline (1080p)", q / pipe if pipe else None, 3.0, "×"),
        _target("labelq run ≥ 80% of decode+model limit (1080p)", q / limit if limit else None, 0.8, "%"),
    ]
    if m.get("distributed_job"):
        out.append(_target("distributed ≥ 0.9× labelq run (job clock)", m["distributed_job"] / q if q else None, 0.9,
                           "×"))
        out.append(_target("distributed ≥ 0.9× labelq run (enqueue --wait wall)",
                           m["distributed_wall"] / q if q else None, 0.9, "×"))
    if m.get("naive"):
        out.append(_target("labelq run ≥ 10× naive Celery", q / m["naive"], 10.0, "×"))
    for name, d in res.get("distributed", {}).items():
        if name != "defaults":
            out.append(_target(f"distributed [{name}] ≥ 0.9× labelq run (job clock)", d["job"] / q if q else None,
                               0.9, "×"))
    for model, per in res.get("fidelity", {}).items():
        for label, r in per.items():
            if r.get("fast_path"):
                out.append({"target": f"fast path mean |Δ| ≤ 1 level ({model}, {label} photos)",
                            "value": f"{r['mean']:.3f} (max {r['max']:.0f}, worst image mean {r['worst_image_mean']:.2f})",
                            "met": r["mean"] <= 1.0})
    return out


def _target(name: str, value: float | None, goal: float, unit: str) -> dict[str, Any]:
    if value is None:
        return {"target": name, "value": "n/a", "met": None}
    shown = f"{100 * value:.0f}%" if unit == "%" else f"{value:.2f}×"
    return {"target": name, "value": shown, "met": value >= goal}


def targets_text(rows: list[dict[str, Any]]) -> str:
    return "\n".join(f"  [{'met ' if r['met'] else 'MISS' if r['met'] is False else ' -- '}] {r['target']}: {r['value']}"
                     for r in rows)


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if a and b else "-"


def _pct(a: float, b: float) -> str:
    return f"{100 * a / b:.0f}%" if a and b else "-"


def plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = res["measures"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    ax = axes[0]
    batches = res["batches"]
    for key, label, style in (("bare", "bare model (ready tensors)", "k--"), ("model_alone", "model alone (predict)", "k:"),
                              ("labelq_batch", "labelq run", "C0o-"), ("pipeline_batch", "transformers pipeline", "C3s-")):
        ys = [m[key].get(str(b)) for b in batches]
        pts = [(b, y) for b, y in zip(batches, ys, strict=True) if y]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=label)
    if res["limit"].get(MAIN_SIZE):
        ax.axhline(res["limit"][MAIN_SIZE], color="C2", lw=1, label="decode + model limit")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_xlabel("batch size")
    ax.set_ylabel("images / s")
    ax.set_title(f"by batch size ({MAIN_SIZE} JPEGs)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)

    ax = axes[1]
    sizes = res["sizes"]
    xs = list(range(len(sizes)))
    for key, label, style in (("decode_fast", "decode alone (fast path)", "C1^-"), ("labelq_run", "labelq run", "C0o-"),
                              ("labelq_run_before", "labelq run, torch threads = all cores", "C0o:"),
                              ("pipeline", "transformers pipeline", "C3s-")):
        if m.get(key):
            ax.plot(xs, [m[key].get(s, float("nan")) for s in sizes], style, label=label)
    ax.plot(xs, [res["limit"].get(s, float("nan")) for s in sizes], "C2-", lw=1, label="decode + model limit")
    for key, label, marker in (("naive", "naive Celery", "x"), ("distributed_job", "distributed (job clock)", "D")):
        if m.get(key):
            ax.plot([xs[sizes.index(MAIN_SIZE)]], [m[key]], marker, color="C4" if key == "naive" else "C5", label=label)
    ax.set_xticks(xs, sizes)
    ax.set_yscale("log")
    ax.set_xlabel("image size (JPEG)")
    ax.set_title(f"by image size (batch {res['batch']})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.suptitle(f"labelq bench: {res['model_desc']} on {res['machine']['cores']} cores of {res['machine']['cpu']}, "
                 f"torch {res['machine']['torch']}", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
