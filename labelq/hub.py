"""Getting models: resolve a name without torch, stage hub models for offline use, list the cache.

A model name is a local folder (``./models/vit``, ``/srv/models/nsfw``) or a Hugging Face hub id
(``Falconsai/nsfw_image_detection``, ``timm/mobilenetv3_small_100.lamb_in1k``). :func:`resolve`
answers, before anything heavy is imported, whether the name can be loaded here and how: from a
folder, from the hub cache without the network (``offline``), or from the hub. Every way it can fail
is one :class:`~labelq.errors.UsageError` line that says what to do. Only ``huggingface_hub`` is
imported here (no torch, no transformers); the hub is asked at most once, with a short timeout and
no retries, so an unreachable hub costs seconds, not a minute of retry warnings.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UsageError

logger = logging.getLogger(__name__)

PROBE_TIMEOUT = 5.0  # seconds one hub request may take before the hub counts as unreachable
WEIGHTS = ("*.safetensors", "pytorch_model*.bin", "model*.bin", "*.pth")
# What `labelq model pull` downloads: configs, weights in one format, the model card and licence.
PULL_PATTERNS = ("*.json", "*.txt", "*.md", "LICENSE*")


@dataclass(frozen=True)
class Resolved:
    """Where a model will be loaded from."""

    name: str  # as given
    folder: Path | None  # a local folder, or None for a hub id
    offline: bool  # load from disk only (a folder, or the hub cache when the hub is off or unreachable)
    revision: str | None = None  # the hub commit, when known

    @property
    def load_from(self) -> str:
        """What to hand to ``from_pretrained``."""
        return str(self.folder) if self.folder is not None else self.name


def offline_help(name: str) -> str:
    """What a user without the hub can do, in one clause."""
    return (
        f"stage it once where the hub is reachable with `labelq model pull {name} --to DIR` and pass "
        "--model DIR (or LABELQ_MODELS=DIR), or copy a Hugging Face cache that holds it (HF_HOME) and set "
        "HF_HUB_OFFLINE=1"
    )


def looks_like_path(name: str) -> bool:
    """A name meant as a folder: it starts with ``.``, ``/`` or ``~``, or has more than one ``/``."""
    return name.startswith((".", "/", "~", "\\")) or name.count("/") > 1 or "\\" in name


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE), as huggingface_hub reads it."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def resolve(name: str, *, offline: bool | None = None, cache: Path | None = None,
            timeout: float = PROBE_TIMEOUT) -> Resolved:
    """How ``name`` can be loaded here; UsageError, one line saying what to do, when it cannot."""
    name = name.strip()
    if not name:
        raise UsageError("empty model name: give a hub id (org/name) or a local folder")
    path = Path(name).expanduser()
    if path.exists() or looks_like_path(name):
        return Resolved(name, check_folder(path, name), offline=True)
    return _resolve_hub(name, hub_offline() if offline is None else offline, cache, timeout)


def check_folder(path: Path, name: str | None = None) -> Path:
    """A model folder that transformers can load: config.json (transformers or timm) and weights."""
    shown = name or str(path)
    head = f"cannot load model {shown!r}:"
    if not path.exists():
        raise UsageError(f"{head} the folder {shown} does not exist (give an existing model folder, with config.json "
                         "and weights, or a hub id such as Falconsai/nsfw_image_detection)")
    if not path.is_dir():
        raise UsageError(f"{head} it is a file; --model takes a model folder (config.json and weights) or a hub id")
    config = path / "config.json"
    if not config.is_file():
        raise UsageError(f"{head} the folder has no config.json, so it is not a Hugging Face or timm model folder "
                         "(`labelq model pull ID --to DIR` makes one)")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{head} cannot read its config.json: {exc}") from None
    if not isinstance(data, dict) or not (data.get("model_type") or data.get("architecture")):
        raise UsageError(f"{head} its config.json names no model_type (transformers) or architecture (timm)")
    if not any(next(path.glob(pattern), None) for pattern in WEIGHTS):
        raise UsageError(f"{head} the folder has config.json but no weights (model.safetensors or pytorch_model.bin)")
    return path.resolve()


def _resolve_hub(name: str, offline: bool, cache: Path | None, timeout: float) -> Resolved:
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        cached = try_to_load_from_cache(name, "config.json", cache_dir=cache)
    except HFValidationError:
        raise UsageError(f"cannot load model {name!r}: it is neither an existing folder nor a hub id (org/name)") from None
    revision = Path(cached).parent.name if isinstance(cached, str) else None
    if offline:
        if revision is None:
            raise UsageError(f"cannot load model {name!r}: it is not in the Hugging Face cache ({cache or cache_dir()}) "
                             f"and HF_HUB_OFFLINE is set: {offline_help(name)}")
        return Resolved(name, None, offline=True, revision=revision)
    try:
        info = model_info(name, timeout=timeout, what=f"cannot load model {name!r}")
    except _Unreachable as exc:
        if revision is not None:
            logger.info("hub unreachable (%s): using the cached copy of %s", exc, name)
            return Resolved(name, None, offline=True, revision=revision)
        raise UsageError(f"cannot load model {name!r}: the Hugging Face hub is unreachable ({exc}) and the model "
                         f"is not in the cache ({cache or cache_dir()}): {offline_help(name)}") from None
    except UsageError:
        if revision is not None:  # gone from the hub, or private: the cached copy still loads
            return Resolved(name, None, offline=True, revision=revision)
        raise
    files = {s.rfilename for s in (info.siblings or [])}
    if files and "config.json" not in files:
        raise UsageError(f"cannot load model {name!r}: the hub repo has no config.json, so it is not a transformers "
                         "or timm image classifier")
    return Resolved(name, None, offline=False, revision=info.sha)


class _Unreachable(Exception):
    """The hub did not answer (DNS, refused, timeout, proxy)."""


def model_info(name: str, *, timeout: float = PROBE_TIMEOUT, revision: str | None = None, what: str = "") -> Any:
    """The hub's answer about a model, asked once; UsageError (after ``what: ``) for a missing, gated or
    disabled repo; _Unreachable when the hub does not answer."""
    head = f"{what}: " if what else ""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        with _quiet_hub():
            return HfApi().model_info(name, revision=revision, timeout=timeout)
    except GatedRepoError:
        raise UsageError(f"{head}{name} is gated: accept its terms on the hub, then log in (`hf auth login` or "
                         "HF_TOKEN)") from None
    except RepositoryNotFoundError:
        raise UsageError(f"{head}no model {name} on the hub (a typo? a private model needs `hf auth login` or "
                         "HF_TOKEN; a local folder must exist)") from None
    except RevisionNotFoundError:
        raise UsageError(f"{head}{name} has no revision {revision!r} on the hub") from None
    except OfflineModeIsEnabled:
        raise _Unreachable("HF_HUB_OFFLINE is set") from None
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status is not None and status < 500:
            raise UsageError(f"{head}the hub refused {name}: {_first_line(exc)}") from None
        raise _Unreachable(_first_line(exc)) from None
    except Exception as exc:  # noqa: BLE001 - httpx/requests connection errors, timeouts, proxies
        raise _Unreachable(_first_line(exc) or type(exc).__name__) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@contextmanager
def _quiet_hub() -> Iterator[None]:
    """huggingface_hub logs each retry at WARNING: one failure is reported once, by us."""
    hub_logger = logging.getLogger("huggingface_hub")
    level = hub_logger.level
    hub_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        hub_logger.setLevel(level)


# ----------------------------------------------------------------------------- staging and the cache


@dataclass(frozen=True)
class Pulled:
    name: str
    folder: Path
    revision: str | None
    files: int
    size: int  # bytes


def pull(name: str, *, to: Path | None = None, revision: str | None = None) -> Pulled:
    """Download a hub model's config, preprocessing and weights (one format) into the cache or ``to``."""
    if looks_like_path(name) or Path(name).expanduser().exists():
        raise UsageError(f"{name} is a folder: `labelq model pull` takes a hub id such as "
                         "Falconsai/nsfw_image_detection")
    if hub_offline():
        raise UsageError("HF_HUB_OFFLINE is set: pull where the hub is reachable (unset HF_HUB_OFFLINE), then "
                         "copy the folder or the cache to this machine")
    if to is not None:
        if to.exists() and not to.is_dir():
            raise UsageError(f"--to {to} is a file: give a folder")
        try:
            to.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create {to}: {exc.strerror or exc}") from None
    try:
        info = model_info(name, revision=revision, timeout=30, what=f"cannot pull {name}")
    except _Unreachable as exc:
        raise UsageError(f"cannot reach the Hugging Face hub to pull {name} ({exc}): pull on a machine that "
                         "reaches it (or set HF_ENDPOINT to a mirror), then copy the folder") from None
    files = [s.rfilename for s in (info.siblings or [])]
    if files and "config.json" not in files:
        raise UsageError(f"hub repo {name} has no config.json: it is not a transformers or timm image classifier")
    patterns = list(PULL_PATTERNS)
    patterns.append("*.safetensors" if any(f.endswith(".safetensors") for f in files) else "*.bin")
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(name, revision=info.sha or revision, local_dir=to, allow_patterns=patterns)
    except Exception as exc:  # noqa: BLE001 - network drops mid-download, disk full
        raise UsageError(f"pulling {name} failed: {_first_line(exc)} (run it again: finished files are kept)") from None
    path = Path(folder)
    check_folder(path, str(path))
    got = [p for p in path.rglob("*") if p.is_file() and ".cache" not in p.parts]
    return Pulled(name, path, info.sha, len(got), sum(p.stat().st_size for p in got))


