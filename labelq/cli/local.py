"""Commands of one machine: ``labelq run`` (embedded), ``labelq export`` (any job), ``labelq model``."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..errors import UsageError
from ..logs import quiet_libraries
from .base import ModelOpt, app, clean_errors, err, load_settings, out, setup_logging

if TYPE_CHECKING:
    from ..config import Settings

logger = logging.getLogger(__name__)

@app.command()
@clean_errors
def run(
    source: Annotated[str, typer.Argument(help="folder, manifest file (paths or URIs, one a line), s3://bucket/prefix, "
                                          "S3 inventory manifest.json, or one image")],
    model: ModelOpt = None,
    batch_size: Annotated[int | None, typer.Option(help="images per forward pass")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N, mps")] = None,
    dtype: Annotated[str | None, typer.Option(help="auto, float32, bfloat16, float16")] = None,
    db: Annotated[str | None, typer.Option(help="result table URL (default sqlite:///labelq.db)")] = None,
    out_file: Annotated[Path | None, typer.Option("--out", "-o", help="also write a record for every object of the "
                                                   "source here (.jsonl, .csv, .parquet)")] = None,
    force: Annotated[bool, typer.Option(help="relabel objects that already have records")] = False,
    job: Annotated[str | None, typer.Option(help="job name stored on each record (default: from the source); "
                                            "`labelq export JOB` reads it back")] = None,
    strict: Annotated[bool, typer.Option(help="exit 1 when any image failed")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Label SOURCE in this process (no broker, no Redis): results go to --db and --out.

    Exit codes: 0 done (failed images are error records), 1 some images failed (with --strict),
    2 a usage error (nothing was labelled), 130 interrupted (what was labelled is kept; run again).
    """
    from ..embedded import run_embedded

    settings = load_settings(models=model or None, batch_size=batch_size, device=device, dtype=dtype, db_url=db)
    setup_logging(settings, quiet=True)
    summary = run_embedded(source, settings, out_file=out_file, force=force, job=job, progress=not quiet,
                           console=err)
    print_summary(summary, out)
    if summary.interrupted:
        err.print(f"interrupted: the {summary.images} images labelled so far are kept; run the same command again "
                  "to finish (done objects are skipped)", highlight=False, soft_wrap=True)
        raise typer.Exit(130)
    if strict and summary.failed:
        raise typer.Exit(1)


def print_summary(summary: Any, console: Console) -> None:
    """Counts (labelled, failed, skipped), per model counts by label, errors by kind, throughput, the job."""
    console.print(
        f"labelled {summary.labelled} images, {summary.failed} failed, {summary.skipped} skipped as already done "
        f"({summary.records} records) in {summary.seconds:.1f}s: {summary.images_per_s:.1f} images/s",
        soft_wrap=True, highlight=False,
    )
    for model, labels in summary.labels.items():
        table = Table(title=escape(model), title_justify="left")
        table.add_column("label")
        table.add_column("images", justify="right")
        for label, n in labels.most_common(10):
            table.add_row(escape(label), str(n))
        if len(labels) > 10:
            table.add_row(f"… {len(labels) - 10} more labels", str(sum(n for _, n in labels.most_common()[10:])))
        console.print(table)
    if summary.errors:
        table = Table(title="errors (records per model)", title_justify="left")
        table.add_column("kind")
        table.add_column("records", justify="right")
        for kind, n in summary.errors.most_common():
            table.add_row(kind, str(n))
        console.print(table)
    if summary.out_file:
        console.print(f"wrote {summary.out_records} records to {escape(str(summary.out_file))}", highlight=False,
                      soft_wrap=True)
    console.print(f"job {escape(summary.job)} (`labelq export {escape(summary.job)}` writes its records again)",
                  highlight=False, soft_wrap=True)


# ----------------------------------------------------------------------------- models

model_app = typer.Typer(help="Models: stage hub models for offline use, list what is cached.", no_args_is_help=True)
app.add_typer(model_app, name="model")


@model_app.command("pull")
@clean_errors
def model_pull(
    name: Annotated[str, typer.Argument(help="hub id, e.g. Falconsai/nsfw_image_detection")],
    to: Annotated[Path | None, typer.Option("--to", help="a folder to stage it in (default: the Hugging Face cache)")] = None,
    revision: Annotated[str | None, typer.Option(help="branch, tag or commit (default: main)")] = None,
) -> None:
    """Download a model (config, preprocessing, weights) once, so that runs and workers load it offline."""
    from ..hub import human_size, pull

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    quiet_libraries(logging.ERROR)
    pulled = pull(name, to=to, revision=revision)
    err.print(f"pulled {escape(name)} @ {pulled.revision or '?'}: {pulled.files} files, {human_size(pulled.size)}",
              highlight=False, soft_wrap=True)
    if to is not None:
        err.print(f"use it offline with --model {escape(str(to))} (or LABELQ_MODELS={escape(str(to))}); copy the folder "
                  "to machines without the hub", highlight=False, soft_wrap=True)
    else:
        err.print(f"use it offline with --model {escape(name)} and HF_HUB_OFFLINE=1; `labelq model ls` lists the cache",
                  highlight=False, soft_wrap=True)
    out.print(escape(str(pulled.folder)), highlight=False, soft_wrap=True)


