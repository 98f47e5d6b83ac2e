"""Model faults: a batch that fails is split in halves down to the bad item; the rest is labelled.

The fault is injected into a real (tiny) ViT with a forward pre-hook that raises when
the batch holds the poisoned image, the way a real kernel failure or an out-of-memory
error would surface from ``model(...)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from labelq.config import Settings
from labelq.engine import Item, predict_isolated
from labelq.errors import ModelError
from labelq.models import Prediction, load_classifier
from labelq.objects import ObjectRef

POISON = 7  # every pixel of the bad image has this value


@pytest.fixture()
def poisoned(tiny_vit: Path) -> tuple[object, dict[str, int]]:
    clf = load_classifier(str(tiny_vit), Settings(device="cpu"))
    level = (POISON / 255 - 0.5) / 0.5  # what the ViT's normalisation turns the poison into
    calls = {"n": 0}

    def hook(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        calls["n"] += 1
        x = kwargs.get("pixel_values", args[0] if args else None)
        if bool(torch.isclose(x[:, :, :2, :2].float(), torch.tensor(level)).flatten(1).all(1).any()):
            raise error_to_raise["value"]

    error_to_raise = {"value": RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")}
    clf.model.register_forward_pre_hook(hook, with_kwargs=True)
    clf.error_to_raise = error_to_raise  # type: ignore[attr-defined]
    return clf, calls


def _inputs(n: int, bad: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = [rng.integers(20, 235, (224, 224, 3), dtype=np.uint8) for _ in range(n)]
    out[bad] = np.full((224, 224, 3), POISON, dtype=np.uint8)
    return out


@pytest.mark.parametrize("error", [RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   RuntimeError("cuDNN error: CUDNN_STATUS_EXECUTION_FAILED"),
                                   ValueError("bad input")])
def test_bad_item_is_isolated_and_batch_mates_labelled(poisoned: tuple, error: Exception) -> None:
    clf, calls = poisoned
    clf.error_to_raise["value"] = error
    out = predict_isolated(clf, _inputs(8, bad=5))
    assert len(out) == 8
    assert [i for i, p in enumerate(out) if isinstance(p, ModelError)] == [5]
    assert all(isinstance(p, Prediction) for i, p in enumerate(out) if i != 5)
    assert type(error).__name__ in str(out[5]) and str(error) in str(out[5])
    # 1 (whole) + 2 (halves) + 2 (quarters of the bad half) + 2 (eighths): bisection, not one call per item
    assert calls["n"] == 7


def test_isolated_predictions_equal_unbroken_ones(poisoned: tuple) -> None:
    clf, _ = poisoned
    inputs = _inputs(8, bad=2)
    split = predict_isolated(clf, inputs)
    clean = clf.predict(np.stack([x for i, x in enumerate(inputs) if i != 2]))
    got = [p for i, p in enumerate(split) if i != 2]
    for a, b in zip(got, clean, strict=True):
        assert a.label == b.label
        assert a.score == pytest.approx(b.score, abs=1e-5)


def test_engine_turns_the_bad_item_into_a_model_error_record(poisoned: tuple) -> None:
    from labelq.engine import Engine
    from labelq.objects import Stores

    clf, _ = poisoned
    settings = Settings(device="cpu")
    with Engine([clf], Stores(settings), settings, worker="t") as engine:
        items = [Item(ObjectRef(f"file:///x/{i}.jpg", 1, "e"), {clf.view: x}) for i, x in enumerate(_inputs(6, 3))]
        records = engine.infer(items, job="j")
    by_uri = {r.uri: r for r in records}
    assert len(records) == 6
    assert by_uri["file:///x/3.jpg"].status == "error"
    assert by_uri["file:///x/3.jpg"].error_kind == "model_error"
    assert all(r.status == "ok" and r.label in ("normal", "nsfw") for u, r in by_uri.items() if u != "file:///x/3.jpg")