@dataclass(frozen=True)
class CachedModel:
    name: str
    revision: str
    refs: tuple[str, ...]
    size: int  # bytes on disk
    files: int
    last_modified: float  # epoch seconds


def cached_models(cache: Path | None = None) -> Iterator[CachedModel]:
    """Every model revision in the Hugging Face cache, by name then newest first."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir(cache)
    except CacheNotFound:
        return
    for repo in sorted(info.repos, key=lambda r: r.repo_id.lower()):
        if repo.repo_type != "model":
            continue
        for rev in sorted(repo.revisions, key=lambda r: -r.last_modified):
            yield CachedModel(repo.repo_id, rev.commit_hash, tuple(sorted(rev.refs)), rev.size_on_disk,
                              len(rev.files), rev.last_modified)


def human_size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def check_model(name: str) -> None:
    """Check that ``name`` (a folder or a hub id) can be loaded here, without importing torch.

    A folder needs config.json (transformers or timm) and weights; a hub id must be in the Hugging Face
    cache or on a reachable hub (HF_HUB_OFFLINE honoured; one request, short timeout, no retries).
    Raises UsageError with one line saying what to do when it cannot be resolved.
    """
    resolve(name)


# ---------------------------------------------------------------- revisions


def resolve_revision(name: str) -> str | None:
    """The revision ``name`` loads as now, without loading it (no torch): a local folder's content hash,
    else the commit the local hub cache's ``refs/main`` points at; None when unknown (not cached)."""
    if Path(name).is_dir():
        return folder_revision(Path(name))
    try:
        from huggingface_hub import constants
        from huggingface_hub.file_download import repo_folder_name

        ref = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=name, repo_type="model") / "refs" / "main"
        return ref.read_text(encoding="utf-8").strip() or None
    except (ImportError, OSError, ValueError):
        return None


_FOLDER_HASHES: dict[tuple[str, tuple[tuple[str, int, int], ...]], str] = {}


def folder_revision(folder: Path) -> str:
    """``sha256:`` + 16 hex of a local model folder's files (relative paths, sizes, contents; hidden
    files and folders left out). Cached per process by (path, sizes, mtimes): hashed once per change."""
    folder = folder.resolve()
    files = sorted(
        (p.relative_to(folder).as_posix(), p)
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    stats = [(rel, p.stat()) for rel, p in files]
    key = (str(folder), tuple((rel, st.st_size, st.st_mtime_ns) for rel, st in stats))
    if key not in _FOLDER_HASHES:
        digest = hashlib.sha256()
        for rel, path in files:
            digest.update(f"{rel}\0{path.stat().st_size}\0".encode())
            with path.open("rb") as f:
                while block := f.read(1 << 20):
                    digest.update(block)
        if len(_FOLDER_HASHES) > 64:
            _FOLDER_HASHES.clear()
        _FOLDER_HASHES[key] = "sha256:" + digest.hexdigest()[:16]
    return _FOLDER_HASHES[key]
