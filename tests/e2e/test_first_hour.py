"""A new user's first hour with `labelq run` (issue 12): results they can trust, mistakes caught before the
model loads, progress they can read, models from the cache when the hub is unreachable. Round two (issue 24):
run jobs in `jobs` and `status`, Ctrl-C never shrinks --out and its summary is true, model names whole,
left-out files counted, text files as manifests, what enqueue of a folder needs, console users first,
export from LABELQ_RESULTS_URL, plurals and flag names."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from labelq import keys
from labelq.config import Settings
from labelq.embedded import run_embedded
from labelq.objects import file_uri
from labelq.records import read_records
from labelq.testing import CORPUS_MAX_PIXELS
from tests.e2e.conftest import PHOTOS, RUN_ENV, RedisDB, Result, jpeg, labelq
from tests.support.procs import free_port
from tests.support.workers import LABELQ, Procs, labelq_env
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
    from labelq.objects import ObjectRef

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



# ================================================================ round two (issue 24)

NO_REDIS = {"LABELQ_BROKER_URL": "redis://127.0.0.1:1/0"}  # nothing listens on port 1: refused at once


def one_line_error(result: Result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def fresh_count(db: Path, after: str) -> int:
    """Rows of the result table written after ``after`` (an ISO time), read while `labelq run` writes."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.2) as conn:
            return int(conn.execute("SELECT count(*) FROM labelq_records WHERE processed_at > ?", (after,)).fetchone()[0])
    except sqlite3.OperationalError:  # locked by the writer for a moment
        return 0


