"""`labelq run` with LABELQ_RUNTIME=onnx: the same labels and scores as torch, the export made once and reused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labelq.testing import build_vit
from tests.e2e.conftest import PHOTOS, RUN_ENV, labelq

pytest.importorskip("onnxruntime", reason="pip install 'labelq[onnx]'")


def _records(work: Path, name: str) -> dict[str, dict]:
    lines = (work / name).read_text(encoding="utf-8").splitlines()
    return {r["uri"]: r for r in map(json.loads, lines)}


def test_run_on_onnx_labels_as_torch_does(tmp_path: Path) -> None:
    model = build_vit(tmp_path / "vit")
    common = ("run", str(PHOTOS), "--model", str(model), "--batch-size", "4", "--force")
    torch_run = labelq(*common, "--out", "torch.jsonl", "--db", "sqlite:///t.db", cwd=tmp_path, env=RUN_ENV)
    assert torch_run.returncode == 0, torch_run.stderr
    env = {**RUN_ENV, "LABELQ_RUNTIME": "onnx", "LABELQ_CACHE_DIR": str(tmp_path / "cache")}
    stamps = []
    for i in (1, 2):
        run = labelq(*common, "--out", f"onnx{i}.jsonl", "--db", f"sqlite:///o{i}.db", cwd=tmp_path, env=env)
        assert run.returncode == 0, run.stderr
        assert "[torch.onnx]" not in run.stdout and "Traceback" not in run.stderr
        exports = list((model / ".labelq").rglob("*.onnx"))
        assert len(exports) == 1
        stamps.append((exports[0], exports[0].stat().st_mtime_ns))
    assert stamps[0] == stamps[1]  # exported by the first run, reused by the second
    want = _records(tmp_path, "torch.jsonl")
    assert len(want) >= 5 and all(r["status"] == "ok" for r in want.values())
    for name in ("onnx1.jsonl", "onnx2.jsonl"):
        got = _records(tmp_path, name)
        assert got.keys() == want.keys()
        for uri, rec in got.items():
            assert (rec["label"], rec["model_revision"]) == (want[uri]["label"], want[uri]["model_revision"])
            assert rec["score"] == pytest.approx(want[uri]["score"], abs=1e-4)


def test_an_unknown_runtime_is_one_line(tmp_path: Path) -> None:
    run = labelq("run", str(PHOTOS), "--model", "whatever", cwd=tmp_path, env={**RUN_ENV, "LABELQ_RUNTIME": "trt"})
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert "LABELQ_RUNTIME: Input should be 'torch', 'onnx', 'onnx-int8' or 'openvino'" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1, run.stderr
