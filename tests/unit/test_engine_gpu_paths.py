"""The engine's GPU-host paths, on the CPU where they can run there, on CUDA where one is present.

* overlap: batch k+1 staged and launched before batch k is collected (pinned buffers and a
  copy stream on CUDA); on a CPU the same code path runs with ``Engine.overlap = True``;
* device JPEG decode (LABELQ_GPU_DECODE): header checks on the CPU, decode + resize on the
  device, the CPU path per item for everything else; torchvision's CPU ``decode_jpeg``
  stands in for nvJPEG here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from labelq.config import Settings
from labelq.engine import Engine
from labelq.gpudecode import DeviceJpeg, fit_tensor, is_plain_jpeg
from labelq.images import Geometry, Limits, decode, fit
from labelq.models import Classifier, load_classifier
from labelq.objects import Stores
from labelq.sources import iter_source, parse_source
from labelq.testing import CORPUS_MAX_PIXELS, Corpus

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _settings(**kw: Any) -> Settings:
    return Settings(device="cpu", max_pixels=CORPUS_MAX_PIXELS, fetch_threads=4, decode_threads=2, batch_size=4, **kw)


def _label(clf: Classifier, folder: Path, s: Settings, *, overlap: bool | None = None,
           device_jpeg: bool = False) -> dict[str, Any]:
    source = parse_source(str(folder))
    stores = Stores(s, local_root=source.root)
    with Engine([clf], stores, s, worker="t") as engine:
        engine.overlap = overlap
        if device_jpeg:
            engine.device_jpeg = DeviceJpeg(clf.device, engine._fast_geometries)
        records = [r for batch in engine.run(list(iter_source(source, stores))) for r in batch]
        stages = dict(engine.stats.seconds)
    out = {r.uri.rsplit("/", 1)[-1]: r for r in records}
    assert len(out) == len(records)
    out["__stages__"] = stages
    return out


@pytest.fixture(scope="module")
def vit(tiny_vit: Path) -> Classifier:
    return load_classifier(str(tiny_vit), _settings())


def test_overlapped_run_labels_like_the_plain_one(vit: Classifier, corpus: Corpus) -> None:
    plain = _label(vit, corpus.folder, _settings(), overlap=False)
    over = _label(vit, corpus.folder, _settings(), overlap=True)
    plain.pop("__stages__"), over.pop("__stages__")
    assert set(plain) == set(over) == set(corpus.expected)
    for name, expected in corpus.expected.items():
        a, b = over[name], plain[name]
        assert a.status == b.status and a.error_kind == b.error_kind, name
        if expected == "ok":
            assert a.label == b.label and a.score == pytest.approx(b.score, abs=1e-6), name


def test_overlapped_run_isolates_a_failing_item(tiny_vit: Path, tmp_path: Path) -> None:
    clf = load_classifier(str(tiny_vit), _settings())
    poison = (7 / 255 - 0.5) / 0.5  # the ViT's normalisation of a pixel value of 7

    def hook(_module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        x = kwargs.get("pixel_values", args[0] if args else None)
        if bool(torch.isclose(x[:, :, :2, :2].float(), torch.tensor(poison)).flatten(1).all(1).any()):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    clf.model.register_forward_pre_hook(hook, with_kwargs=True)
    rng = np.random.default_rng(0)
    for i in range(7):
        Image.fromarray(rng.integers(20, 235, (64, 64, 3), dtype=np.uint8)).save(tmp_path / f"ok{i}.png")
    Image.fromarray(np.full((64, 64, 3), 7, dtype=np.uint8)).save(tmp_path / "bad.png")
    got = _label(clf, tmp_path, _settings(), overlap=True)
    got.pop("__stages__")
    assert got["bad.png"].status == "error" and got["bad.png"].error_kind == "model_error"
    assert all(r.status == "ok" for n, r in got.items() if n != "bad.png")


def test_device_decode_path_on_the_cpu_keeps_kinds_and_labels(vit: Classifier, corpus: Corpus) -> None:
    plain = _label(vit, corpus.folder, _settings())
    dev = _label(vit, corpus.folder, _settings(), device_jpeg=True)
    stages = dev.pop("__stages__")
    plain.pop("__stages__")
    assert stages.get("decode_device", 0) > 0  # the corpus's JPEGs went the device way
    for name, expected in corpus.expected.items():
        if expected == "ok":
            assert dev[name].status == "ok", (name, dev[name].error)
        else:  # the truncated JPEG, garbage, bombs: the CPU's errors, per item
            assert dev[name].error_kind == expected, (name, dev[name].error)


def test_device_resize_matches_the_fast_path_within_the_gate(photos: list[Path]) -> None:
    """Full decode + antialiased interpolate vs Pillow's fit (which matches the processors to 0.001 level)."""
    limits = Limits(50 << 20, 100_000_000, frozenset({"JPEG", "PNG"}))
    geometries = [Geometry(None, 256, (224, 224), "bicubic", crop_round=True),
                  Geometry((224, 224), None, None, "bilinear"), Geometry((300, 300), None, (256, 256), "bilinear")]
    dj = DeviceJpeg(torch.device("cpu"), geometries)
    jpegs = [p.read_bytes() for p in photos if p.suffix == ".jpg"]
    assert jpegs
    for data, out in zip(jpegs, dj.decode(jpegs), strict=True):
        assert out is not None
        full = decode(data, limits)
        for g in geometries:
            a, b = out[g].numpy(), fit(full, g)
            assert a.shape == b.shape and a.dtype == np.uint8
            assert np.abs(a.astype(float) - b.astype(float)).mean() <= 1.0, g