def test_ctrl_c_with_force_keeps_out_whole_and_the_summary_counts_what_it_wrote(tiny_vit: Path, tmp_path: Path) -> None:
    n = 300
    folder = tmp_path / "many"
    folder.mkdir()
    data = jpeg((48, 48), noise=True)
    for i in range(n):
        (folder / f"{i:04d}.jpg").write_bytes(data)
    db = tmp_path / "r.db"
    out = tmp_path / "r.jsonl"
    fast = Settings(models=[str(tiny_vit)], device="cpu", batch_size=32, db_url=f"sqlite:///{db}")
    assert run_embedded(str(folder), fast, out_file=out, progress=False).labelled == n  # the earlier, whole run
    earlier = {rec["uri"]: rec for rec in map(json.loads, out.read_text().splitlines())}
    assert len(earlier) == n
    t0 = max(rec["processed_at"] for rec in earlier.values())

    # The rerun with --force, one image per batch (slow enough to be interrupted in the middle).
    args = ["run", str(folder), "--model", str(tiny_vit), "--db", f"sqlite:///{db}", "--out", "r.jsonl", "-q",
            "--batch-size", "1", "--force"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABELQ_")}
    env.update({"OMP_NUM_THREADS": "1", **RUN_ENV})
    proc = subprocess.Popen([LABELQ, *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while fresh_count(db, t0) < 20 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)  # Ctrl-C in the middle of relabelling
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr

    now = {rec["uri"]: rec for rec in map(json.loads, out.read_text().splitlines())}
    assert set(now) == set(earlier) and len(out.read_text().splitlines()) == n  # never shrinks: 600 → 600
    relabelled = {uri for uri, rec in now.items() if rec["processed_at"] > t0}
    assert 0 < len(relabelled) < n
    assert all(now[uri] == earlier[uri] for uri in set(now) - relabelled)  # the rest: the earlier records
    assert not list(tmp_path.glob(".*.partial"))

    flat = " ".join(stdout.split())
    match = re.search(r"interrupted: labelled (\d+) images?, 0 failed, 0 skipped as already done \((\d+) records?\)",
                      flat)
    assert match and int(match[1]) == int(match[2]) == len(relabelled), stdout  # not "(0 records)"
    assert f"{tiny_vit}: images by label" in stdout  # the label table is there after Ctrl-C too
    assert sum(int(k) for k in re.findall(r"│ \w+\s+│\s+(\d+) │", stdout)) == len(relabelled), stdout
    assert f"wrote {n} records to r.jsonl" in flat
    advice = " ".join(stderr.split())
    assert f"the {len(relabelled)} images labelled so far are kept" in advice, stderr
    assert "the other objects keep their earlier records" in advice and "without --force" in advice

    # What the advice says: without --force, the run keeps what is there and the file stays whole.
    finish = run_embedded(str(folder), fast, out_file=out, progress=False)
    assert (finish.interrupted, finish.images, finish.skipped) == (False, 0, n)
    assert {rec["uri"]: rec for rec in map(json.loads, out.read_text().splitlines())} == now


def test_summary_keeps_model_names_whole_counts_left_out_files_and_speaks_plainly(
    tiny_vit: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy2(sorted(PHOTOS.glob("*.jpg"))[0], folder / "one.jpg")
    (folder / "notes.txt").write_text("shopping list")
    (folder / "vector.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    args = ["run", str(folder), "--model", str(tiny_vit), "--db", f"sqlite:///{tmp_path / 'r.db'}", "-o", "r.jsonl"]
    result = labelq(*args, cwd=tmp_path, env={**RUN_ENV, "COLUMNS": "40"})  # a terminal narrower than the name
    assert result.returncode == 0, result.stderr
    assert len(str(tiny_vit)) > 40 and f"{tiny_vit}: images by label" in result.stdout, result.stdout
    flat = " ".join(result.stdout.split())
    assert "labelled 1 image, 0 failed" in flat and "(1 record)" in flat and "wrote 1 record to r.jsonl" in flat
    assert "left out 2 files (.svg 1, .txt 1) by suffix" in flat and "LABELQ_SUFFIXES" in flat

    # LABELQ_SUFFIXES includes them: then each gets a record, an error record when it is not an image.
    wide = labelq(*args, "--force", cwd=tmp_path, env={**RUN_ENV, "LABELQ_SUFFIXES": ".jpg,.txt,.svg"})
    assert wide.returncode == 0, wide.stderr
    kinds = {Path(r.uri).name: r.error_kind for r in read_records(tmp_path / "r.jsonl")}
    assert kinds == {"one.jpg": None, "notes.txt": "not_an_image", "vector.svg": "not_an_image"}
    assert "left out" not in wide.stdout

    line = one_line_error(labelq(*args, "--batch-size", "0", cwd=tmp_path, env=RUN_ENV))
    assert "--batch-size:" in line and "LABELQ_BATCH_SIZE" not in line  # the flag the user typed


def test_a_text_file_source_is_read_as_a_manifest_and_says_so(tiny_vit: Path, tmp_path: Path) -> None:
    jpgs = sorted(PHOTOS.glob("*.jpg"))[:2]
    (tmp_path / "list.txt").write_text(f"# two photos\n{jpgs[0]}\n{jpgs[1]}\n")
    (tmp_path / "notes.txt").write_text("Meeting notes\nbuy milk\ncall Sam\n")
    (tmp_path / "empty.txt").write_text("# nothing yet\n")
    db = ["--db", f"sqlite:///{tmp_path / 'r.db'}", "--model", str(tiny_vit)]
    ok = labelq("run", "list.txt", *db, cwd=tmp_path, env=RUN_ENV)
    assert ok.returncode == 0 and "reading list.txt as a manifest: 2 entries" in ok.stderr, ok.stderr
    assert counts(ok)[:2] == (2, 0)
    prose = one_line_error(labelq("run", "notes.txt", *db, cwd=tmp_path, env=RUN_ENV))
    assert prose.startswith("error: notes.txt is not a manifest: none of its 3 lines is an s3:// or file:// URI")
    empty = one_line_error(labelq("run", "empty.txt", *db, cwd=tmp_path, env=RUN_ENV))
    assert empty.startswith("error: empty.txt is not a manifest: it names no images")


def test_jobs_and_status_show_run_jobs_with_no_redis(photos: Path, tiny_vit: Path, tmp_path: Path) -> None:
    table = f"sqlite:///{tmp_path / 'r.db'}"
    ran = labelq("run", str(photos), "--model", str(tiny_vit), "--db", table, "-q", cwd=tmp_path, env=RUN_ENV)
    job = JOB.search(ran.stdout).group(1)  # type: ignore[union-attr]

    listed = labelq("jobs", "--db", table, cwd=tmp_path, env=NO_REDIS)
    assert listed.returncode == 0, listed.stderr
    assert re.search(rf"{re.escape(job)}\s+run\s+-\s+4\s+3\s+1\s", listed.stdout), listed.stdout
    assert listed.stderr.strip() == "distributed jobs: unavailable (no job Redis at redis://127.0.0.1:1/0)"

    status = labelq("status", job, "--db", table, "--errors", cwd=tmp_path, env=NO_REDIS)
    assert status.returncode == 0, status.stderr
    flat = " ".join(status.stdout.split())
    for row in ("objects │ 4", "records ok │ 3", "records failed │ 1", "not_an_image │ 1"):
        assert row in flat, status.stdout
    assert f"{tiny_vit}: images by label" in status.stdout
    assert f"not_an_image (1) {file_uri(photos / 'notes.jpg')} [{tiny_vit}]" in flat, status.stdout  # --errors
    doc = json.loads(labelq("status", job, "--db", table, "--json", cwd=tmp_path, env=NO_REDIS).stdout)
    assert (doc["kind"], doc["objects"], doc["status"], doc["errors"]) == ("run", 4, {"ok": 3, "error": 1},
                                                                          {"not_an_image": 1})
    assert sum(doc["labels"][str(tiny_vit)].values()) == 3

    line = one_line_error(labelq("status", "no-such-job", "--db", table, cwd=tmp_path, env=NO_REDIS))
    assert "no such job: no-such-job (looked in: no job Redis at redis://127.0.0.1:1/0;" in line
    assert f"the result table {table}" in line and "`labelq jobs` lists the jobs" in line

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    nothing = labelq("jobs", cwd=elsewhere, env=NO_REDIS)
    assert nothing.returncode == 0 and "no jobs (looked in" in nothing.stderr, nothing.stderr
    assert "no result table at sqlite:///labelq.db" in nothing.stderr
    assert not (elsewhere / "labelq.db").exists()  # looking leaves no database behind


def test_jobs_lists_both_kinds_and_export_finds_records_whose_job_state_is_gone(
    redis_db: RedisDB, photos: Path, tiny_vit: Path, tmp_path: Path
) -> None:
    from labelq.jobs import JobBook

    redis_db.flush()
    JobBook(redis_db.client).open("dist-1", source="s3://bucket/photos", models=["acme/vit"])
    records = f"sqlite:///{tmp_path / 'records.db'}"  # a distributed job's record store (LABELQ_RESULTS_URL)
    ran = labelq("run", str(photos), "--model", str(tiny_vit), "--db", records, "--job", "gone-1", "-q",
                 cwd=tmp_path, env=RUN_ENV)
    assert ran.returncode == 0, ran.stderr

    env = {"LABELQ_BROKER_URL": redis_db.url}
    listed = labelq("jobs", "--db", records, cwd=tmp_path, env=env)
    assert listed.returncode == 0 and not listed.stderr.strip(), listed.stderr
    assert re.search(r"dist-1\s+enqueue\s+listing\s", listed.stdout), listed.stdout
    assert re.search(r"gone-1\s+run\s+-\s+4\s", listed.stdout), listed.stdout

    # The job book does not know gone-1 (its state expired): the record store of LABELQ_RESULTS_URL has its
    # records; the embedded result table (--db) is elsewhere and empty. With and without Redis to ask.
    for base in (env, NO_REDIS):
        found = labelq("export", "gone-1", "--db", f"sqlite:///{tmp_path / 'none.db'}", "-o", "x.jsonl", cwd=tmp_path,
                       env={**base, "LABELQ_RESULTS_URL": records})
        assert found.returncode == 0, found.stderr
        assert "wrote 4 records to x.jsonl" in found.stderr
        assert {r.uri for r in read_records(tmp_path / "x.jsonl")} == {file_uri(p) for p in photos.iterdir()}
        status = labelq("status", "gone-1", "--db", f"sqlite:///{tmp_path / 'none.db'}", cwd=tmp_path,
                        env={**base, "LABELQ_RESULTS_URL": records})
        assert status.returncode == 0 and "records only (no job state in Redis)" in " ".join(status.stdout.split())


def test_console_without_users_says_what_to_set_before_any_url(tmp_path: Path) -> None:
    result = labelq("console", "--port", str(free_port()), cwd=tmp_path, env=NO_REDIS, timeout=60)
    line = one_line_error(result)
    assert "LABELQ_CONSOLE_USERS" in line and "LABELQ_CONSOLE_TOKEN" in line
    assert "http://" not in result.stdout + result.stderr


def test_enqueue_of_a_folder_says_what_the_workers_need(
    redis_db: RedisDB, photos: Path, tiny_vit: Path, tmp_path: Path
) -> None:
    redis_db.flush()
    env = labelq_env(broker=redis_db.url, models=[tiny_vit], device="cpu")
    procs = Procs(tmp_path)
    try:
        worker = procs.worker(env)  # no LABELQ_LOCAL_ROOT: it refuses file:// URIs
        # The banner shows the URL as given: no ":**@" for a password that is not there.
        assert f"transport:   {redis_db.url}" in worker.text() and ":**@" not in worker.text(), worker.text()
        refused = labelq("enqueue", str(photos), "--job", "local-1", cwd=tmp_path, env=env)
        line = one_line_error(refused)
        assert f"no live worker may read {photos}: it needs LABELQ_LOCAL_ROOT={photos}" in line
        assert f"{worker.node} (no LABELQ_LOCAL_ROOT)" in line
        assert not redis_db.client.exists(keys.job("local-1"))  # nothing was enqueued
        worker.stop()
    finally:
        procs.close()
    (photos / "notes.txt").write_text("not an image")
    warned = labelq("enqueue", str(photos), "--job", "local-2", cwd=tmp_path, env=env)
    assert warned.returncode == 0, warned.stderr
    said = " ".join(warned.stderr.split())
    assert f"warning: no worker answered yet: the workers that label this job need LABELQ_LOCAL_ROOT={photos}" in said
    assert "left out 1 file (.txt 1) by suffix: not enqueued" in said
