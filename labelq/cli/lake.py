"""``labelq compact``: commit what killed writers left and rewrite small files into large ones (Delta store)."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.markup import escape

from ..errors import UsageError
from .base import app, clean_errors, err, load_settings, setup_logging


@app.command()
@clean_errors
def compact(
    every: Annotated[float | None, typer.Option(help="run again every this many seconds (a scheduled compactor)", min=1)] = None,
    target_mb: Annotated[int | None, typer.Option(help="size of the rewritten files, MB (default LABELQ_LAKE_TARGET_MB)", min=1)] = None,
    url: Annotated[str | None, typer.Option(help="the table (default LABELQ_RESULTS_URL), e.g. delta:///data/labels")] = None,
) -> None:
    """Commit chunk files not yet in the table, then compact small files, while workers write.

    Safe to run beside writers and other compactors: no record is lost or doubled.
    """
    from ..config import redact
    from ..services import open_records

    settings = load_settings(results_url=url)
    setup_logging(settings, quiet=True)
    store = open_records(settings)
    if not hasattr(store, "compact"):
        raise UsageError(f"{redact(settings.results)} is not a table: compact needs LABELQ_RESULTS_URL=delta:///… or delta+s3://…")
    target = (target_mb or settings.lake_target_mb) * 1024 * 1024
    try:
        while True:
            started = time.monotonic()
            healed = store.heal()
            done = store.compact(target)
            err.print(
                f"{escape(redact(settings.results))}: committed {healed} pending files; compacted {done['removed']} "
                f"files into {done['added']} ({done['records']} records) in {time.monotonic() - started:.1f}s",
                highlight=False, soft_wrap=True,
            )
            if every is None:
                return
            time.sleep(max(0.0, every - (time.monotonic() - started)))
    finally:
        store.close()
