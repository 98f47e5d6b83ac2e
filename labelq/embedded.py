"""`labelq run`: the engine in one process, writing to the SQL result table."""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

from .config import Settings
from .engine import Engine
from .models import load_classifier
from .records import RecordWriter, format_for
from .results import SQLStore, skip_done
from .storage import Stores, iter_source, parse_source

logger = logging.getLogger(__name__)


@dataclass
class Summary:
    images: int = 0
    records: int = 0
    skipped: int = 0
    seconds: float = 0.0
    labels: dict[str, Counter[str]] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)
    out_file: Path | None = None

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


class _Counting:
    """Counts what the skip filter lets through vs what the listing produced."""

    def __init__(self, it: Any) -> None:
        self.it = it
        self.n = 0

    def __iter__(self) -> Any:
        for x in self.it:
            self.n += 1
            yield x


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
    """Label a source in-process; returns what happened."""
    source = parse_source(source_text)
    fmt = format_for(out_file) if out_file else None
    store = SQLStore(settings.db_url)
    stores = Stores(settings, local_root=source.root if source.kind != "s3" else settings.local_root)
    # Take the first object before loading models: unreachable storage fails in a second, not after the load.
    listing = iter_source(source, stores)
    first = next(listing, None)
    classifiers = [load_classifier(name, settings) for name in settings.models]
    names = [c.name for c in classifiers]
    listed = _Counting(chain([first], listing) if first is not None else iter(()))
    refs = listed if force else skip_done(listed, store, names)
    summary = Summary(out_file=out_file)
    writer = RecordWriter(out_file, fmt) if out_file and fmt else None
    bar = _progress(console) if progress else None
    task = bar.add_task("labelling", total=None, errors=0, rate="") if bar else None
    start = time.perf_counter()
    try:
        with Engine(classifiers, stores, settings, worker="embedded") as engine:
            if bar:
                bar.start()
            for records in engine.run(refs, job=job):
                store.write(records)
                if writer:
                    writer.write(records)
                if bar:
                    rate = engine.stats.images / max(time.perf_counter() - start, 1e-9)
                    bar.update(task, completed=engine.stats.images, rate=f"{rate:.1f} img/s",
                               errors=sum(engine.stats.errors.values()) // len(classifiers))
    finally:
        if bar:
            bar.stop()
        if writer:
            writer.close()
        store.close()
    summary.seconds = time.perf_counter() - start
    summary.images = engine.stats.images
    summary.records = engine.stats.records
    summary.labels = engine.stats.labels
    summary.errors = engine.stats.errors
    summary.skipped = listed.n - summary.images
    return summary


def _progress(console: Any) -> Any:
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        TextColumn("{task.completed} images"),
        TextColumn("{task.fields[rate]}"),
        TextColumn("errors {task.fields[errors]}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=console is None or not console.is_terminal,
    )
