"""`labelq run` end to end: the console script over real photos and a corpus of every format and failure."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from labelq.config import Settings
from labelq.embedded import run_embedded
from labelq.engine import Engine
from labelq.images import Geometry
from labelq.models import load_classifier
from labelq.objects import LocalStore, file_uri, path_of
from labelq.records import Record
from labelq.results import SQLStore
from labelq.testing import CORPUS_MAX_PIXELS, build_vit
from tests.e2e.conftest import RUN_ENV, Result, labelq

# DESIGN.md, "Result record", in its order (model_revision: the hub commit or folder hash of the model).
DESIGN_FIELDS = ["uri", "etag", "model", "model_revision", "label", "score", "top_k", "status", "error_kind", "error",
                 "job", "worker", "processed_at"]
SUMMARY = re.compile(r"labelled (\d+) images?, (\d+) failed, (\d+) skipped as already done \((\d+) records?\)")


def summary(result: Result) -> tuple[int, int, int]:
    """(images processed: labelled + failed, records written, skipped) from the summary line."""
    match = SUMMARY.search(result.flat_stdout)
    assert match, result.stdout
    labelled, failed, skipped, records = (int(g) for g in match.groups())
    return labelled + failed, records, skipped


def db_rows(db: Path) -> list[Record]:
    store = SQLStore(f"sqlite:///{db}")
    try:
        return list(store.iter_records())
    finally:
        store.close()


@dataclass(frozen=True)
class FirstRun:
    result: Result
    records: list[dict[str, Any]]  # as written to r.jsonl, in file order
    db: Path
    models: list[str]


@pytest.fixture(scope="module")
def first_run(mixed_folder: Path, tiny_vit: Path, tiny_timm: Path, tmp_path_factory: pytest.TempPathFactory) -> FirstRun:
    work = tmp_path_factory.mktemp("first-run")
    db = work / "results.db"
    models = [str(tiny_vit), str(tiny_timm)]
    result = labelq(
        "run", str(mixed_folder), "--model", models[0], "--model", models[1], "--batch-size", "4",
        "--out", "r.jsonl", "--db", f"sqlite:///{db}",
        cwd=work, env=RUN_ENV,
    )
    assert result.returncode == 0, result.stderr
    lines = (work / "r.jsonl").read_text(encoding="utf-8").splitlines()
    return FirstRun(result, [json.loads(line) for line in lines], db, models)


def test_one_record_per_file_and_model(first_run: FirstRun, mixed_folder: Path, expected_outcomes: dict[str, str]) -> None:
    pairs = [(r["uri"], r["model"]) for r in first_run.records]
    assert len(pairs) == len(set(pairs)) == len(expected_outcomes) * 2
    expected_uris = {file_uri(mixed_folder / name) for name in expected_outcomes}
    assert {uri for uri, _ in pairs} == expected_uris
    assert Counter(model for _, model in pairs) == {m: len(expected_outcomes) for m in first_run.models}
    assert all(uri.startswith("file:///") for uri, _ in pairs)
    assert not any(uri.endswith(".md") for uri, _ in pairs)  # LICENSES.md is not an image suffix


def test_records_match_expected_outcomes(first_run: FirstRun, expected_outcomes: dict[str, str]) -> None:
    for record in first_run.records:
        name = path_of(record["uri"]).name
        expected = expected_outcomes[name]
        if expected == "ok":
            assert record["status"] == "ok", record
            assert record["error_kind"] is None and record["error"] is None
            assert isinstance(record["label"], str) and record["label"]
            assert 0.0 < record["score"] <= 1.0
            assert record["top_k"][0] == {"label": record["label"], "score": record["score"]}
            if record["model"] == first_run.models[0]:
                assert record["label"] in ("normal", "nsfw")
                assert len(record["top_k"]) == 2
            else:
                assert len(record["top_k"]) == 5
        else:
            assert (record["status"], record["error_kind"]) == ("error", expected), record
            assert isinstance(record["error"], str) and record["error"].strip()
            assert (record["label"], record["score"], record["top_k"]) == (None, None, [])
        assert record["worker"] == "embedded"
        assert record["etag"]
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["processed_at"])


def test_batch_mates_of_bad_files_are_labelled(
    first_run: FirstRun, mixed_folder: Path, expected_outcomes: dict[str, str]
) -> None:
    listing = [path_of(r.uri).name for r, _ in LocalStore(mixed_folder, max_bytes=1 << 30).list(
        file_uri(mixed_folder), tuple(Settings().suffixes))]
    batches = [listing[i:i + 4] for i in range(0, len(listing), 4)]
    mixed = [b for b in batches if {expected_outcomes[n] == "ok" for n in b} == {True, False}]
    assert len(mixed) >= 3, batches  # the test means something only if bad files share batches with good ones
    status = {(path_of(r["uri"]).name, r["model"]): r["status"] for r in first_run.records}
    for batch in mixed:
        for name in batch:
            for model in first_run.models:
                assert status[(name, model)] == ("ok" if expected_outcomes[name] == "ok" else "error"), (name, batch)


def test_record_fields_are_the_designs_in_order(first_run: FirstRun) -> None:
    assert all(list(record) == DESIGN_FIELDS for record in first_run.records)


def test_result_table_holds_what_the_file_holds(first_run: FirstRun) -> None:
    rows = db_rows(first_run.db)
    assert sorted((r.to_dict() for r in rows), key=lambda d: (d["uri"], d["model"])) == sorted(
        first_run.records, key=lambda d: (d["uri"], d["model"])
    )


def test_summary_and_exit(first_run: FirstRun, expected_outcomes: dict[str, str]) -> None:
    n = len(expected_outcomes)
    assert summary(first_run.result) == (n, 2 * n, 0)
    broken = Counter(kind for kind in expected_outcomes.values() if kind != "ok")
    match = SUMMARY.search(first_run.result.flat_stdout)
    assert match and (int(match[1]), int(match[2])) == (n - broken.total(), broken.total())  # labelled, failed apart
    flat = first_run.result.flat_stdout
    for kind, files in broken.items():  # the error table counts records: one per file and model
        assert re.search(rf"{kind}\s*│\s*{2 * files}\b", flat), (kind, first_run.result.stdout)
    assert "Traceback" not in first_run.result.stderr


@pytest.mark.slow
def test_second_run_relabels_nothing_and_force_relabels(
    first_run: FirstRun, mixed_folder: Path, expected_outcomes: dict[str, str], tmp_path: Path
) -> None:
    db = tmp_path / "results.db"
    shutil.copy2(first_run.db, db)
    before = db_rows(db)
    args = ["run", str(mixed_folder), "--model", first_run.models[0], "--model", first_run.models[1],
            "--batch-size", "4", "--db", f"sqlite:///{db}", "--quiet"]

    again = labelq(*args, "--out", "again.jsonl", cwd=tmp_path, env=RUN_ENV)
    assert again.returncode == 0, again.stderr
    n = len(expected_outcomes)
    assert summary(again) == (0, 0, n)
    # --out holds a record for every object of the source, skipped ones too: a rerun never shrinks it.
    again_records = [json.loads(line) for line in (tmp_path / "again.jsonl").read_text().splitlines()]
    assert sorted(again_records, key=lambda d: (d["uri"], d["model"])) == sorted(
        first_run.records, key=lambda d: (d["uri"], d["model"]))
    assert db_rows(db) == before  # every field, processed_at included

    forced = labelq(*args, "--force", cwd=tmp_path, env=RUN_ENV)
    assert forced.returncode == 0, forced.stderr
    assert summary(forced) == (n, 2 * n, 0)
    after = db_rows(db)
    assert len(after) == len(before) == 2 * n
    old = {(r.uri, r.model): r for r in before}
    for record in after:
        previous = old[(record.uri, record.model)]
        assert record.processed_at > previous.processed_at
        assert (record.status, record.error_kind, record.label) == (previous.status, previous.error_kind, previous.label)


# ---------------------------------------------------------------- bad input: one line on stderr, non-zero exit


@pytest.mark.parametrize(
    ("case", "source", "model", "env", "says"),
    [
        pytest.param("missing folder", "no/such/folder", "vit", {}, "source not found", id="missing-folder"),
        pytest.param("unknown model", "FOLDER", "no-such-org/no-such-model", {},
                     "cannot load model 'no-such-org/no-such-model'", id="unknown-model", marks=pytest.mark.slow),
        pytest.param("unreachable S3", "s3://bucket/prefix", "vit", {"LABELQ_S3_ENDPOINT_URL": "http://127.0.0.1:1"},
                     "cannot reach S3", id="unreachable-s3", marks=pytest.mark.slow),
        pytest.param("bad setting", "FOLDER", "vit", {"LABELQ_BATCH_SIZE": "0"}, "LABELQ_BATCH_SIZE", id="bad-setting"),
    ],
)
def test_bad_input_is_one_clear_line_on_stderr(
    case: str, source: str, model: str, env: dict[str, str], says: str,
    mixed_folder: Path, tiny_vit: Path, tmp_path: Path,
) -> None:
    result = labelq(
        "run", str(mixed_folder) if source == "FOLDER" else source,
        "--model", str(tiny_vit) if model == "vit" else model, "--db", f"sqlite:///{tmp_path / 'r.db'}",
        cwd=tmp_path, env=env,
    )
    assert result.returncode != 0, case
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"{case}: stderr was {result.stderr!r}"
    assert lines[0].startswith("error: ") and says in lines[0], lines[0]


# ---------------------------------------------------------------- one decode per image for several models


class CountingDecode:
    """Wraps the real labelq.engine.decode and records each call's draft geometries."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.drafts: list[tuple[Any, ...]] = []

    def __call__(self, data: bytes, limits: Any, *, draft: Any = ()) -> Any:
        self.drafts.append(tuple(draft))
        return self.real(data, limits, draft=draft)


