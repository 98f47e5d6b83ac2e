"""Model identity: the revision a record names (hub commit or local folder content hash)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from labelq.config import Settings
from labelq.engine import Engine
from labelq.models import folder_revision, load_classifier, resolve_revision
from labelq.objects import ObjectRef, Stores, file_uri
from labelq.records import Record
from labelq.results import is_final


def test_folder_revision_is_a_content_hash(tiny_vit: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_vit, copy)
    (copy / ".cache").mkdir()
    (copy / ".cache" / "lock").write_text("ignored")  # hidden: huggingface_hub's local-dir bookkeeping
    rev = folder_revision(tiny_vit)
    assert rev.startswith("sha256:") and len(rev) == len("sha256:") + 16
    assert folder_revision(copy) == rev == resolve_revision(str(copy))  # where it lies does not matter
    config = copy / "config.json"
    config.write_text(config.read_text() + " ")
    assert folder_revision(copy) != rev  # one byte more: another revision


def test_hub_revision_comes_from_the_local_cache(hub_vit: str) -> None:
    assert resolve_revision(hub_vit) == "0" * 40
    assert resolve_revision("no-such-org/no-such-model") is None


def test_resolve_revision_does_not_import_torch(tiny_vit: Path) -> None:
    code = ("import sys; from labelq.models import resolve_revision; "
            f"r = resolve_revision({str(tiny_vit)!r}); assert r; assert 'torch' not in sys.modules, 'torch'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_loaded_classifier_and_its_records_carry_the_revision(tiny_vit: Path, hub_vit: str) -> None:
    settings = Settings(device="cpu", fetch_threads=2, decode_threads=1)
    local = load_classifier(str(tiny_vit), settings)
    assert local.revision == resolve_revision(str(tiny_vit))
    hub = load_classifier(hub_vit, settings)
    assert hub.revision == "0" * 40

    photos = sorted((Path(__file__).resolve().parents[2] / "examples" / "photos").glob("*.jp*g"))[:2]
    refs = [ObjectRef(file_uri(p), p.stat().st_size, "e") for p in photos]
    with Engine([local, hub], Stores(settings, local_root=photos[0].parent), settings) as engine:
        records = [r for batch in engine.run(refs, job="j") for r in batch]
    assert len(records) == 4
    assert {(r.model, r.model_revision) for r in records} == {(local.name, local.revision), (hub_vit, "0" * 40)}


def test_a_record_of_another_revision_is_not_final() -> None:
    made = Record("s3://b/k", "e1", "m", "cat", 0.9, [], model_revision="r1")
    assert is_final(made, "e1", "r1")
    assert not is_final(made, "e1", "r2")
    assert is_final(made, "e1")  # revision not asked
    assert is_final(Record("s3://b/k", "e1", "m", "cat", 0.9, []), "e1", "r2")  # none recorded: nothing to compare
    assert not is_final(made, "e2", "r1")