def test_device_resize_pads_small_images_like_the_cpu() -> None:
    g = Geometry(None, 32, (48, 48), "bilinear")
    im = np.random.default_rng(1).integers(0, 255, (16, 24, 3), dtype=np.uint8)
    got = fit_tensor(torch.from_numpy(im).permute(2, 0, 1).contiguous(), g).numpy()
    want = fit(Image.fromarray(im), g)
    assert got.shape == want.shape == (48, 48, 3)
    assert (got == 0).all(axis=2).sum() == (want == 0).all(axis=2).sum()  # same zero border


def test_filters_the_device_cannot_match_stay_on_the_cpu() -> None:
    from labelq.gpudecode import supported

    assert supported([Geometry((224, 224), None, None, "bicubic")])
    assert not supported([Geometry((224, 224), None, None, "nearest")])
    assert not supported([Geometry((224, 224), None, None, "lanczos")])
    assert not supported([])


def test_only_whole_plain_jpegs_go_to_the_device() -> None:
    assert is_plain_jpeg(b"\xff\xd8\xff\xe0" + b"x" * 10 + b"\xff\xd9", "YCbCr")
    assert not is_plain_jpeg(b"\xff\xd8\xff\xe0" + b"x" * 10, "YCbCr")  # cut short
    assert not is_plain_jpeg(b"\xff\xd8\xff\xe0" + b"x" * 10 + b"\xff\xd9", "CMYK")
    assert not is_plain_jpeg(b"\x89PNG\r\n\x1a\n", "RGB")


def test_gpu_decode_setting_is_ignored_without_cuda(vit: Classifier) -> None:
    s = _settings(gpu_decode=True)
    with Engine([vit], Stores(s), s) as engine:
        assert engine.device_jpeg is None


# ---------------------------------------------------------------------- on a CUDA device


@pytest.mark.gpu
@cuda
def test_staged_predictions_on_cuda_match_the_cpu(tiny_timm: Path, photos: list[Path]) -> None:
    cpu = load_classifier(str(tiny_timm), _settings())
    gpu = load_classifier(str(tiny_timm), Settings(device="cuda", dtype="float32"))
    assert cpu.geometry is not None
    batch = np.stack([cpu.prepare(decode(p.read_bytes(), Limits(50 << 20, 10**8, frozenset({"JPEG", "PNG"}))))
                      for p in photos])
    want = cpu.predict(batch)
    # two staged batches in flight at once, as the overlapped engine does: the pinned buffers alternate
    first = gpu.launch(gpu.stage(batch))
    second = gpu.launch(gpu.stage(batch[::-1].copy()))
    for got in (gpu.collect(first), gpu.collect(second)[::-1]):
        for a, b in zip(got, want, strict=True):
            assert a.label == b.label and a.score == pytest.approx(b.score, abs=1e-3)


@pytest.mark.gpu
@cuda
def test_engine_on_cuda_with_device_decode_and_overlap(tiny_vit: Path, corpus: Corpus) -> None:
    s = Settings(device="cuda", max_pixels=CORPUS_MAX_PIXELS, batch_size=4, gpu_decode=True)
    clf = load_classifier(str(tiny_vit), s)
    source = parse_source(str(corpus.folder))
    stores = Stores(s, local_root=source.root)
    with Engine([clf], stores, s) as engine:
        assert engine.device_jpeg is not None
        records = {r.uri.rsplit("/", 1)[-1]: r for b in engine.run(list(iter_source(source, stores))) for r in b}
        assert engine.stats.seconds.get("decode_device", 0) > 0
    for name, expected in corpus.expected.items():
        assert (records[name].status if expected == "ok" else records[name].error_kind) == expected, name
