"""The test helpers themselves: tiny models load through the Auto classes, the corpus is what it says."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageOps, UnidentifiedImageError

from labelq.errors import ERROR_KINDS
from labelq.testing import (
    BOMB_SIDE,
    CORPUS_MAX_PIXELS,
    Corpus,
    build_timm,
    build_vit,
    make_corpus,
    make_photos,
    timm_label_names,
)


def _images(n: int = 2) -> list[Image.Image]:
    rng = np.random.default_rng(1)
    return [Image.fromarray(rng.integers(0, 256, (300 + 20 * i, 400, 3), dtype=np.uint8)) for i in range(n)]


def _logits(folder: Path) -> tuple[Any, Any, Any]:
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    pixels = processor(images=_images(), return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        logits = model(pixel_values=pixels).logits
    return model, processor, logits


# ---------------------------------------------------------------- ViT


def test_vit_loads_through_auto_classes(tiny_vit: Path) -> None:
    model, processor, logits = _logits(tiny_vit)
    assert type(model).__name__ == "ViTForImageClassification"
    assert type(processor).__name__.startswith("ViTImageProcessor")
    assert tuple(logits.shape) == (2, 2)
    assert model.config.id2label == {0: "normal", 1: "nsfw"}
    assert model.config.hidden_size == 32
    assert model.config.num_hidden_layers == 2


def test_vit_processor_mirrors_falconsai(tiny_vit: Path) -> None:
    saved = json.loads((tiny_vit / "preprocessor_config.json").read_text())
    assert saved["size"] == {"height": 224, "width": 224}
    assert saved["resample"] == 2
    assert saved["image_mean"] == saved["image_std"] == [0.5, 0.5, 0.5]
    assert saved["do_resize"] is saved["do_rescale"] is saved["do_normalize"] is True
    assert saved["rescale_factor"] == pytest.approx(1 / 255)


def test_vit_is_deterministic(tmp_path: Path) -> None:
    first = (build_vit(tmp_path / "a") / "model.safetensors").read_bytes()
    second = (build_vit(tmp_path / "b") / "model.safetensors").read_bytes()
    other = (build_vit(tmp_path / "c", seed=1) / "model.safetensors").read_bytes()
    assert first == second
    assert first != other


# ---------------------------------------------------------------- timm


def test_timm_loads_through_auto_classes(tiny_timm: Path) -> None:
    model, processor, logits = _logits(tiny_timm)
    assert type(model).__name__ == "TimmWrapperForImageClassification"
    assert type(processor).__name__ == "TimmWrapperImageProcessor"
    assert tuple(logits.shape) == (2, 1000)
    assert model.config.id2label[0] == "tench, Tinca tinca"
    assert model.config.id2label[999] == timm_label_names(1000)[999]
    assert len(model.config.id2label) == 1000


def test_timm_hub_layout(tiny_timm: Path) -> None:
    assert sorted(p.name for p in tiny_timm.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((tiny_timm / "config.json").read_text())
    assert config["architecture"] == "mobilenetv3_small_100"
    assert config["num_classes"] == len(config["label_names"]) == 1000
    assert "model_args" not in config  # its num_classes would reach timm.create_model twice
    cfg = config["pretrained_cfg"]
    assert cfg["input_size"] == [3, 224, 224]
    assert cfg["interpolation"] == "bicubic"
    assert (cfg["crop_pct"], cfg["crop_mode"]) == (0.875, "center")
    assert (cfg["mean"], cfg["std"]) == ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def test_timm_weights_are_the_timm_models(tiny_timm: Path) -> None:
    """The wrapper loads the saved weights (not a fresh random init): same logits as timm itself."""
    import timm
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForImageClassification

    wrapped = AutoModelForImageClassification.from_pretrained(tiny_timm).eval()
    native = timm.create_model("mobilenetv3_small_100", pretrained=False, num_classes=1000)
    native.load_state_dict(load_file(tiny_timm / "model.safetensors"))
    native.eval()
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.allclose(wrapped(pixel_values=pixels).logits, native(pixels), atol=1e-5)


def test_timm_few_classes(tmp_path: Path) -> None:
    from transformers import AutoModelForImageClassification

    folder = build_timm(tmp_path / "m", num_classes=3)
    model = AutoModelForImageClassification.from_pretrained(folder)
    assert model.config.id2label == {0: "class_0", 1: "class_1", 2: "class_2"}
    assert model.config.num_labels == 3


def test_timm_processor_geometry(tiny_timm: Path) -> None:
    """Resize the short side to 224 / 0.875 = 256 (bicubic), centre-crop 224: what timm's eval transform does."""
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(tiny_timm)
    names = [type(t).__name__ for t in processor.val_transforms.transforms]
    assert names[:2] == ["Resize", "CenterCrop"]
    resize, crop = processor.val_transforms.transforms[:2]
    assert (resize.size, resize.interpolation.value) == (256, "bicubic")
    assert tuple(crop.size) == (224, 224)
    wide = Image.new("RGB", (640, 100))
    assert tuple(processor(wide)["pixel_values"].shape) == (1, 3, 224, 224)