@pytest.mark.parametrize("fast", [True, False])
def test_two_models_share_one_decode(
    fast: bool, monkeypatch: pytest.MonkeyPatch, mixed_folder: Path, expected_outcomes: dict[str, str],
    tiny_vit: Path, tiny_timm: Path, tmp_path: Path,
) -> None:
    import labelq.engine

    counting = CountingDecode(labelq.engine.decode)
    monkeypatch.setattr(labelq.engine, "decode", counting)
    settings = Settings(models=[str(tiny_vit), str(tiny_timm)], device="cpu", batch_size=4, fast_decode=fast,
                        max_pixels=CORPUS_MAX_PIXELS, db_url=f"sqlite:///{tmp_path / 'r.db'}")
    result = run_embedded(str(mixed_folder), settings, progress=False)
    n = len(expected_outcomes)
    assert (result.images, result.records, result.skipped) == (n, 2 * n, 0)
    assert len(counting.drafts) == n  # every file fetched reaches decode once, not once per model
    if fast:
        # Both models' geometries are known, so each JPEG is drafted for both at once.
        assert all(len(d) == 2 and all(isinstance(g, Geometry) for g in d) for d in counting.drafts)
    else:
        assert all(d == () for d in counting.drafts)  # the exact path never drafts


def test_models_with_one_geometry_share_one_view(tiny_vit: Path, tiny_timm: Path, tmp_path: Path) -> None:
    settings = Settings(device="cpu")
    vit_a = load_classifier(str(tiny_vit), settings)
    vit_b = load_classifier(str(build_vit(tmp_path / "other-vit", seed=1)), settings)
    timm = load_classifier(str(tiny_timm), settings)
    with Engine([vit_a, vit_b, timm], LocalStore(tmp_path, max_bytes=1 << 20), settings) as engine:
        assert engine.views == [vit_a.geometry, timm.geometry]


# ---------------------------------------------------------------- reruns notice changed objects


def test_rerun_of_a_manifest_relabels_a_changed_file(mixed_folder: Path, tiny_vit: Path, tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("baseline.jpg", "rgb.png"):
        shutil.copy2(mixed_folder / name, folder / name)
    manifest = tmp_path / "list.txt"
    manifest.write_text("imgs/baseline.jpg\nimgs/rgb.png\n")
    settings = Settings(models=[str(tiny_vit)], device="cpu", db_url=f"sqlite:///{tmp_path / 'r.db'}")
    assert run_embedded(str(manifest), settings, progress=False).images == 2
    assert run_embedded(str(manifest), settings, progress=False).skipped == 2  # unchanged: skipped

    shutil.copy2(mixed_folder / "photo.bmp", folder / "rgb.png")  # same name, new content
    # A folder source notices (its listing carries size+mtime etags); a manifest must too.
    again = run_embedded(str(manifest), settings, progress=False)
    assert (again.images, again.skipped) == (1, 1)
