"""`labelq run`: the engine in one process, writing to the SQL result table (and a file).

The order is the user's, not the machine's: everything that can be wrong with what was asked (the
source, the output file, the result table, the model names) is checked first, in a second or two;
the source is listed (or, for S3, its first object peeked) before any model is loaded; only then
does torch load. Every object of the source ends in ``--out``: labelled now, or its stored record
when it was already done, so a rerun never shrinks the file, and an interrupted run followed by a
rerun leaves one file that holds everything. An interrupted run (also with ``--force``) keeps the
earlier file's records of the objects it had not reached yet, so Ctrl-C never shrinks ``--out``.

Files of a folder whose suffix is not in LABELQ_SUFFIXES are not labelled and get no record: the
summary counts them by suffix. The result table is also what `labelq jobs` and `labelq status`
read for runs (:func:`open_run_table`; ``SQLStore.jobs`` and ``SQLStore.tally``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from itertools import chain, islice
from pathlib import Path
from typing import Any

from .config import Settings
from .errors import UsageError
from .objects import ObjectRef, Stores
from .records import Record, RecordWriter, format_for
from .results.base import RecordStore
from .sources import Source, iter_source, parse_source

logger = logging.getLogger(__name__)

COUNTED_KINDS = ("folder", "manifest", "inventory", "object")  # listing twice is cheap: a bar with a total
SKIP_CHUNK = 500  # refs per "already done?" query


@dataclass
class Summary:
    job: str = ""
    images: int = 0  # processed in this run: labelled + failed
    labelled: int = 0  # every model's record ok
    failed: int = 0  # at least one error record
    records: int = 0  # written in this run
    skipped: int = 0  # already done: their stored records were kept (and written to --out)
    seconds: float = 0.0  # after the models were loaded
    opening_seconds: float = 0.0  # opening the listing (a count, or the first page), before the models load
    labels: dict[str, Counter[str]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    out_file: Path | None = None
    out_records: int = 0
    out_earlier: int = 0  # of out_records: an interrupted run's records kept from the earlier --out
    interrupted: bool = False
    force: bool = False
    unkept: Counter[str] = field(default_factory=Counter)  # folder files not labelled, by suffix

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def default_job(source: Source) -> str:
    """A stable job name for a source: its last path part and a short hash of where it is.

    The same source gets the same name on every run, so `labelq export NAME` finds all its records.
    """
    base = source.location.rstrip("/").rsplit("/", 1)[-1]
    if source.kind in ("manifest", "inventory", "object"):
        base = base.rsplit(".", 1)[0] or base
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-.")[:40] or "run"
    return f"{slug}-{hashlib.blake2s(source.location.encode(), digest_size=3).hexdigest()}"


def prepare_output(path: Path, fmt: str | None = None) -> str:
    """Check an output file can be written before any work is done; returns its format.

    Missing parent folders are created (as ``mkdir -p``); anything else is one UsageError line.
    """
    kind = format_for(path, fmt)
    if path.is_dir():
        raise UsageError(f"{path} is a folder: give a file name, such as {path / ('labels.' + kind)}")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UsageError(f"cannot write {path}: {_existing_file(parent)} is a file, not a folder") from None
    except OSError as exc:
        raise UsageError(f"cannot create the folder {parent} for {path}: {exc.strerror or exc}") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write {path}: the folder {parent} is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"cannot write {path}: the file is not writable")
    return kind


def _existing_file(path: Path) -> Path:
    for p in (path, *path.parents):
        if p.exists():
            return p
    return path


def local_root_for(source: Source, settings: Settings) -> Path | None:
    """Where this run may read local files from.

    The user named them: a folder's files, a single image, and every path or file:// URI a manifest
    lists (wherever it is). Workers keep LABELQ_LOCAL_ROOT; this is the embedded run only.
    """
    if source.kind == "manifest":
        return Path(os.path.abspath(os.sep))
    if source.root is not None:
        return source.root
    return settings.local_root


def run_embedded(
    source_text: str,
    settings: Settings,
    *,
    out_file: Path | None = None,
    force: bool = False,
    job: str | None = None,
    progress: bool = True,
    console: Any = None,
) -> Summary:
    """Label a source in-process; returns what happened (``interrupted`` after Ctrl-C)."""
    from .models import check_model
    from .results import open_store

    source = parse_source(source_text, suffixes=settings.suffixes)
    fmt = prepare_output(out_file) if out_file is not None else None
    job = job or default_job(source)
    stores = Stores(settings, local_root=local_root_for(source, settings))
    # List before loading anything heavy: a missing or empty source is an error in a second.
    opening = time.perf_counter()
    unkept: Counter[str] = Counter()
    listing, total = _open_listing(source, stores, unkept)
    opening = time.perf_counter() - opening
    if source.kind == "manifest" and console is not None:
        console.print(f"reading {Path(source.location).name} as a manifest: {total} "
                      f"{'entry' if total == 1 else 'entries'}", highlight=False, markup=False, soft_wrap=True)
    for name in settings.models:
        check_model(name)  # every model name, before the first (slow) load
    store = open_store(settings.db_url, settings=settings)  # --db is any record store's URL, as the workers' is
    summary = Summary(job=job, out_file=out_file, opening_seconds=opening, force=force, unkept=unkept)
    try:
        return _label(listing, total, store, settings, summary, fmt=fmt, force=force, progress=progress,
                      console=console, stores=stores)
    finally:
        store.close()


def open_run_table(url: str) -> Any | None:
    """The result table of `labelq run` for reading (`jobs`, `status`, `export`); None when there is none.

    A SQLite file that does not exist is not created: looking must not leave a labelq.db behind."""
    from .results.sql import SQLStore

    if url.startswith("sqlite:"):
        path = url.split(":///", 1)[1].split("?", 1)[0] if ":///" in url else ""
        if not path or path == ":memory:" or not Path(path).is_file():
            return None
    return SQLStore(url)


def _open_listing(source: Source, stores: Stores, unkept: Counter[str]) -> tuple[_Listed, int | None]:
    """The source's listing (counted) and its total when counting is cheap; UsageError when empty.

    A folder's count also counts, by suffix, the files it leaves out (``unkept``); a manifest must
    name at least one URI or existing file."""
    total: int | None = None
    if source.kind in COUNTED_KINDS:
        total = sum(1 for _ in iter_source(source, stores))
        listing: Iterator[ObjectRef] = iter_source(source, stores)
        if source.kind == "folder":
            unkept.update(count_unkept(Path(source.location), stores.settings.suffixes))
        elif source.kind == "manifest":
            _check_manifest(source, total)
    else:
        listing = iter_source(source, stores)
        first = next(listing, None)
        listing = chain([first], listing) if first is not None else iter(())
        total = None if first is not None else 0
    if total == 0:
        raise UsageError(f"no images in {source} (kept suffixes: {', '.join(stores.settings.suffixes)}"
                         + (f"; left out: {unkept_text(unkept)}" if unkept else "")
                         + "; LABELQ_SUFFIXES changes them)")
    return _Listed(listing, total), total


def unkept_text(unkept: Counter[str]) -> str:
    """``3 files (.txt 2, .svg 1)``: what a folder listing left out, by suffix."""
    n = sum(unkept.values())
    parts = ", ".join(f"{suffix or '(no suffix)'} {k}" for suffix, k in sorted(unkept.items(), key=lambda x: (-x[1], x[0])))
    return f"{n} {'file' if n == 1 else 'files'} ({parts})"


def count_unkept(folder: Path, suffixes: Sequence[str]) -> Counter[str]:
    """The files under ``folder`` a listing leaves out by suffix, counted by suffix (``""``: none).

    Walks as the folder listing does (symlinked folders are not entered, unreadable ones skipped); a
    second walk of the folder, so the listing itself stays the one place that decides what is kept."""
    ends = tuple(s.lower() for s in suffixes)
    unkept: Counter[str] = Counter()
    if not ends:
        return unkept
    stack = [folder]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
            elif entry.is_file() and not entry.name.lower().endswith(ends):
                unkept[Path(entry.name).suffix.lower()] += 1
    return unkept


def _check_manifest(source: Source, total: int | None) -> None:
    """A text file read as a manifest must name something: a URI (``s3://``, ``file://``, ...) or a file
    that exists. A file of prose (notes.txt) would otherwise become one not_found record per line."""
    path = Path(source.location)
    if not total:
        raise UsageError(f"{path.name} is not a manifest: it names no images (a manifest is a text file of s3:// or "
                         "file:// URIs or image paths, one a line)")
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            entry = line.strip().lstrip("\ufeff").partition("\t")[0].strip()
            if not entry or entry.startswith("#"):
                continue
            if "://" in entry or (Path(entry) if Path(entry).is_absolute() else path.parent / entry).exists():
                return
    name = path.name
    raise UsageError(f"{name} is not a manifest: none of its {total} lines is an s3:// or file:// URI or an existing "
                     "file (a manifest is a text file of image URIs or paths, one a line)")


class _Listed:
    """A listing that counts what it yielded, when it ended and how fast it went."""

    def __init__(self, it: Iterator[ObjectRef], total: int | None) -> None:
        self.it = it
        self.n = 0
        self.finished = total is not None
        self.start = time.perf_counter()

    def __iter__(self) -> Iterator[ObjectRef]:
        for ref in self.it:
            self.n += 1
            yield ref
        self.finished = True

    @property
    def rate(self) -> float:
        return self.n / max(time.perf_counter() - self.start, 1e-9)


def _label(listing: _Listed, total: int | None, store: RecordStore, settings: Settings, summary: Summary, *,
           fmt: str | None, force: bool, progress: bool, console: Any, stores: Stores) -> Summary:
    from .engine import Engine
    from .models import load_classifier

    classifiers = [load_classifier(name, settings) for name in settings.models]
    names = [c.name for c in classifiers]
    revisions = {c.name: getattr(c, "revision", None) for c in classifiers}
    out = OutFile(summary.out_file, fmt) if summary.out_file is not None and fmt else None
    bar = _Bar(console, total, listing) if progress else None
    job = summary.job

    def keep(done: Sequence[Record]) -> None:
        """Objects already done: their records stay (re-filed under this job) and go to --out."""
        mine = [rec if rec.job == job else replace(rec, job=job) for rec in done]
        moved = [rec for rec, old in zip(mine, done, strict=True) if rec is not old]
        if moved:
            store.write(moved)
        if out is not None:
            out.write(mine)
        summary.skipped += len({rec.uri for rec in done})
        if bar is not None:
            bar.advance(summary)

    refs: Iterable[ObjectRef] = listing if force else skip_done_keeping(listing, store, names, revisions, keep)
    start = time.perf_counter()
    commit = False  # an --out that is complete, or interrupted (all so far + the earlier file), replaces the old file
    try:
        with Engine(classifiers, stores, settings, worker="embedded") as engine:
            if bar is not None:
                bar.start()
            for records in engine.run(refs, job=job):
                store.write(records)
                if out is not None:
                    out.write(records)
                _count(summary, records)  # what was written, so an interrupted summary is true too
                if bar is not None:
                    bar.advance(summary)
        commit = True
    except KeyboardInterrupt:
        summary.interrupted = commit = True
    finally:
        if bar is not None:
            bar.stop()
        if out is not None:
            if summary.interrupted:
                summary.out_earlier = out.keep_earlier(names)
            summary.out_records = out.close(commit=commit)
    summary.seconds = time.perf_counter() - start
    summary.images = summary.labelled + summary.failed
    return summary


def _count(summary: Summary, records: Sequence[Record]) -> None:
    """Add one written batch to the summary: images labelled or failed, records, labels, error kinds."""
    failed = {rec.uri for rec in records if not rec.ok}
    summary.failed += len(failed)
    summary.labelled += len({rec.uri for rec in records} - failed)
    summary.records += len(records)
    for rec in records:
        if rec.ok:
            summary.labels.setdefault(rec.model, Counter())[rec.label or ""] += 1
        else:
            summary.errors[rec.error_kind or "model_error"] += 1


def skip_done_keeping(refs: Iterable[ObjectRef], store: RecordStore, models: Sequence[str], revisions: dict[str, Any],
               keep: Any) -> Iterator[ObjectRef]:
    """Refs not yet done by every model; the stored records of those that are go to ``keep``."""
    from .results import settled

    it = iter(refs)
    while group := list(islice(it, SKIP_CHUNK)):
        finished, records = settled(store, group, models, revisions)
        if records:
            keep(records)
        for ref in group:
            if ref.uri not in finished:
                yield ref


class OutFile:
    """--out written beside the target and moved over it at the end: an old file is never half-replaced.

    When the target exists, the (uri, model) pairs written are remembered, so that an interrupted run can
    add the earlier file's records of the objects it had not reached (:meth:`keep_earlier`)."""

    def __init__(self, path: Path, fmt: str) -> None:
        self.path = path
        self.fmt = fmt
        self.partial = path.with_name(f".{path.name}.partial")
        self.earlier = path.is_file() and path.stat().st_size > 0
        self.written: set[tuple[str, str]] = set()
        self.writer = RecordWriter(self.partial, fmt)

    def write(self, records: Iterable[Record]) -> None:
        if self.earlier:
            records = list(records)
            self.written.update((rec.uri, rec.model) for rec in records)
        self.writer.write(records)

    def keep_earlier(self, models: Sequence[str]) -> int:
        """Copy the earlier file's records of ``models`` for the pairs not written now; returns how many.

        A file that cannot be read back (another format, damaged) is left as it was: nothing is copied."""
        from .records import iter_file_records

        if not self.earlier:
            return 0
        wanted = set(models)
        before = self.writer.count
        try:
            self.writer.write(rec for rec in iter_file_records(self.path, self.fmt)
                              if rec.model in wanted and (rec.uri, rec.model) not in self.written)
        except Exception as exc:  # noqa: BLE001 - the earlier file is the user's: never fail the run over it
            logger.warning("could not read the earlier %s back (%s): it keeps only this run's records", self.path, exc)
        return self.writer.count - before

    def close(self, *, commit: bool) -> int:
        """Finish the file; with ``commit`` it takes the target's place, else the old target stays."""
        self.writer.close()
        if commit:
            os.replace(self.partial, self.path)
        else:
            self.partial.unlink(missing_ok=True)
        return self.writer.count


class _Bar:
    """Progress: a bar with a total, percentage and ETA when the count is known; listed-so-far and the
    listing rate while an S3 listing runs, then a bar once it has ended."""

    def __init__(self, console: Any, total: int | None, listing: _Listed) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.listing = listing
        self.total = total
        self.started = time.perf_counter()
        self.progress = Progress(
            TextColumn("[bold]labelling"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[listed]}"),
            TextColumn("failed {task.fields[failed]}"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=console is None or not console.is_terminal,
        )
        self.task = self.progress.add_task("labelling", total=total, listed="", failed=0, rate="")

    def start(self) -> None:
        self.started = time.perf_counter()
        self.progress.start()

    def advance(self, summary: Summary) -> None:
        done = summary.labelled + summary.failed + summary.skipped
        rate = (summary.labelled + summary.failed) / max(time.perf_counter() - self.started, 1e-9)
        listed = "" if self.listing.finished else f"listed {self.listing.n:,} ({self.listing.rate:,.0f}/s)"
        total = self.total if self.total is not None else self.listing.n if self.listing.finished else None
        self.progress.update(self.task, completed=done, total=total, listed=listed, failed=summary.failed,
                             rate=f"{rate:.1f} img/s")

    def stop(self) -> None:
        self.progress.stop()