# ---------------------------------------------------------------- corpus and photos


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    folder = tmp_path_factory.mktemp("corpus-unit")
    return Corpus(folder, make_corpus(folder))


def test_corpus_writes_every_file_with_an_expectation(written: Corpus) -> None:
    on_disk = sorted(p.name for p in written.folder.iterdir())
    assert on_disk == sorted(written.expected)
    assert len(written.valid) == 18
    assert set(written.expected.values()) <= {"ok", *ERROR_KINDS}
    assert written.broken == {
        "bomb.png": "decompression_bomb",
        "empty.jpg": "not_an_image",
        "html_page.png": "not_an_image",
        "ppm_content.jpg": "unsupported",
        "random_bytes.jpg": "not_an_image",
        "truncated.jpg": "corrupt",
    }


def test_corpus_valid_images_decode_and_differ(written: Corpus) -> None:
    digests = set()
    modes = set()
    for name in written.valid:
        with Image.open(written.folder / name) as image:
            modes.add(image.mode)
            image.load()
            digests.add(np.asarray(image.convert("RGB")).tobytes().__hash__())
    assert len(digests) == len(written.valid)
    assert {"RGB", "RGBA", "I;16", "P", "LA", "1", "L", "CMYK"} <= modes


def test_corpus_special_cases(written: Corpus, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # whatever labelq.images set it to
    folder = written.folder
    with Image.open(folder / "exif_rotated.jpg") as image:
        assert image.getexif()[0x0112] == 6
        assert ImageOps.exif_transpose(image).size == (480, 640)
    with Image.open(folder / "animated.gif") as image:
        assert getattr(image, "n_frames", 1) == 3
    with Image.open(folder / "progressive.jpg") as image:
        assert image.info.get("progressive") or image.info.get("progression")
    with Image.open(folder / "ppm_content.jpg") as image:
        assert image.format == "PPM"
    with Image.open(folder / "bomb.png") as image:
        assert image.size == (BOMB_SIDE, BOMB_SIDE)
    assert (folder / "bomb.png").stat().st_size < 64 * 1024
    assert BOMB_SIDE**2 > 2 * CORPUS_MAX_PIXELS > 2 * 1920 * 1080
    with pytest.raises(OSError, match="truncated"), Image.open(folder / "truncated.jpg") as image:
        image.load()
    for name in ("empty.jpg", "random_bytes.jpg", "html_page.png"):
        with pytest.raises(UnidentifiedImageError):
            Image.open(io.BytesIO((folder / name).read_bytes()))


def test_corpus_is_deterministic(tmp_path: Path) -> None:
    make_corpus(tmp_path / "a")
    make_corpus(tmp_path / "b", seed=1)
    assert (tmp_path / "a" / "baseline.jpg").read_bytes() != (tmp_path / "b" / "baseline.jpg").read_bytes()
    make_corpus(tmp_path / "c")
    assert (tmp_path / "a" / "baseline.jpg").read_bytes() == (tmp_path / "c" / "baseline.jpg").read_bytes()


def test_make_photos(tmp_path: Path) -> None:
    paths = make_photos(tmp_path, 3, size=(1920, 1080))
    assert len({p.read_bytes() for p in paths}) == 3
    for path in paths:
        with Image.open(path) as image:
            assert (image.format, image.size, image.mode) == ("JPEG", (1920, 1080), "RGB")
            assert np.asarray(image).std() > 20  # textured, not flat
        assert 100_000 < path.stat().st_size < 2_000_000


def test_corpus_fixture(corpus: Corpus) -> None:
    assert (corpus.folder / "full_hd.jpg").is_file()
    assert corpus.expected["full_hd.jpg"] == "ok"
