"""runtimes/: ONNX Runtime and OpenVINO give the torch model's scores, export once per revision, and int8 is gated.

Each model folder here is the module's own (the exports land inside it, in ``.labelq/``); the
real photos of examples/ are the inputs and the int8 calibration set.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from labelq.config import Settings, load_settings
from labelq.errors import UsageError
from labelq.images import Limits, decode
from labelq.models import Classifier, folder_revision, load_classifier
from labelq.runtimes import RUNTIMES, ModelSource, cache_for, get_runtime
from labelq.runtimes.export import onnx_export
from labelq.testing import build_timm, build_vit

pytest.importorskip("onnxruntime", reason="pip install 'labelq[onnx]'")
pytest.importorskip("openvino", reason="pip install 'labelq[openvino]'")

PARITY = 1e-4  # fp32 runtimes: largest |score - torch score| allowed
BUILDERS = {"vit": build_vit, "timm": build_timm}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny ViT and a tiny timm MobileNetV3 in folders of this module (fresh: nothing exported yet)."""
    root = tmp_path_factory.mktemp("runtime-models")
    return {name: build(root / name) for name, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("labelq-cache")


def settings(cache_dir: Path, **overrides: Any) -> Settings:
    return Settings(device="cpu", cache_dir=cache_dir, top_k=100, **overrides)


def batch(clf: Classifier, photos: list[Path]) -> np.ndarray:
    limits = Limits(50 << 20, 100_000_000, frozenset({"JPEG", "PNG"}))
    return np.stack([clf.prepare(decode(p.read_bytes(), limits)) for p in photos])


def exported(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(("exported", "converted"))]


@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
@pytest.mark.parametrize("model", ["vit", "timm"])
def test_fp32_runtime_gives_the_torch_models_scores(
    model: str, runtime: str, models: dict[str, Path], cache_dir: Path, photos: list[Path]
) -> None:
    reference = load_classifier(str(models[model]), settings(cache_dir))
    other = load_classifier(str(models[model]), settings(cache_dir, runtime=runtime))
    assert other.runtime == runtime and reference.runtime == "torch"
    assert (other.labels, other.geometry, other.revision) == (reference.labels, reference.geometry, reference.revision)
    x = batch(reference, photos)
    want, got = reference.predict(x), other.predict(x)
    assert [p.label for p in got] == [p.label for p in want]
    for a, b in zip(want, got, strict=True):
        scores = {d["label"]: d["score"] for d in a.top_k}
        assert len(b.top_k) == min(100, len(reference.labels))
        # Near-ties may swap places in a random model's top 100: compare by label, where both have it.
        diffs = [abs(d["score"] - scores[d["label"]]) for d in b.top_k if d["label"] in scores]
        assert len(diffs) >= len(b.top_k) - 2 and max(diffs) <= PARITY, max(diffs)


@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
def test_export_happens_once_per_revision(
    runtime: str, tmp_path: Path, cache_dir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import transformers

    weight_loads: list[str] = []
    real = transformers.AutoModelForImageClassification.from_pretrained

    def counted(*args: Any, **kwargs: Any) -> Any:
        weight_loads.append(str(args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForImageClassification, "from_pretrained", counted)
    folder = build_vit(tmp_path / "vit")
    caplog.set_level(logging.INFO, logger="labelq")
    first = load_classifier(str(folder), settings(cache_dir, runtime=runtime))
    assert len(exported(caplog)) >= 1 and weight_loads == [str(folder)]  # the torch weights were loaded to export
    files = sorted(p for p in (folder / ".labelq").rglob("*") if p.is_file())
    assert files and all(folder / ".labelq" in p.parents for p in files)
    stamps = {p: p.stat().st_mtime_ns for p in files}
    assert folder_revision(folder) == first.revision  # the exports do not change the folder's revision

    caplog.clear()
    second = load_classifier(str(folder), settings(cache_dir, runtime=runtime))
    assert exported(caplog) == [] and weight_loads == [str(folder)]  # reused: no export, no torch weights
    assert "cached export" in second.described
    assert {p: p.stat().st_mtime_ns for p in files} == stamps
    x = np.zeros((2, *second.input_shape()), dtype=np.uint8)
    assert [p.score for p in second.predict(x)] == pytest.approx([p.score for p in first.predict(x)], abs=PARITY)

    if runtime != "onnx":
        return
    caplog.clear()
    build_vit(folder, seed=1)  # new weights: a new revision, exported anew
    third = load_classifier(str(folder), settings(cache_dir, runtime=runtime))
    assert third.revision != first.revision and len(exported(caplog)) >= 1


def test_read_only_model_folder_exports_to_the_cache_dir(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, photos: list[Path]
) -> None:
    folder = build_vit(tmp_path / "vit")
    cache = tmp_path / "cache"
    if os.geteuid() == 0:  # root writes through modes: a file where the export folder would go stands in
        (folder / ".labelq").write_bytes(b"")
    before = sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir())
    folder.chmod(0o555)
    try:
        caplog.set_level(logging.INFO, logger="labelq")
        clf = load_classifier(str(folder), settings(cache, runtime="onnx"))
        again = load_classifier(str(folder), settings(cache, runtime="onnx"))
    finally:
        folder.chmod(0o755)
    assert sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir()) == before
    onnx = list(cache.rglob("model.onnx"))
    assert len(onnx) == 1 and cache / "models" in onnx[0].parents
    assert len(exported(caplog)) == 1 and "cached export" in again.described
    torch_clf = load_classifier(str(folder), settings(cache))
    x = batch(torch_clf, photos)
    assert [p.score for p in clf.predict(x)] == pytest.approx([p.score for p in torch_clf.predict(x)], abs=PARITY)


def test_a_hub_model_exports_beside_its_hub_cache_folder(hub_vit: str, cache_dir: Path, photos: list[Path]) -> None:
    from huggingface_hub import constants

    clf = load_classifier(hub_vit, settings(cache_dir, runtime="onnx"))
    repo = Path(constants.HF_HUB_CACHE) / "models--labelq-test--tiny-vit"
    onnx = list((repo / "labelq").rglob("model.onnx"))
    assert clf.revision == "0" * 40 and len(onnx) == 1 and clf.revision in onnx[0].parent.name
    assert not list((repo / "snapshots").rglob("*.onnx"))  # the snapshot stays as the hub wrote it
    reference = load_classifier(hub_vit, settings(cache_dir))
    x = batch(reference, photos)
    assert [p.score for p in clf.predict(x)] == pytest.approx([p.score for p in reference.predict(x)], abs=PARITY)


# ---------------------------------------------------------------- int8


def test_int8_runs_after_the_gate_passes_and_the_verdict_is_kept(
    models: dict[str, Path], cache_dir: Path, photos: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="labelq")
    s = settings(cache_dir, runtime="onnx-int8", int8_calibration=photos[0].parent)
    clf = load_classifier(str(models["vit"]), s)
    gate = [r for r in caplog.records if "parity gate" in r.getMessage()]
    assert len(gate) == 1 and gate[0].levelno == logging.INFO, [r.getMessage() for r in caplog.records]
    line = gate[0].getMessage()
    assert f"on {len(photos)} calibration images" in line and "top-1 agreement 100.0%" in line
    assert "mean |delta score|" in line and line.endswith("passed, running int8")
    assert clf.described.startswith("onnxruntime int8")
    verdicts = list(models["vit"].glob(".labelq/onnx-*/gate-*.json"))
    assert len(verdicts) == 1
    stamp = verdicts[0].stat().st_mtime_ns

    caplog.clear()
    again = load_classifier(str(models["vit"]), s)  # the kept verdict: not measured again
    assert again.described.startswith("onnxruntime int8") and verdicts[0].stat().st_mtime_ns == stamp
    reference = load_classifier(str(models["vit"]), settings(cache_dir))
    x = batch(reference, photos)
    got, want = clf.predict(x), reference.predict(x)
    assert [p.label for p in got] == [p.label for p in want]
    deltas = [abs(a.score - b.score) for a, b in zip(got, want, strict=True)]
    assert 0 < max(deltas) <= 0.01  # int8 really runs (scores move), within the gate's bound


def test_int8_that_fails_the_gate_runs_fp32_and_says_why(
    models: dict[str, Path], cache_dir: Path, photos: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="labelq")
    # No int8 model keeps every score exactly: a bound of 0 fails the gate on the delta.
    clf = load_classifier(str(models["timm"]), settings(
        cache_dir, int8=True, int8_calibration=photos[0].parent, int8_max_mean_delta=0.0))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "parity gate" in warnings[0] and warnings[0].endswith("failed, running fp32")
    assert "mean |delta score| 0.0" in warnings[0] and "(need <= 0.0)" in warnings[0]
    assert clf.runtime == "onnx-int8" and clf.described.startswith("onnxruntime fp32")
    reference = load_classifier(str(models["timm"]), settings(cache_dir))
    x = batch(reference, photos)
    assert [p.score for p in clf.predict(x)] == pytest.approx([p.score for p in reference.predict(x)], abs=PARITY)


def test_int8_without_a_calibration_set_runs_fp32_and_says_why(
    models: dict[str, Path], cache_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="labelq")
    clf = load_classifier(str(models["vit"]), settings(cache_dir, runtime="onnx-int8"))
    (tmp_path / "notes.txt").write_text("no images here")
    empty = load_classifier(str(models["vit"]), settings(cache_dir, runtime="onnx-int8", int8_calibration=tmp_path))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "no calibration set (set LABELQ_INT8_CALIBRATION" in warnings[0] and warnings[0].endswith("running fp32")
    assert f"no readable images in {tmp_path}" in warnings[1]
    assert clf.described.startswith("onnxruntime fp32") and empty.described.startswith("onnxruntime fp32")


# ---------------------------------------------------------------- choosing a runtime


def test_the_table_names_every_runtime_the_settings_accept() -> None:
    accepted = Settings.model_fields["runtime"].annotation.__args__  # type: ignore[union-attr]
    assert set(RUNTIMES) == set(accepted)
    assert all(get_runtime(name).name == name for name in RUNTIMES)
    with pytest.raises(UsageError, match="unknown runtime 'tensorrt': use one of torch, onnx, onnx-int8, openvino"):
        get_runtime("tensorrt")


def test_bad_runtime_settings_are_one_line(monkeypatch: pytest.MonkeyPatch, models: dict[str, Path]) -> None:
    with pytest.raises(UsageError, match="LABELQ_RUNTIME: Input should be 'torch', 'onnx', 'onnx-int8' or 'openvino'"):
        load_settings(runtime="tensorrt")
    monkeypatch.setenv("LABELQ_INT8", "true")
    assert load_settings().runtime == "onnx-int8"
    assert load_settings(runtime="onnx").runtime == "onnx-int8"
    with pytest.raises(UsageError, match="LABELQ_INT8 runs ONNX Runtime's int8, not openvino"):
        load_settings(runtime="openvino")
    monkeypatch.delenv("LABELQ_INT8")
    with pytest.raises(UsageError, match="LABELQ_RUNTIME=onnx runs on the CPU, not cuda"):
        load_classifier(str(models["vit"]), load_settings(runtime="onnx", device="cuda"))
    with pytest.raises(UsageError, match="LABELQ_RUNTIME=openvino runs in float32, not bfloat16"):
        load_classifier(str(models["vit"]), load_settings(runtime="openvino", device="cpu", dtype="bfloat16"))


class _LeavesTorch(torch.nn.Module):
    """A layer the exporter cannot trace: its output's shape depends on the input's values."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, : int(x.abs().sum().item() > -1) + 1]


def test_a_model_the_exporter_cannot_take_is_one_line(tmp_path: Path, cache_dir: Path) -> None:
    folder = build_vit(tmp_path / "vit")
    clf = load_classifier(str(folder), settings(cache_dir))  # it runs on torch ...
    clf.model.classifier = _LeavesTorch()  # the head: hidden state → 2 logits
    assert len(clf.predict(np.zeros((1, *clf.input_shape()), dtype=np.uint8))) == 1
    source = ModelSource("vit", clf.revision, cache_for("vit", folder, settings(cache_dir)), (3, 224, 224),
                         lambda: clf.model)
    with pytest.raises(UsageError, match=r"^cannot export model 'vit' to ONNX \(.+\); use LABELQ_RUNTIME=torch$"):
        onnx_export(source)  # ... but not on ONNX: one line, and no half-written file left behind
    assert not [p for p in (folder / ".labelq").rglob("*") if p.is_file()]