@model_app.command("ls")
@clean_errors
def model_ls() -> None:
    """Models in the Hugging Face cache (HF_HOME): name, revision, refs, size."""
    from ..hub import cache_dir, cached_models, human_size

    rows = list(cached_models())
    if not rows:
        err.print(f"no models in the Hugging Face cache at {escape(str(cache_dir()))} (`labelq model pull ID` adds "
                  "one)", highlight=False, soft_wrap=True)
        return
    table = Table(title=f"models in {escape(str(cache_dir()))}", title_justify="left")
    for col in ("model", "revision", "refs", "files", "size"):
        table.add_column(col, justify="right" if col in ("files", "size") else "left")
    for m in rows:
        table.add_row(escape(m.name), m.revision[:12], escape(", ".join(m.refs)) or "-", str(m.files),
                      human_size(m.size))
    out.print(table)


@app.command()
@clean_errors
def export(
    job: Annotated[str, typer.Argument(help="job name: of `labelq enqueue` or of `labelq run`")],
    fmt: Annotated[str | None, typer.Option("--format", help="jsonl, csv or parquet (default: from -o, else jsonl)")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="file to write (default stdout for jsonl/csv)")] = None,
    db: Annotated[str | None, typer.Option(help="result table of `labelq run` jobs (default LABELQ_DB_URL, "
                                           "sqlite:///labelq.db)")] = None,
) -> None:
    """Stream a job's records (one per image and model) to JSONL, CSV or Parquet.

    Distributed jobs come from the job book and record store; a job the job book does not know (or
    with no Redis to ask) is looked up in the result table of `labelq run` (--db).
    """
    from ..embedded import OutFile, prepare_output
    from ..records import RecordWriter

    kind = _export_format(fmt, output)
    if output is not None:
        prepare_output(output, kind)
    settings = load_settings(db_url=db)
    setup_logging(settings, quiet=True)
    records, close = _job_records(job, settings)
    try:
        if output is None:
            with RecordWriter(sys.stdout, kind) as writer:
                writer.write(records)
            return
        target = OutFile(output, kind)
        commit = False
        try:
            target.write(records)
            commit = True
        finally:
            n = target.close(commit=commit)
        err.print(f"wrote {n} records to {escape(str(output))}", highlight=False, soft_wrap=True)
    finally:
        close()


def _export_format(fmt: str | None, output: Path | None) -> str:
    from ..records import FORMATS, format_for

    if fmt is not None:
        kind = "jsonl" if fmt.lower() == "json" else fmt.lower()
        if kind not in FORMATS:
            raise UsageError(f"unknown format {fmt!r}: use jsonl, csv or parquet")
    else:
        kind = format_for(output) if output is not None else "jsonl"
    if kind == "parquet" and output is None:
        raise UsageError("parquet needs a file: add -o FILE.parquet")
    return kind


def _job_records(job: str, settings: Settings) -> tuple[Any, Callable[[], None]]:
    """A job's records and what closes their store: the distributed job book first, else the result
    table of `labelq run` (when the job book does not know the job, or there is no Redis to ask)."""
    from itertools import chain

    from ..config import redact
    from ..redis_client import connect

    why = "not in the job book"
    try:
        connect(settings.jobs_redis, master=settings.sentinel_master, retries=0).close()  # one quick try: no Redis must not cost seconds
        reachable = True
    except UsageError:
        reachable, why = False, "no job Redis reachable"
    if reachable:
        from ..services import open_services

        services = open_services(settings)
        if services.book.info(job) is not None:
            return services.job_records(job), services.close
        services.close()
    from ..results.sql import SQLStore

    table = SQLStore(settings.db_url)
    records = table.iter_records(job)
    first = next(records, None)
    if first is None:
        table.close()
        raise UsageError(f"no such job: {job} ({why} at {redact(settings.jobs_redis)}, no records in the result "
                         f"table {redact(settings.db_url)}; `labelq jobs` lists distributed jobs, --db names "
                         "another result table)")
    return chain([first], records), table.close


