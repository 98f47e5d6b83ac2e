"""Fixtures of the unit tier: the tiny ViT reachable by a hub id (offline, from the session's HF cache)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

PHOTOS = Path(__file__).resolve().parents[2] / "examples" / "photos"


@pytest.fixture(scope="session")
def photos() -> list[Path]:
    """The real photos shipped in examples/photos (JPEG and PNG, colour and grey)."""
    found = sorted(p for p in PHOTOS.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    assert len(found) >= 5, f"expected the example photos in {PHOTOS}"
    return found


@pytest.fixture(scope="session")
def hub_vit(tiny_vit: Path) -> str:
    """``labelq-test/tiny-vit``: the tiny ViT placed in the (private, offline) hub cache under a hub id.

    The conftest points HF_HOME at a temporary folder and sets HF_HUB_OFFLINE=1, so resolving this
    id goes through huggingface_hub's cache lookup exactly as a downloaded model would.
    """
    import os

    from huggingface_hub import constants

    home = os.environ.get("HF_HOME", "")
    if not home or not Path(constants.HF_HUB_CACHE).resolve().is_relative_to(Path(home).resolve()):
        pytest.skip(f"the hub cache {constants.HF_HUB_CACHE} is not the session's private HF_HOME; not writing to it")
    revision = "0" * 40
    repo = Path(constants.HF_HUB_CACHE) / "models--labelq-test--tiny-vit"
    shutil.copytree(tiny_vit, repo / "snapshots" / revision, dirs_exist_ok=True)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return "labelq-test/tiny-vit"
