"""A new user's first hour (issue 12), the parts that need no model run: getting a model, clear one-line
errors before anything heavy is loaded, output paths checked first, lazy imports."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from labelq import hub
from labelq.config import load_settings
from labelq.embedded import default_job, prepare_output
from labelq.errors import UsageError
from labelq.models import check_model
from labelq.sources import parse_source

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: connection refused at once


def fake_cache(cache: Path, repo: str, model_folder: Path, commit: str = "a" * 40) -> Path:
    """A Hugging Face hub cache holding ``repo`` at ``commit`` (refs/main), files copied from a model folder."""
    root = cache / ("models--" + repo.replace("/", "--"))
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in model_folder.iterdir():
        shutil.copy2(f, snapshot / f.name)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture
def unreachable_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", UNREACHABLE)


# ---------------------------------------------------------------- model names: folders


def test_a_missing_folder_says_the_folder_does_not_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError) as info:
        check_model("./models/vit")
    message = str(info.value)
    assert message.startswith("cannot load model './models/vit': the folder ./models/vit does not exist"), message
    assert "Repo id" not in message and "\n" not in message


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda p: p.mkdir(), "has no config.json"),
        (lambda p: (p.mkdir(), (p / "config.json").write_text("{}")), "names no model_type"),
        (lambda p: (p.mkdir(), (p / "config.json").write_text('{"model_type": "vit"}')), "no weights"),
        (lambda p: (p.mkdir(), (p / "config.json").write_text("{not json")), "cannot read its config.json"),
        (lambda p: p.write_text("x"), "it is a file"),
    ],
    ids=["empty-folder", "no-model-type", "no-weights", "bad-json", "a-file"],
)
def test_a_folder_that_is_not_a_model_is_one_line(make: Any, says: str, tmp_path: Path) -> None:
    target = tmp_path / "m"
    make(target)
    with pytest.raises(UsageError) as info:
        check_model(str(target))
    assert str(info.value).startswith(f"cannot load model {str(target)!r}: ")
    assert says in str(info.value) and "\n" not in str(info.value)


def test_model_folders_of_both_kinds_resolve(tiny_vit: Path, tiny_timm: Path) -> None:
    for folder in (tiny_vit, tiny_timm):
        check_model(str(folder))
        resolved = hub.resolve(str(folder))
        assert (resolved.folder, resolved.offline) == (folder.resolve(), True)


def test_check_model_imports_no_torch(tiny_vit: Path, tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from labelq.models import check_model\n"
        f"check_model({str(tiny_vit)!r})\n"
        "try:\n    check_model('./missing')\nexcept Exception as exc:\n    print(type(exc).__name__)\n"
        "print(sorted(m for m in ('torch', 'transformers', 'timm') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert proc.stdout.split("\n")[:2] == ["UsageError", "[]"], proc.stdout + proc.stderr


# ---------------------------------------------------------------- model names: hub ids


def test_offline_and_not_cached_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as info:
        hub.resolve("Falconsai/nsfw_image_detection", offline=True, cache=tmp_path)
    message = str(info.value)
    assert message.startswith("cannot load model 'Falconsai/nsfw_image_detection': it is not in the Hugging Face cache")
    assert "HF_HUB_OFFLINE is set" in message
    assert "labelq model pull Falconsai/nsfw_image_detection --to DIR" in message and "--model DIR" in message
    assert "\n" not in message


def test_unreachable_hub_fails_once_quickly_without_retry_warnings(
    tmp_path: Path, unreachable_hub: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    start = time.monotonic()
    with pytest.raises(UsageError) as info:
        hub.resolve("Falconsai/nsfw_image_detection", offline=False, cache=tmp_path)
    assert time.monotonic() - start < 10  # one request, no five retries with backoff
    message = str(info.value)
    assert message.startswith("cannot load model 'Falconsai/nsfw_image_detection': the Hugging Face hub is unreachable")
    assert "labelq model pull" in message and "HF_HUB_OFFLINE=1" in message
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_a_cached_model_resolves_offline_when_the_hub_is_unreachable(
    tiny_vit: Path, tmp_path: Path, unreachable_hub: None
) -> None:
    fake_cache(tmp_path, "acme/tiny-vit", tiny_vit, commit="c" * 40)
    for offline in (True, False):
        resolved = hub.resolve("acme/tiny-vit", offline=offline, cache=tmp_path)
        assert (resolved.folder, resolved.offline, resolved.revision) == (None, True, "c" * 40)
        assert resolved.load_from == "acme/tiny-vit"


def test_not_a_hub_id_nor_a_folder(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="neither an existing folder nor a hub id"):
        hub.resolve("bad name!", offline=True, cache=tmp_path)


def test_model_ls_lists_revision_and_size(tiny_vit: Path, tmp_path: Path) -> None:
    fake_cache(tmp_path, "acme/tiny-vit", tiny_vit, commit="d" * 40)
    rows = list(hub.cached_models(tmp_path))
    assert [(r.name, r.revision, r.refs) for r in rows] == [("acme/tiny-vit", "d" * 40, ("main",))]
    assert rows[0].size == sum(f.stat().st_size for f in tiny_vit.iterdir()) > 0
    assert rows[0].files == len(list(tiny_vit.iterdir()))
    assert list(hub.cached_models(tmp_path / "absent")) == []


class FakeInfo:
    def __init__(self, files: list[str]) -> None:
        self.sha = "e" * 40
        self.siblings = [type("S", (), {"rfilename": f})() for f in files]


def test_pull_downloads_configs_and_one_weight_format(
    tiny_vit: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    calls: list[dict[str, Any]] = []

    def snapshot_download(name: str, **kwargs: Any) -> str:
        calls.append({"name": name, **kwargs})
        for f in tiny_vit.iterdir():
            shutil.copy2(f, Path(kwargs["local_dir"]) / f.name)
        return str(kwargs["local_dir"])

    monkeypatch.setattr(hub, "hub_offline", lambda: False)
    monkeypatch.setattr(hub, "model_info", lambda name, **kw: FakeInfo(
        ["config.json", "preprocessor_config.json", "model.safetensors", "pytorch_model.bin", "tf_model.h5"]))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    pulled = hub.pull("acme/tiny-vit", to=tmp_path / "staged" / "vit")
    assert pulled.folder == tmp_path / "staged" / "vit" and pulled.revision == "e" * 40
    assert pulled.size == sum(f.stat().st_size for f in tiny_vit.iterdir())
    (call,) = calls
    assert call["revision"] == "e" * 40
    assert "*.safetensors" in call["allow_patterns"] and "*.bin" not in call["allow_patterns"]
    assert "*.json" in call["allow_patterns"]
    check_model(str(pulled.folder))


def test_pull_refuses_a_folder_and_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError, match="takes a hub id"):
        hub.pull("./models/vit")
    monkeypatch.setattr(hub, "hub_offline", lambda: True)
    with pytest.raises(UsageError, match="HF_HUB_OFFLINE is set: pull where the hub is reachable"):
        hub.pull("acme/tiny-vit")


# ---------------------------------------------------------------- output paths, checked first


def test_missing_output_folders_are_created(tmp_path: Path) -> None:
    target = tmp_path / "missing" / "dir" / "r.jsonl"
    assert prepare_output(target) == "jsonl"
    assert target.parent.is_dir() and not target.exists()


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("afile/r.jsonl", "is a file, not a folder"),
        ("adir", "is a folder: give a file name"),
        ("r.txt", "unknown export format 'txt'"),
    ],
)
def test_an_output_that_cannot_be_written_is_one_line(name: str, says: str, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir.jsonl").mkdir()
    target = tmp_path / (name if name != "adir" else "adir.jsonl")
    with pytest.raises(UsageError) as info:
        prepare_output(target)
    assert says in str(info.value) and "\n" not in str(info.value)


def test_export_format_errors_name_no_placeholder_file() -> None:
    from labelq.cli import _export_format

    with pytest.raises(UsageError) as info:
        _export_format("xml", None)
    assert str(info.value) == "unknown format 'xml': use jsonl, csv or parquet"
    assert _export_format("JSON", None) == "jsonl"
    with pytest.raises(UsageError, match="parquet needs a file"):
        _export_format("parquet", None)


def test_settings_errors_have_no_stray_quote(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABELQ_BROKER_URL", "http://broker:80")
    with pytest.raises(UsageError) as info:
        load_settings()
    message = str(info.value)
    assert "not http://" in message and "'http'" not in message and "Value error" not in message


# ---------------------------------------------------------------- job names of embedded runs


def test_default_job_is_stable_per_source(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "other" / "photos").mkdir(parents=True)
    (tmp_path / "list.txt").write_text("a.jpg\n")
    a = default_job(parse_source(str(tmp_path / "photos")))
    assert a == default_job(parse_source(str(tmp_path / "photos") + "/"))
    assert a.startswith("photos-") and a != default_job(parse_source(str(tmp_path / "other" / "photos")))
    assert default_job(parse_source(str(tmp_path / "list.txt"))).startswith("list-")
    assert default_job(parse_source("s3://bucket/uploads/2026/")).startswith("2026-")


# ---------------------------------------------------------------- start-up: what each command imports


def imported_by(args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[set[str], str]:
    """Heavy modules a `labelq ARGS` process had imported when it finished, and its stderr."""
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from labelq.cli import app\n"
        f"r = CliRunner().invoke(app, {args!r})\n"
        "sys.stderr.write(r.output)\n"
        "print(' '.join(m for m in ('torch', 'transformers', 'timm', 'pydantic_settings', 'sqlalchemy') "
        "if m in sys.modules))\n"
    )
    import os

    full = {k: v for k, v in os.environ.items() if not k.startswith("LABELQ_")} | (env or {})
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full, cwd=cwd,
                          timeout=120, check=True)
    return set(proc.stdout.split()), proc.stderr


def test_help_imports_no_model_stack_and_no_settings() -> None:
    mods, output = imported_by(["--help"])
    assert "model" in output and "run" in output
    assert mods == set(), mods


def test_export_status_jobs_import_no_model_stack(redis_url: str, tmp_path: Path) -> None:
    env = {"LABELQ_BROKER_URL": redis_url}
    for args in (["export", "nope", "--db", f"sqlite:///{tmp_path / 'r.db'}"], ["status", "nope"], ["jobs"],
                 ["ping", "--no-workers"]):
        mods, output = imported_by(args, env, tmp_path)
        assert not mods & {"torch", "transformers", "timm"}, (args, mods, output)



# ---------------------------------------------------------------- round two (issue 24)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_an_interrupted_out_keeps_the_earlier_records_of_objects_not_reached(fmt: str, tmp_path: Path) -> None:
    from labelq.embedded import OutFile
    from labelq.records import Record, read_records

    def rec(i: int, model: str, label: str) -> Record:
        return Record(f"file:///p/{i}.jpg", "e", model, label=label, score=0.5, job="j")

    path = tmp_path / f"r.{fmt}"
    first = OutFile(path, fmt)
    first.write([rec(i, m, "old") for i in range(5) for m in ("a", "gone")])  # "gone": a model not in the rerun
    assert first.close(commit=True) == 10

    again = OutFile(path, fmt)
    again.write([rec(i, "a", "new") for i in range(2)])  # Ctrl-C after two objects
    assert again.keep_earlier(["a"]) == 3
    assert again.close(commit=True) == 5
    got = {(Path(r.uri).name, r.model): r.label for r in read_records(path)}
    assert got == {(f"{i}.jpg", "a"): "new" if i < 2 else "old" for i in range(5)}


def test_a_new_out_interrupted_holds_what_was_written(tmp_path: Path) -> None:
    from labelq.embedded import OutFile
    from labelq.records import Record, read_records

    out = OutFile(tmp_path / "r.jsonl", "jsonl")
    out.write([Record("file:///p/1.jpg", "e", "a", label="x", score=1.0)])
    assert out.keep_earlier(["a"]) == 0 and out.close(commit=True) == 1
    assert len(read_records(tmp_path / "r.jsonl")) == 1


def test_interrupted_advice_is_true_with_and_without_force() -> None:
    from labelq.cli.local import interrupted_advice
    from labelq.embedded import Summary

    plain = interrupted_advice(Summary(labelled=1, images=1, out_file=Path("r.jsonl")))
    assert plain.startswith("interrupted: the 1 image labelled so far is kept in the result table and in r.jsonl")
    assert "run the same command again to finish (done objects are skipped)" in plain
    forced = interrupted_advice(Summary(images=64, out_file=Path("r.jsonl"), out_earlier=536, force=True))
    assert "the 64 images labelled so far are kept" in forced and "(with 536 earlier records" in forced
    assert "run the same command again" not in forced  # with --force that would relabel everything
    assert "without --force" in forced


def test_left_out_files_are_counted_by_suffix(tmp_path: Path) -> None:
    from labelq.embedded import count_unkept, unkept_text
    from labelq.objects import walk_folder

    (tmp_path / "sub").mkdir()
    (tmp_path / "elsewhere").mkdir()
    for name in ("a.jpg", "notes.txt", "b.TXT", "sub/c.PNG", "sub/vector.svg", "sub/README", "elsewhere/x.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")  # not entered, as the listing does not
    kept = [rel for _, rel in walk_folder(tmp_path, (".jpg", ".png"))]
    assert kept == ["a.jpg", "sub/c.PNG"]
    unkept = count_unkept(tmp_path, [".jpg", ".png"])
    assert unkept == {".txt": 3, ".svg": 1, "": 1}  # elsewhere/x.txt once: through the link it is not counted again
    assert unkept_text(unkept) == "5 files (.txt 3, (no suffix) 1, .svg 1)"
    assert count_unkept(tmp_path, []) == {}  # no suffixes: every file is kept


def test_which_live_workers_may_read_a_folder(tmp_path: Path) -> None:
    from labelq.health import local_readers

    photos = tmp_path / "data" / "photos"
    photos.mkdir(parents=True)
    replies = {
        "a@h": {"local_root": str(tmp_path / "data")},  # a folder above it
        "b@h": {"local_root": None},
        "c@h": {"local_root": str(tmp_path / "other")},
        "d@h": {"models": []},  # a worker too old to say
    }
    can, cannot = local_readers(photos, replies)
    assert can == ["a@h"]
    assert cannot == ["b@h (no LABELQ_LOCAL_ROOT)", f"c@h (LABELQ_LOCAL_ROOT={tmp_path / 'other'})"]
    assert local_readers(photos, {"e@h": {"local_root": str(photos)}}) == (["e@h"], [])


def test_a_bad_flag_value_is_named_by_its_flag_and_a_bad_variable_by_its_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from labelq.cli.base import load_settings as cli_settings

    with pytest.raises(UsageError) as info:
        cli_settings(batch_size=0, db_url=None)
    assert str(info.value).startswith("invalid settings: --batch-size: ")
    monkeypatch.setenv("LABELQ_BATCH_SIZE", "0")
    with pytest.raises(UsageError) as info:
        cli_settings(batch_size=None)
    assert str(info.value).startswith("invalid settings: LABELQ_BATCH_SIZE: ")


def test_counts_are_plural_only_when_they_should_be() -> None:
    from labelq.cli.base import count

    assert [count(n, "record") for n in (0, 1, 2)] == ["0 records", "1 record", "2 records"]
    assert count(1, "entry", "entries") == "1 entry" and count(3, "entry", "entries") == "3 entries"
