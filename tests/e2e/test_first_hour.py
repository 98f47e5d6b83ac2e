"""A new user's first hour with `labelq run` (issue 12): results they can trust, mistakes caught before the
model loads, progress they can read, models from the cache when the hub is unreachable."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from labelq.config import Settings
from labelq.embedded import run_embedded
from labelq.records import read_records
from labelq.storage import file_uri
from labelq.testing import CORPUS_MAX_PIXELS
from tests.e2e.conftest import PHOTOS, RUN_ENV, Result, labelq
from tests.unit.test_first_hour import UNREACHABLE, fake_cache

SUMMARY = re.compile(r"labelled (\d+) images?, (\d+) failed, (\d+) skipped as already done \((\d+) records?\)")
JOB = re.compile(r"^job (\S+) ", re.MULTILINE)


def counts(result: Result) -> tuple[int, int, int, int]:
    match = SUMMARY.search(result.flat_stdout)
    assert match, result.stdout + result.stderr
    labelled, failed, skipped, records = (int(g) for g in match.groups())
    return labelled, failed, skipped, records


def keyed(records: list[Any]) -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for rec in records:
        d = rec if isinstance(rec, dict) else rec.to_dict()
        out[(d["uri"], d["model"])] = d
    return out


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Three real photos and one file that is not an image."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in sorted(PHOTOS.glob("*.jpg"))[:3]:
        shutil.copy2(p, folder / p.name)
    (folder / "notes.jpg").write_bytes(b"this is not a JPEG")
    return folder


def settings(tiny_vit: Path, tmp_path: Path, **kw: Any) -> Settings:
    return Settings(models=[str(tiny_vit)], device="cpu", batch_size=2, db_url=f"sqlite:///{tmp_path / 'r.db'}",
                    max_pixels=CORPUS_MAX_PIXELS, **kw)


# ---------------------------------------------------------------- --out holds every object; export reads any job


def test_rerun_never_shrinks_out_and_export_reads_the_run(photos: Path, tiny_vit: Path, tmp_path: Path) -> None:
    args = ["run", str(photos), "--model", str(tiny_vit), "--db", f"sqlite:///{tmp_path / 'r.db'}", "--quiet",
            "--out", "deep/er/r.jsonl"]
    first = labelq(*args, "--strict", cwd=tmp_path, env=RUN_ENV)
    assert first.returncode == 1, first.stderr  # --strict: one image failed
    assert counts(first) == (3, 1, 0, 4)  # not "labelled 4 images" when one failed
    out = tmp_path / "deep" / "er" / "r.jsonl"  # missing folders were made
    before = keyed([json.loads(line) for line in out.read_text().splitlines()])
    assert {uri for uri, _ in before} == {file_uri(p) for p in photos.iterdir()}

    again = labelq(*args, cwd=tmp_path, env=RUN_ENV)
    assert again.returncode == 0, again.stderr
    assert counts(again) == (0, 0, 4, 0)
    assert keyed([json.loads(line) for line in out.read_text().splitlines()]) == before  # not 0 bytes
    job = JOB.search(again.stdout)
    assert job and job.group(1) == JOB.search(first.stdout).group(1)  # type: ignore[union-attr]
    assert all(rec["job"] == job.group(1) for rec in before.values())

    # No Redis to ask (or a job book that does not know the name): the run's result table answers.
    for name, env in (("e.jsonl", {"LABELQ_BROKER_URL": "redis://127.0.0.1:1/0"}), ("e.csv", {}), ("e.parquet", {})):
        exported = labelq("export", job.group(1), "--db", f"sqlite:///{tmp_path / 'r.db'}", "-o", f"x/{name}",
                          cwd=tmp_path, env=env)
        assert exported.returncode == 0, exported.stderr
        assert "wrote 4 records" in exported.stderr
        assert keyed(read_records(tmp_path / "x" / name)) == before, name

    missing = labelq("export", "no-such-job", "--db", f"sqlite:///{tmp_path / 'r.db'}", cwd=tmp_path,
                     env={"LABELQ_BROKER_URL": "redis://127.0.0.1:1/0"})
    assert missing.returncode == 2 and missing.stderr.startswith("error: no such job: no-such-job")
    assert len(missing.stderr.strip().splitlines()) == 1


def test_interrupted_run_then_rerun_leaves_one_file_with_all(
    photos: Path, tiny_vit: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import labelq.engine

    real_run = labelq.engine.Engine.run

    def one_batch_then_ctrl_c(self: Any, refs: Any, **kw: Any) -> Any:
        for i, records in enumerate(real_run(self, refs, **kw)):
            if i == 1:
                raise KeyboardInterrupt
            yield records

    out = tmp_path / "r.parquet"
    monkeypatch.setattr(labelq.engine.Engine, "run", one_batch_then_ctrl_c)
    cut = run_embedded(str(photos), settings(tiny_vit, tmp_path), out_file=out, progress=False)
    assert cut.interrupted and cut.images == 2
    assert len(read_records(out)) == 2  # what was labelled before Ctrl-C is in the file

    monkeypatch.setattr(labelq.engine.Engine, "run", real_run)
    rest = run_embedded(str(photos), settings(tiny_vit, tmp_path), out_file=out, progress=False)
    assert (rest.interrupted, rest.images, rest.skipped) == (False, 2, 2)
    assert sorted(r.uri for r in read_records(out)) == sorted(file_uri(p) for p in photos.iterdir())
    assert not list(tmp_path.glob(".*.partial"))


# ---------------------------------------------------------------- manifests name files anywhere


def test_manifest_paths_outside_its_folder_are_labelled(photos: Path, tiny_vit: Path, tmp_path: Path) -> None:
    lists = tmp_path / "lists"
    lists.mkdir()
    jpgs = sorted(photos.glob("*.jpg"))[:3]
    manifest = lists / "m.txt"
    manifest.write_text(f"{jpgs[0]}\n{file_uri(jpgs[1])}\n../photos/{jpgs[2].name}\n")
    s = settings(tiny_vit, tmp_path)
    assert s.local_root is None  # LABELQ_LOCAL_ROOT unset: the user named the files, that is enough
    result = run_embedded(str(manifest), s, progress=False)
    assert (result.labelled, result.failed, dict(result.errors)) == (3, 0, {})


# ---------------------------------------------------------------- plain mistakes: one line, exit 2, no model load


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("out-under-a-file", "is a file, not a folder"),
        ("empty-folder", "no images in"),
        ("missing-model-folder", "cannot load model './models/vit': the folder ./models/vit does not exist"),
        ("missing-source", "source not found"),
        ("bad-out-format", "unknown export format 'txt'"),
    ],
)
def test_plain_mistakes_stop_before_any_model_load(
    case: str, says: str, photos: Path, tiny_vit: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    import labelq.models
    from labelq.cli import app

    def no_load(*a: Any, **kw: Any) -> Any:
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(labelq.models, "load_classifier", no_load)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    (tmp_path / "empty").mkdir()
    source = {"empty-folder": "empty", "missing-source": "no/such/folder"}.get(case, str(photos))
    out = {"out-under-a-file": "afile/r.jsonl", "bad-out-format": "r.txt"}.get(case, "r.jsonl")
    model = "./models/vit" if case == "missing-model-folder" else str(tiny_vit)
    result = CliRunner().invoke(app, ["run", source, "--model", model, "--out", out, "--db", "sqlite:///r.db"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], result.output


# ---------------------------------------------------------------- progress: a bar with a total and an ETA


def test_progress_bar_has_total_percentage_and_eta(photos: Path, tiny_vit: Path, tmp_path: Path) -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=200)
    run_embedded(str(photos), settings(tiny_vit, tmp_path), progress=True, console=console)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue())
    assert "/4" in text and "%" in text and "ETA" in text, text


def test_s3_style_listing_shows_listed_so_far_then_a_bar() -> None:
    from labelq.embedded import Summary, _Bar, _Listed
    from labelq.storage import ObjectRef

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=200)
    listing = _Listed(iter([ObjectRef(f"s3://b/{i}.jpg") for i in range(5)]), None)
    bar = _Bar(console, None, listing)
    it = iter(listing)
    for _ in range(3):
        next(it)
    summary = Summary(labelled=1)
    bar.advance(summary)
    task = bar.progress.tasks[0]
    assert task.total is None and task.fields["listed"].startswith("listed 3 (")
    list(it)
    bar.advance(summary)
    assert task.total == 5 and task.fields["listed"] == ""


# ---------------------------------------------------------------- a cached hub model, the hub unreachable


def test_cached_hub_model_labels_with_the_hub_unreachable(photos: Path, tiny_vit: Path, tmp_path: Path) -> None:
    home = tmp_path / "hf"
    fake_cache(home / "hub", "acme/tiny-vit", tiny_vit)
    env = {**RUN_ENV, "HF_HOME": str(home), "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0",
           "HF_ENDPOINT": UNREACHABLE}
    ok = labelq("run", str(photos), "--model", "acme/tiny-vit", "--db", f"sqlite:///{tmp_path / 'r.db'}", "-q",
                cwd=tmp_path, env=env)
    assert ok.returncode == 0, ok.stderr
    assert counts(ok)[:2] == (3, 1)
    assert "Retrying" not in ok.stderr and "Traceback" not in ok.stderr, ok.stderr

    missing = labelq("run", str(photos), "--model", "acme/not-cached", "--db", f"sqlite:///{tmp_path / 'r.db'}",
                     cwd=tmp_path, env=env)
    assert missing.returncode == 2
    lines = missing.stderr.strip().splitlines()
    assert len(lines) == 1, missing.stderr  # once, no retry warnings
    assert lines[0].startswith("error: cannot load model 'acme/not-cached': the Hugging Face hub is unreachable")
    assert "labelq model pull acme/not-cached --to DIR" in lines[0]

    listed = labelq("model", "ls", cwd=tmp_path, env=env)
    assert listed.returncode == 0 and "acme/tiny-vit" in listed.stdout and "aaaaaaaaaaaa" in listed.stdout

