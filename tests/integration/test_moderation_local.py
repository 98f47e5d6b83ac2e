"""labelq.moderation on local files, against a real Redis: copy/move into quarantine, never through a link,
and ``Moderator.keep`` (what a worker writes after a move)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from labelq import keys
from labelq.config import Settings
from labelq.moderation import Moderator, Policy, Rule, iter_audit
from labelq.objects import Stores, file_uri
from labelq.records import Record

MODEL = "m"
DATA = b"\x89PNG flagged bytes"


def policy(*actions: str) -> Policy:
    return Policy("v1", (Rule(MODEL, "nsfw", 0.5, actions),), quarantine_prefix="quarantine/")


def flagged(path: Path) -> Record:
    return Record(file_uri(path), "e1", MODEL, "nsfw", 0.9, [{"label": "nsfw", "score": 0.9}], job="j")


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """A storage root with one flagged file in a sub-folder, and a folder outside the root."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "in").mkdir(parents=True)
    outside.mkdir()
    (root / "in" / "a.png").write_bytes(DATA)
    return root, outside


def moderator(redis_client: Any, root: Path, *actions: str) -> Moderator:
    return Moderator(policy(*actions), redis=redis_client, stores=Stores(Settings(), local_root=root))


def test_a_move_lands_under_the_quarantine_prefix_and_is_audited(redis_client: Any, tree: tuple[Path, Path]) -> None:
    root, _ = tree
    src = root / "in" / "a.png"
    os.utime(src, ns=(1_000_000_000, 2_000_000_000))
    [action] = moderator(redis_client, root, "move").apply([flagged(src)])
    dest = root / "quarantine" / "in" / "a.png"
    assert (action.result, action.detail) == ("ok", file_uri(dest))
    assert not src.exists() and dest.read_bytes() == DATA
    assert dest.stat().st_mtime_ns == 2_000_000_000
    assert [a.action for a in iter_audit(redis_client)] == ["move"]


def test_a_copy_keeps_the_source_bytes_mode_and_time_and_leaves_no_temporary_file(
    redis_client: Any, tree: tuple[Path, Path]
) -> None:
    root, _ = tree
    src = root / "in" / "a.png"
    src.chmod(0o640)
    os.utime(src, ns=(1_000_000_000, 2_000_000_000))
    [action] = moderator(redis_client, root, "copy").apply([flagged(src)])
    dest = root / "quarantine" / "in" / "a.png"
    assert action.result == "ok"
    assert src.read_bytes() == DATA and dest.read_bytes() == DATA
    assert (dest.stat().st_mode & 0o777, dest.stat().st_mtime_ns) == (0o640, 2_000_000_000)
    assert sorted(p.name for p in dest.parent.iterdir()) == ["a.png"]


def test_a_copy_replaces_a_stale_regular_file_at_the_destination(redis_client: Any, tree: tuple[Path, Path]) -> None:
    root, _ = tree
    dest = root / "quarantine" / "in" / "a.png"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"old")
    [action] = moderator(redis_client, root, "copy").apply([flagged(root / "in" / "a.png")])
    assert action.result == "ok" and dest.read_bytes() == DATA


@pytest.mark.parametrize("kind", ["copy", "move"])
def test_a_quarantine_folder_that_links_outside_the_root_is_refused(
    redis_client: Any, tree: tuple[Path, Path], kind: str
) -> None:
    root, outside = tree
    (root / "quarantine").symlink_to(outside, target_is_directory=True)
    src = root / "in" / "a.png"
    [action] = moderator(redis_client, root, kind).apply([flagged(src)])
    assert action.result == "failed"
    assert "symbolic link" in action.detail and "quarantine" in action.detail
    assert list(outside.iterdir()) == [], "something was written outside the root"
    assert src.read_bytes() == DATA, "the object left its place although the action failed"
    assert redis_client.hget(keys.ACTIONS, f"{file_uri(src)}{keys.SEP}{kind}") is None  # so it is tried again


def test_a_link_deeper_in_the_destination_folder_is_refused(redis_client: Any, tree: tuple[Path, Path]) -> None:
    root, outside = tree
    (root / "quarantine").mkdir()
    (root / "quarantine" / "in").symlink_to(outside, target_is_directory=True)
    [action] = moderator(redis_client, root, "move").apply([flagged(root / "in" / "a.png")])
    assert action.result == "failed" and "symbolic link" in action.detail
    assert list(outside.iterdir()) == []
    assert (root / "in" / "a.png").exists()


@pytest.mark.parametrize("kind", ["copy", "move"])
def test_a_link_at_the_destination_path_is_refused_and_its_target_left_alone(
    redis_client: Any, tree: tuple[Path, Path], kind: str
) -> None:
    root, outside = tree
    victim = outside / "precious.txt"
    victim.write_bytes(b"keep me")
    link = root / "quarantine" / "in" / "a.png"
    link.parent.mkdir(parents=True)
    link.symlink_to(victim)
    [action] = moderator(redis_client, root, kind).apply([flagged(root / "in" / "a.png")])
    assert action.result == "failed" and "symbolic link" in action.detail
    assert victim.read_bytes() == b"keep me"
    assert link.is_symlink() and (root / "in" / "a.png").read_bytes() == DATA
    assert sorted(p.name for p in link.parent.iterdir()) == ["a.png"]  # no temporary file left behind


def test_a_file_where_the_quarantine_folder_should_be_is_refused(redis_client: Any, tree: tuple[Path, Path]) -> None:
    root, _ = tree
    (root / "quarantine").write_bytes(b"not a folder")
    [action] = moderator(redis_client, root, "copy").apply([flagged(root / "in" / "a.png")])
    assert action.result == "failed" and "non-folder" in action.detail
    assert (root / "quarantine").read_bytes() == b"not a folder"


def test_keep_drops_not_found_records_of_moved_objects_only(redis_client: Any, tree: tuple[Path, Path]) -> None:
    root, _ = tree
    mod = moderator(redis_client, root, "move")
    src = root / "in" / "a.png"
    other = root / "in" / "b.png"
    assert mod.apply([flagged(src)])[0].result == "ok"

    def missing(path: Path) -> Record:
        return Record(file_uri(path), None, MODEL, status="error", error_kind="not_found", error="gone")

    ok_again = flagged(src)
    kept = mod.keep([missing(src), missing(other), ok_again])
    assert [(r.uri, r.error_kind) for r in kept] == [(file_uri(other), "not_found"), (file_uri(src), None)]
    assert mod.keep([]) == []
