"""images.py: decode every accepted format and mode to RGB, typed errors, limits, geometry, draft mode."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from labelq.config import DEFAULT_FORMATS
from labelq.errors import ERROR_KINDS, LabelqError
from labelq.images import Geometry, Limits, decode, decode_fit, fit
from labelq.testing import CORPUS_MAX_PIXELS, Corpus, bomb_png

LIMITS = Limits(max_bytes=50 * 1024 * 1024, max_pixels=CORPUS_MAX_PIXELS, formats=frozenset(DEFAULT_FORMATS))
BIG = Limits(max_bytes=50 * 1024 * 1024, max_pixels=100_000_000, formats=frozenset(DEFAULT_FORMATS))
LINUX_ONLY = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
# The two default models' geometries, as derive_preprocessing gives them (checked in test_models.py).
VIT = Geometry(resize=(224, 224), shortest=None, crop=None, resample="bilinear")
TIMM = Geometry(resize=None, shortest=256, crop=(224, 224), resample="bicubic", crop_round=True)


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def limits(**overrides: object) -> Limits:
    values = {"max_bytes": LIMITS.max_bytes, "max_pixels": LIMITS.max_pixels, "formats": LIMITS.formats, **overrides}
    return Limits(**values)  # type: ignore[arg-type]


# ---------------------------------------------------------------- the corpus


def test_every_valid_corpus_file_decodes_to_rgb_of_its_displayed_size(corpus: Corpus) -> None:
    assert len(corpus.valid) == 18
    for name in corpus.valid:
        data = (corpus.folder / name).read_bytes()
        with Image.open(io.BytesIO(data)) as source:
            stored = source.size
        image = decode(data, LIMITS)
        assert image.mode == "RGB", name
        expected = (stored[1], stored[0]) if name == "exif_rotated.jpg" else stored
        assert image.size == expected, name
        assert np.asarray(image).shape == (expected[1], expected[0], 3), name


def test_exif_rotation_swaps_width_and_height(corpus: Corpus) -> None:
    data = (corpus.folder / "exif_rotated.jpg").read_bytes()
    with Image.open(io.BytesIO(data)) as source:
        assert source.size == (640, 480)
        assert source.getexif().get(0x0112) == 6
    assert decode(data, LIMITS).size == (480, 640)


def test_every_broken_corpus_file_raises_its_error_kind_with_a_message(corpus: Corpus) -> None:
    assert set(corpus.broken.values()) == {"not_an_image", "corrupt", "unsupported", "decompression_bomb"}
    for name, kind in corpus.broken.items():
        data = (corpus.folder / name).read_bytes()
        with pytest.raises(LabelqError) as caught:
            decode(data, LIMITS)
        assert caught.value.kind == kind, f"{name}: {caught.value.kind}: {caught.value}"
        assert caught.value.kind in ERROR_KINDS
        assert str(caught.value).strip(), name


def test_broken_files_also_fail_cleanly_on_the_fast_path(corpus: Corpus) -> None:
    for name, kind in corpus.broken.items():
        with pytest.raises(LabelqError) as caught:
            decode_fit((corpus.folder / name).read_bytes(), LIMITS, [VIT, TIMM])
        assert caught.value.kind == kind, name


def test_html_and_text_are_named_in_the_message(corpus: Corpus) -> None:
    with pytest.raises(LabelqError, match="HTML"):
        decode((corpus.folder / "html_page.png").read_bytes(), LIMITS)
    with pytest.raises(LabelqError, match="0 bytes"):
        decode(b"", LIMITS)


# ---------------------------------------------------------------- modes, with pixel values


def test_exif_rotation_moves_pixels() -> None:
    # Stored 64x32: left half red, right half blue. Orientation 6 = rotate 90 degrees clockwise to display,
    # so the displayed 32x64 image has red on top and blue below.
    stored = Image.new("RGB", (64, 32), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 32, 32))
    exif = Image.Exif()
    exif[0x0112] = 6
    image = decode(encode(stored, "JPEG", quality=95, exif=exif), LIMITS)
    assert image.size == (32, 64)
    top, bottom = np.asarray(image)[8, 16].astype(int), np.asarray(image)[56, 16].astype(int)
    assert top[0] > 200 and top[2] < 60, top
    assert bottom[2] > 200 and bottom[0] < 60, bottom


def test_animated_gif_gives_the_first_frame(corpus: Corpus) -> None:
    frames = [
        Image.new("RGB", (20, 10), colour).quantize(colors=4) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))
    ]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(io.BytesIO(data)) as source:
        assert source.n_frames == 3
    image = decode(data, LIMITS)
    assert image.getpixel((5, 5)) == (255, 0, 0)

    corpus_gif = (corpus.folder / "animated.gif").read_bytes()
    with Image.open(io.BytesIO(corpus_gif)) as source:
        first = np.asarray(source.convert("RGB"))
        source.seek(2)
        third = np.asarray(source.convert("RGB"))
    decoded = np.asarray(decode(corpus_gif, LIMITS))
    assert np.array_equal(decoded, first)
    assert not np.array_equal(decoded, third)


def test_cmyk_converts_to_rgb() -> None:
    cmyk = Image.new("CMYK", (4, 2), (0, 0, 0, 0))  # no ink: white
    cmyk.putpixel((1, 0), (255, 0, 0, 0))  # cyan
    cmyk.putpixel((2, 0), (0, 0, 0, 255))  # key: black
    image = decode(encode(cmyk, "TIFF"), LIMITS)
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((1, 0)) == (0, 255, 255)
    assert image.getpixel((2, 0)) == (0, 0, 0)


def test_cmyk_jpeg_of_the_corpus_matches_pillows_conversion(corpus: Corpus) -> None:
    data = (corpus.folder / "cmyk.jpg").read_bytes()
    with Image.open(io.BytesIO(data)) as source:
        assert source.mode == "CMYK"
        expected = np.asarray(source.convert("RGB"))
    assert np.array_equal(np.asarray(decode(data, LIMITS)), expected)


def test_sixteen_bit_grey_scales_to_eight_bits() -> None:
    values = np.array([[0, 65535, 128 * 257, 1000]], dtype=np.uint16)
    source = Image.fromarray(values)
    assert source.mode.startswith("I;16")
    image = decode(encode(source, "PNG"), LIMITS)
    row = np.asarray(image)[0]
    assert row[:, 0].tolist() == [0, 255, 128, 4]  # 1000 / 257 = 3.9
    assert (row[:, 0] == row[:, 1]).all() and (row[:, 1] == row[:, 2]).all()


def test_sixteen_bit_corpus_file_keeps_its_levels(corpus: Corpus) -> None:
    data = (corpus.folder / "gray16.png").read_bytes()
    with Image.open(io.BytesIO(data)) as source:
        assert source.mode.startswith("I;16")
        levels = np.asarray(source).astype(np.float64) / 257.0  # written as L * 257
    decoded = np.asarray(decode(data, LIMITS))[:, :, 0].astype(np.float64)
    assert np.abs(decoded - levels).max() <= 0.5 + 1e-9


def test_palette_with_transparency_is_composited_on_white() -> None:
    palette = Image.new("P", (3, 1), 0)
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * (254 * 3))  # index 0 red, index 1 blue
    palette.putpixel((1, 0), 1)
    image = decode(encode(palette, "PNG", transparency=0), LIMITS)
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 255, 255)  # transparent red: white, not red
    assert image.getpixel((1, 0)) == (0, 0, 255)
    # Without transparency the same palette decodes to its colours.
    assert decode(encode(palette, "PNG"), LIMITS).getpixel((0, 0)) == (255, 0, 0)


def test_palette_corpus_file_is_white_where_transparent(corpus: Corpus) -> None:
    data = (corpus.folder / "palette_transparent.png").read_bytes()
    with Image.open(io.BytesIO(data)) as source:
        assert source.mode == "P" and source.info.get("transparency") == 0
        transparent = np.asarray(source) == 0
    assert transparent.any()
    decoded = np.asarray(decode(data, LIMITS))
    assert (decoded[transparent] == 255).all()


def test_grey_alpha_is_composited_on_white() -> None:
    la = Image.new("LA", (3, 1))
    la.putpixel((0, 0), (0, 0))  # fully transparent black
    la.putpixel((1, 0), (0, 255))  # opaque black
    la.putpixel((2, 0), (100, 128))  # half-transparent grey
    image = decode(encode(la, "PNG"), LIMITS)
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((1, 0)) == (0, 0, 0)
    expected = 100 * 128 / 255 + 255 * (1 - 128 / 255)  # 177.2
    assert all(abs(channel - expected) <= 1 for channel in image.getpixel((2, 0)))


def test_rgba_is_composited_on_white() -> None:
    rgba = Image.new("RGBA", (2, 1), (255, 0, 0, 0))
    rgba.putpixel((1, 0), (0, 0, 200, 255))
    image = decode(encode(rgba, "PNG"), LIMITS)
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((1, 0)) == (0, 0, 200)


def test_bilevel_and_grey_become_rgb() -> None:
    bilevel = Image.new("1", (2, 1), 0)
    bilevel.putpixel((1, 0), 1)
    image = decode(encode(bilevel, "PNG"), LIMITS)
    assert (image.getpixel((0, 0)), image.getpixel((1, 0))) == ((0, 0, 0), (255, 255, 255))
    grey = decode(encode(Image.new("L", (2, 2), 77), "PNG"), LIMITS)
    assert grey.getpixel((1, 1)) == (77, 77, 77)


# ---------------------------------------------------------------- limits


def test_max_bytes_gives_too_large() -> None:
    data = encode(Image.new("RGB", (8, 8)), "PNG")
    assert decode(data, limits(max_bytes=len(data))).size == (8, 8)
    with pytest.raises(LabelqError, match="LABELQ_MAX_BYTES") as caught:
        decode(data, limits(max_bytes=len(data) - 1))
    assert caught.value.kind == "too_large"


def test_pixels_over_the_limit_are_too_large_and_over_twice_a_bomb() -> None:
    data = encode(Image.new("RGB", (100, 100)), "PNG")  # 10 000 pixels
    assert decode(data, limits(max_pixels=10_000)).size == (100, 100)
    for max_pixels in (9_999, 5_000):  # over the limit, at most twice it
        with pytest.raises(LabelqError, match="LABELQ_MAX_PIXELS") as caught:
            decode(data, limits(max_pixels=max_pixels))
        assert caught.value.kind == "too_large", max_pixels
    with pytest.raises(LabelqError, match="LABELQ_MAX_PIXELS") as caught:
        decode(data, limits(max_pixels=4_999))  # 10 000 > 2 x 4 999
    assert caught.value.kind == "decompression_bomb"


def test_formats_outside_the_accepted_list_are_unsupported() -> None:
    data = encode(Image.new("RGB", (8, 8)), "JPEG")
    with pytest.raises(LabelqError, match="JPEG") as caught:
        decode(data, limits(formats=frozenset({"PNG"})))
    assert caught.value.kind == "unsupported"


# A child process reports the peak resident memory a decode added: VmHWM of /proc/self/status, the high-water
# mark of this process image (ru_maxrss would not do: Linux carries the parent's peak into a forked child).
_PEAK_RSS = textwrap.dedent(
    """
    import json, sys
    from labelq.config import DEFAULT_FORMATS
    from labelq.errors import LabelqError
    from labelq.images import Geometry, Limits, decode, fit
    from labelq.testing import bomb_png
    side, max_pixels, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    if mode == "bomb":
        data = bomb_png(side)
    else:
        import io
        from PIL import Image
        buffer = io.BytesIO()
        Image.new("RGB", (side, 1), (90, 90, 90)).save(buffer, "PNG")
        data = buffer.getvalue()
    limits = Limits(50 * 1024 * 1024, max_pixels, frozenset(DEFAULT_FORMATS))
    timm = Geometry(None, 256, (224, 224), "bicubic", crop_round=True)
    def hwm_kib():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    before = hwm_kib()
    outcome = "ok"
    try:
        image = decode(data, limits, draft=[timm])
        if mode == "wide":
            fit(image, timm)
    except LabelqError as exc:
        outcome = exc.kind
    after = hwm_kib()
    print(json.dumps({"outcome": outcome, "bytes": len(data), "peak_mib": (after - before) / 1024}))
    """
)


def _peak(side: int, max_pixels: int, mode: str = "bomb") -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK_RSS, str(side), str(max_pixels), mode],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@LINUX_ONLY
def test_decompression_bomb_is_refused_without_allocating() -> None:
    # 12000 x 12000 = 144 Mpx declared in ~20 KB; decoding it would take 144 MiB (mode 1) + 432 MiB (RGB).
    result = _peak(12_000, 1_000_000)
    assert result["outcome"] == "decompression_bomb"
    assert result["bytes"] < 64 * 1024  # type: ignore[operator]
    assert result["peak_mib"] < 8, result  # type: ignore[operator]


@LINUX_ONLY
def test_peak_memory_measurement_sees_a_real_decode() -> None:
    # The control for the test above: the same measurement does see a 4000 x 4000 decode (16 Mpx, >= 48 MiB RGB).
    result = _peak(4_000, 20_000_000)
    assert result["outcome"] == "ok"
    assert result["peak_mib"] > 40, result  # type: ignore[operator]


_PEAK_FILE = textwrap.dedent(
    """
    import json, sys
    from labelq.config import DEFAULT_FORMATS
    from labelq.images import Geometry, Limits, decode_fit
    data = open(sys.argv[1], "rb").read()
    limits = Limits(50 * 1024 * 1024, 100_000_000, frozenset(DEFAULT_FORMATS))
    timm = Geometry(None, 256, (224, 224), "bicubic", crop_round=True)
    def hwm_kib():
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    before = hwm_kib()
    out = decode_fit(data, limits, [timm])
    after = hwm_kib()
    print(json.dumps({"shape": list(out[0].shape), "peak_mib": (after - before) / 1024}))
    """
)


@LINUX_ONLY
@pytest.mark.parametrize(("mode", "copies"), [("RGB", 1.35), ("RGBA", 2.35)])
def test_a_big_png_decodes_with_one_copy_of_its_pixels(tmp_path: Path, mode: str, copies: float) -> None:
    # Pillow keeps RGB and RGBA at 4 bytes a pixel: 4000 x 4000 is 61 MiB a copy. An RGB PNG needs its one
    # decoded copy (before: exif_transpose copied it again, 2.0 copies); an RGBA one its RGBA copy and the RGB
    # composite (before: convert + white canvas + alpha_composite + convert, 5.0 copies).
    side = 4000
    image = Image.new(mode, (side, side), (10, 200, 30, 128)[: len(mode)])
    image.paste((200, 10, 10, 255)[: len(mode)], (100, 100, 3000, 3000))
    path = tmp_path / "big.png"
    image.save(path, compress_level=1)
    del image
    proc = subprocess.run([sys.executable, "-c", _PEAK_FILE, str(path)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    copy_mib = side * side * 4 / 2**20
    assert result["shape"] == [224, 224, 3]
    assert copy_mib * 0.9 < result["peak_mib"] < copy_mib * copies, (result, copy_mib)


def _jpeg_claiming(width: int, height: int, *, progressive: bool = False) -> bytes:
    """A real 64x64 JPEG whose frame header (SOF) is patched to claim ``width`` x ``height``: its data ends
    long before the blocks it declares, and libjpeg fills them with grey and only warns."""
    data = bytearray(encode(Image.new("RGB", (64, 64), (200, 30, 30)), "JPEG", quality=50, progressive=progressive))
    sof = data.index(b"\xff\xc2" if progressive else b"\xff\xc0")
    data[sof + 5:sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def _cut(data: bytes, keep: int) -> bytes:
    """The first ``keep`` bytes closed with an EOI marker, as a broken upload or a crafted file is."""
    return data[:keep] + b"\xff\xd9"


@pytest.mark.parametrize("progressive", [False, True])
@pytest.mark.parametrize("fast", [False, True])
def test_a_jpeg_claiming_10000x10000_with_its_data_cut_is_corrupt_not_grey(progressive: bool, fast: bool) -> None:
    data = _jpeg_claiming(10_000, 10_000, progressive=progressive)
    with pytest.raises(LabelqError) as caught:
        decode_fit(data, BIG, [TIMM, VIT], fast=fast)
    assert caught.value.kind == "corrupt"
    assert "truncated" in str(caught.value) and "10000x10000" in str(caught.value)


@pytest.mark.parametrize("progressive", [False, True])
def test_a_real_jpeg_cut_short_and_closed_with_eoi_is_corrupt(progressive: bool) -> None:
    whole = encode(Image.new("RGB", (3000, 2000), (200, 30, 30)), "JPEG", quality=50, progressive=progressive)
    assert decode(whole, BIG, draft=[TIMM]).getpixel((10, 10)) == pytest.approx((200, 30, 30), abs=3)
    with pytest.raises(LabelqError) as caught:
        decode(_cut(whole, 3000), BIG, draft=[TIMM])
    assert caught.value.kind == "corrupt"


def test_a_jpeg_cut_without_an_eoi_is_corrupt_and_a_whole_one_decodes() -> None:
    data = encode(Image.new("RGB", (2000, 1500), (200, 30, 30)), "JPEG", quality=50)
    with pytest.raises(LabelqError) as caught:
        decode(data[: len(data) // 2], BIG, draft=[TIMM])
    assert caught.value.kind == "corrupt"
    assert decode(data, BIG, draft=[TIMM]).getpixel((10, 10)) == pytest.approx((200, 30, 30), abs=3)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # nothing turned Pillow's grey padding on


@pytest.mark.parametrize(("side", "kind"), [(10_001, "too_large"), (20_001, "decompression_bomb")])
def test_a_jpeg_header_over_the_pixel_limit_is_refused_before_any_decoding(side: int, kind: str) -> None:
    # A 64x64 image's data only: decoding would call it corrupt, so the kind proves the limit came first.
    data = _jpeg_claiming(side, 10_000)
    with pytest.raises(LabelqError) as caught:
        decode(data, BIG, draft=[TIMM])
    assert caught.value.kind == kind
    assert "LABELQ_MAX_PIXELS" in str(caught.value)


@LINUX_ONLY
def test_extreme_aspect_ratio_does_not_blow_up_the_fast_resize() -> None:
    # A 2000 x 1 PNG (2 000 pixels, under 100 bytes) passes every limit. timm's geometry scales the SHORT side to
    # 256 before cropping: resize-then-crop builds a 512 000 x 256 RGB intermediate (~375 MiB, measured +525 MiB
    # peak before fit() resampled only the cropped box) to keep 224 x 224 of it; 100 000 x 1 would ask for ~18 GiB.
    # The fast path must never allocate far beyond its output.
    result = _peak(2_000, 20_000_000, mode="wide")
    assert result["outcome"] == "ok"
    assert result["peak_mib"] < 64, result  # type: ignore[operator]


def test_bomb_png_helper_declares_what_it_says() -> None:
    data = bomb_png(3_000)
    with Image.open(io.BytesIO(data)) as source:
        assert source.size == (3_000, 3_000)
    with pytest.raises(LabelqError) as caught:
        decode(data, limits(max_pixels=1_000_000))
    assert caught.value.kind == "decompression_bomb"


# ---------------------------------------------------------------- geometry


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (1, 1), (4000, 10), (225, 224), (301, 257)])
def test_fit_vit_squashes_to_224(size: tuple[int, int]) -> None:
    image = Image.new("RGB", size, (10, 20, 30))
    out = fit(image, VIT)
    assert out.shape == (224, 224, 3)
    assert out.dtype == np.uint8
    assert (out == (10, 20, 30)).all()


@pytest.mark.parametrize(
    ("size", "resized"),
    [((640, 480), (341, 256)), ((480, 640), (256, 341)), ((256, 256), (256, 256)), ((1920, 1080), (455, 256))],
)
def test_fit_timm_shortest_edge_then_centre_crop(size: tuple[int, int], resized: tuple[int, int]) -> None:
    assert TIMM.resized_size(*size) == resized
    rng = np.random.default_rng(sum(size))
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    out = fit(image, TIMM)
    assert out.shape == (224, 224, 3)
    # torchvision's Resize(256) + CenterCrop(224) on the PIL image is timm's eval transform. fit() resamples only the
    # cropped box of the source (Pillow's box=), whose filter weights differ by rounding: measured max 1 level on
    # ~0.05 % of values, mean < 0.001 level.
    from torchvision.transforms import CenterCrop, InterpolationMode, Resize

    reference = np.asarray(CenterCrop(224)(Resize(256, interpolation=InterpolationMode.BICUBIC)(image)))
    delta = np.abs(out.astype(np.int16) - reference.astype(np.int16))
    assert delta.max() <= 1
    assert delta.mean() < 0.01


def test_geometry_out_size() -> None:
    assert VIT.out_size == (224, 224)
    assert TIMM.out_size == (224, 224)
    with pytest.raises(ValueError):
        _ = Geometry(None, 256, None, "bilinear").out_size


# ---------------------------------------------------------------- draft mode


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    y, x = np.mgrid[0:3000, 0:4000]
    pixels = np.stack([x * 255 // 3999, y * 255 // 2999, (x + y) * 255 // 6998], axis=-1).astype(np.uint8)
    return encode(Image.fromarray(pixels), "JPEG", quality=85)


def test_draft_decodes_a_big_jpeg_at_a_reduced_scale(big_jpeg: bytes) -> None:
    assert decode(big_jpeg, BIG).size == (4000, 3000)
    assert decode(big_jpeg, BIG, draft=[VIT]).size == (500, 375)  # 1/8: still >= 224 x 224
    assert decode(big_jpeg, BIG, draft=[TIMM]).size == (500, 375)  # 1/8: short side 375 >= 256
    assert decode(big_jpeg, BIG, draft=[VIT, TIMM]).size == (500, 375)


def test_draft_never_goes_below_what_a_geometry_needs(big_jpeg: bytes) -> None:
    large = Geometry((1024, 1024), None, None, "bilinear")
    image = decode(big_jpeg, BIG, draft=[VIT, large])
    assert image.size == (2000, 1500)  # 1/4 would be 1000 x 750, under 1024
    assert fit(image, large).shape == (1024, 1024, 3)


def test_draft_works_in_displayed_orientation() -> None:
    stored = Image.new("RGB", (4000, 2000), (50, 100, 150))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(stored, "JPEG", quality=80, exif=exif)
    tall = Geometry(None, 256, (224, 224), "bicubic")  # short side (displayed width 2000) to 256
    image = decode(data, BIG, draft=[tall])
    # Resized, the displayed image is 256 x 512: 1/8 (250 x 500) is too small, 1/4 (500 x 1000) fits. Working in
    # stored axes instead would ask for 256 x 512 of a 4000 x 2000 image and stop at 1/2 (1000 x 2000 displayed).
    assert image.size == (500, 1000)


def test_draft_leaves_non_jpeg_alone() -> None:
    data = encode(Image.new("RGB", (2000, 1500)), "PNG")
    assert decode(data, BIG, draft=[VIT]).size == (2000, 1500)


def test_draft_decode_is_close_to_the_full_decode(big_jpeg: bytes) -> None:
    full = fit(decode(big_jpeg, BIG), VIT).astype(np.int16)
    drafted = fit(decode(big_jpeg, BIG, draft=[VIT]), VIT).astype(np.int16)
    assert np.abs(full - drafted).mean() < 2.0
