"""labelq as a Python library, in this process: ``labelq.label`` over every kind of input it takes."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import labelq
from labelq import Record, UsageError

VIT_LABELS = {"normal", "nsfw"}


def _png(color: tuple[int, int, int], size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_a_folder_yields_one_record_per_image_with_the_kinds_run_gives(tiny_vit: Path, corpus: Any) -> None:
    records = list(labelq.label(corpus.folder, models=[str(tiny_vit)], batch_size=4,
                                max_pixels=_corpus_pixels()))
    assert all(isinstance(r, Record) for r in records)
    by_name = {r.uri.rsplit("/", 1)[-1]: r for r in records}
    assert len(records) == len(by_name) == len(corpus.expected)
    for name, kind in corpus.expected.items():
        rec = by_name[name]
        assert rec.model == str(tiny_vit)
        if kind == "ok":
            assert rec.status == "ok" and rec.label in VIT_LABELS and 0 < rec.score <= 1, rec
        else:
            assert (rec.status, rec.error_kind) == ("error", kind), rec


def _corpus_pixels() -> int:
    from labelq.testing import CORPUS_MAX_PIXELS

    return CORPUS_MAX_PIXELS


def test_images_in_memory_pil_bytes_and_named_pairs(tiny_vit: Path) -> None:
    images = [Image.new("RGB", (80, 60), (200, 10, 10)), _png((0, 0, 200)), ("cat.png", _png((1, 2, 3))),
              ("broken", b"not an image at all"), Image.new("L", (30, 30), 7)]
    records = labelq.label(images, models=str(tiny_vit)).to_list()
    by_uri = {r.uri: r for r in records}
    assert len(records) == len(by_uri) == 5  # a batch's errors may come before its labels: look up by URI
    assert {uri: r.status for uri, r in by_uri.items()} == {
        "memory://0": "ok", "memory://1": "ok", "memory://cat.png": "ok", "memory://broken": "error",
        "memory://4": "ok"}
    assert by_uri["memory://broken"].error_kind == "not_an_image"
    assert all(r.label in VIT_LABELS for r in records if r.ok)


def test_scores_match_a_file_of_the_same_image(tiny_vit: Path, tmp_path: Path) -> None:
    data = _png((30, 120, 60), (120, 90))
    (tmp_path / "a.png").write_bytes(data)
    from_file = labelq.label([tmp_path / "a.png"], models=[str(tiny_vit)]).to_list()
    from_bytes = labelq.label(data, models=[str(tiny_vit)]).to_list()
    from_pil = labelq.label(Image.open(io.BytesIO(data)), models=[str(tiny_vit)]).to_list()
    assert from_file[0].uri == (tmp_path / "a.png").as_uri()
    assert from_file[0].top_k == from_bytes[0].top_k == from_pil[0].top_k


def test_a_list_of_paths_names_missing_files_as_not_found(tiny_vit: Path, corpus: Any, tmp_path: Path) -> None:
    good = corpus.folder / corpus.valid[0]
    records = labelq.label([str(good), tmp_path / "gone.jpg"], models=[str(tiny_vit)]).to_list()
    by_uri = {r.uri: r for r in records}
    assert by_uri[good.as_uri()].status == "ok"
    gone = by_uri[(tmp_path / "gone.jpg").as_uri()]
    assert (gone.status, gone.error_kind) == ("error", "not_found")


def test_to_arrow_and_to_pandas_have_the_export_columns(tiny_vit: Path, corpus: Any) -> None:
    from labelq.records import FIELDS

    table = labelq.label([corpus.folder / n for n in corpus.valid[:3]], models=[str(tiny_vit)]).to_arrow()
    assert table.column_names == list(FIELDS) and table.num_rows == 3
    frame = labelq.label([corpus.folder / n for n in corpus.valid[:2]], models=[str(tiny_vit)]).to_pandas()
    assert list(frame.columns) == list(FIELDS) and len(frame) == 2
    assert set(frame["label"]) <= VIT_LABELS


def test_two_models_and_a_result_table_that_skips_what_is_done(tiny_vit: Path, tiny_timm: Path, corpus: Any,
                                                                 tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    files = [corpus.folder / n for n in corpus.valid[:3]]
    models = [str(tiny_vit), str(tiny_timm)]
    first = labelq.label(files, models=models, db=db, job="nb").to_list()
    assert len(first) == 6 and {r.model for r in first} == set(models)
    assert all(r.job == "nb" for r in first)
    # the same files again: nothing relabelled, the stored records come back (re-filed under the new job)
    again = labelq.label(files, models=models, db=db, job="nb2").to_list()
    assert sorted((r.uri, r.model, r.processed_at) for r in again) == sorted(
        (r.uri, r.model, r.processed_at) for r in first)
    assert {r.job for r in again} == {"nb2"}
    forced = labelq.label(files[:1], models=models, db=db, job="nb3", force=True).to_list()
    assert len(forced) == 2 and all(r.processed_at not in {f.processed_at for f in first} for r in forced)
    from labelq.results import open_store

    store = open_store(db)
    try:
        assert len(list(store.iter_records("nb"))) == 6 and len(list(store.iter_records("nb2"))) == 6
    finally:
        store.close()


def test_errors_are_exceptions_with_the_cli_s_one_line(tiny_vit: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="source not found"):
        next(iter(labelq.label(tmp_path / "nowhere", models=[str(tiny_vit)])))
    with pytest.raises(UsageError, match="missing-model"):
        next(iter(labelq.label(_png((1, 1, 1)), models=[str(tmp_path / "missing-model")])))
    with pytest.raises(UsageError, match="PIL image or image bytes"):
        labelq.label([3.5], models=[str(tiny_vit)]).to_list()
    with pytest.raises(UsageError, match="LABELQ_BATCH_SIZE"):
        labelq.label(_png((1, 1, 1)), models=[str(tiny_vit)], batch_size=0)


def test_import_is_cheap_and_nothing_loads_until_iterated(tiny_vit: Path) -> None:
    code = (
        "import sys, labelq\n"
        f"labels = labelq.label(b'', models=[{str(tiny_vit)!r}])\n"
        "assert 'torch' not in sys.modules, 'torch imported before iteration'\n"
        "client_cls = labelq.Client\n"
        "assert 'torch' not in sys.modules and 'celery' not in sys.modules\n"
        "print('cheap')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "cheap" in out.stdout, out.stderr


def test_the_python_api_example_runs(tmp_path: Path) -> None:
    """examples/python_api.py, the README's notebook-style example, end to end (offline: a tiny model)."""
    example = Path(__file__).resolve().parents[2] / "examples" / "python_api.py"
    out = subprocess.run([sys.executable, str(example), "--offline", str(tmp_path)], capture_output=True,
                         text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "labelled 6 images, 0 errors" in out.stdout and "memory://coffee" in out.stdout
