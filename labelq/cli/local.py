"""Commands of one machine: ``labelq run`` (embedded), ``labelq export`` (any job), ``labelq model``."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..errors import UsageError
from ..logs import quiet_libraries
from .base import ModelOpt, app, clean_errors, count, err, load_settings, out, setup_logging

if TYPE_CHECKING:
    from ..config import Settings
    from ..records import Record

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

    A folder's files whose suffix is not in LABELQ_SUFFIXES are left out (the summary counts them);
    a text file as SOURCE is read as a manifest.
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
        err.print(interrupted_advice(summary), highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(130)
    if strict and summary.failed:
        raise typer.Exit(1)


def interrupted_advice(summary: Any) -> str:
    """What Ctrl-C left behind and how to finish: true with and without --force."""
    kept = (f"the {count(summary.images, 'image')} labelled so far {'is' if summary.images == 1 else 'are'} kept in "
            "the result table")
    if summary.out_file:
        kept += f" and in {summary.out_file}"
        if summary.out_earlier:
            kept += f" (with {count(summary.out_earlier, 'earlier record')} of the objects not reached yet)"
    if not summary.force:
        return f"interrupted: {kept}; run the same command again to finish (done objects are skipped)"
    return (f"interrupted: {kept}; the other objects keep their earlier records. To finish, run the same command "
            "without --force: it skips every object that has a record from the current model revision and labels "
            "the rest (with --force it would relabel them all again)")


def print_summary(summary: Any, console: Console) -> None:
    """Counts (labelled, failed, skipped), per model counts by label, errors by kind, throughput, the job.

    An interrupted run's summary counts what was written before Ctrl-C. A model's name is a line of
    its own (never wrapped inside a table title), its labels a table under it."""
    console.print(
        ("interrupted: " if summary.interrupted else "")
        + f"labelled {count(summary.labelled, 'image')}, {summary.failed} failed, {summary.skipped} skipped as "
        f"already done ({count(summary.records, 'record')}) in {summary.seconds:.1f}s: "
        f"{summary.images_per_s:.1f} images/s",
        soft_wrap=True, highlight=False,
    )
    if summary.unkept:
        from ..embedded import unkept_text

        console.print(f"left out {unkept_text(summary.unkept)} by suffix: not labelled, no records "
                      "(LABELQ_SUFFIXES=.jpg,.png,... includes them)", soft_wrap=True, highlight=False, markup=False)
    for model, labels in summary.labels.items():
        console.print(f"{escape(model)}: images by label", soft_wrap=True, highlight=False)
        table = Table()
        table.add_column("label")
        table.add_column("images", justify="right")
        for label, n in labels.most_common(10):
            table.add_row(escape(label), str(n))
        if len(labels) > 10:
            table.add_row(f"… {len(labels) - 10} more labels", str(sum(n for _, n in labels.most_common()[10:])))
        console.print(table)
    if summary.errors:
        console.print("errors (records per model)", highlight=False)
        table = Table()
        table.add_column("kind")
        table.add_column("records", justify="right")
        for kind, n in summary.errors.most_common():
            table.add_row(kind, str(n))
        console.print(table)
    if summary.out_file:
        console.print(f"wrote {count(summary.out_records, 'record')} to {escape(str(summary.out_file))}",
                      highlight=False, soft_wrap=True)
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
    with no Redis to ask) is looked up in the record store (LABELQ_RESULTS_URL), then in the result
    table of `labelq run` (--db).
    """
    from ..embedded import OutFile, prepare_output
    from ..records import RecordWriter

    kind = _export_format(fmt, output)
    if output is not None:
        prepare_output(output, kind)
    settings = load_settings(db_url=db)
    setup_logging(settings, quiet=True)
    found = find_job(job, settings)
    records, close = found.records, found.close
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
        err.print(f"wrote {count(n, 'record')} to {escape(str(output))}", highlight=False, soft_wrap=True)
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


@dataclass
class FoundJob:
    """Where a job's records are: the job book (distributed, with its state), a record store without the
    job's state (LABELQ_RESULTS_URL, after Redis lost or expired it) or the result table of `labelq run`."""

    kind: str  # "distributed", "records" or "run"
    records: Iterator[Record]
    store: Any  # what holds the records (SQL stores can tally a job)
    close: Callable[[], None]
    where: str
    services: Any = None  # for "distributed": the open services (job book)


def find_job(job: str, settings: Settings) -> FoundJob:
    """Look a job up where it can be, in order: the job book (when its Redis answers), the distributed record
    store (LABELQ_RESULTS_URL), the result table of `labelq run` (LABELQ_DB_URL, --db). UsageError naming every
    place looked in when none has it."""
    from ..config import redact
    from ..redis_client import connect
    from ..services import open_records

    looked: list[str] = []
    try:
        connect(settings.jobs_redis, master=settings.sentinel_master, retries=0).close()  # one quick try: no Redis must not cost seconds
        reachable = True
    except UsageError:
        reachable = False
        looked.append(f"no job Redis at {redact(settings.jobs_redis)}")
    if reachable:
        from ..services import open_services

        services = open_services(settings)
        if services.book.info(job) is not None:
            return FoundJob("distributed", services.job_records(job), services.records, services.close,
                            redact(settings.jobs_redis), services)
        looked.append(f"the job book at {redact(settings.jobs_redis)}")
        found = _peek(job, services.records, services.close, redact(settings.results), "records")
        if found is not None:
            return found
        looked.append(f"the record store {redact(settings.results)}")
    elif settings.results_url and settings.results_url != settings.jobs_redis:
        try:
            store = open_records(settings)
        except Exception as exc:  # noqa: BLE001 - an unreachable store is a place looked in, not a crash
            looked.append(f"the record store {redact(settings.results_url)} ({type(exc).__name__})")
        else:
            found = _peek(job, store, store.close, redact(settings.results_url), "records")
            if found is not None:
                return found
            looked.append(f"the record store {redact(settings.results_url)}")
    from ..embedded import open_run_table

    table = open_run_table(settings.db_url)
    if table is not None:
        found = _peek(job, table, table.close, redact(settings.db_url), "run")
        if found is not None:
            return found
        looked.append(f"the result table {redact(settings.db_url)}")
    else:
        looked.append(f"no result table at {redact(settings.db_url)}")
    raise UsageError(f"no such job: {job} (looked in: {'; '.join(looked)}); `labelq jobs` lists the jobs, --db names "
                     "another result table of `labelq run`")


def print_records_status(found: FoundJob, job: str, *, as_json: bool = False, errors: bool = False,
                         limit: int = 20) -> None:
    """`labelq status` of a job known only by its records (a `labelq run` job, or one whose Redis state is
    gone): objects, records by status, error kinds, counts by label per model; with ``errors`` the error
    records by kind with their messages."""
    import json

    failed: dict[str, list[Record]] = {}
    try:
        tally = found.store.tally(job) if hasattr(found.store, "tally") else tally_records(job, found.records)
        if errors:
            for rec in found.store.iter_records(job):
                if not rec.ok:
                    failed.setdefault(rec.error_kind or "model_error", []).append(rec)
    finally:
        found.close()
    what = ("`labelq run` job: its records in the result table" if found.kind == "run"
            else "records only (no job state in Redis): from the record store")
    if as_json:
        out.print_json(json.dumps({"kind": found.kind, "where": found.where, **tally}))
        return
    table = Table(show_header=False)
    table.add_column("field")
    table.add_column("value")
    status = tally["status"]
    rows = [("job", job), ("kind", f"{what} {found.where}"), ("objects", str(tally["objects"])),
            ("records ok", str(status.get("ok", 0))), ("records failed", str(sum(status.values()) - status.get("ok", 0)))]
    rows += [(f"  {kind}", str(n)) for kind, n in sorted(tally["errors"].items())]
    rows += [("first record", tally["first"] or "-"), ("last record", tally["last"] or "-")]
    for k, v in rows:
        table.add_row(k, escape(v))
    out.print(table)
    for model, labels in tally["labels"].items():
        out.print(f"{escape(model)}: images by label", soft_wrap=True, highlight=False)
        view = Table()
        view.add_column("label")
        view.add_column("images", justify="right")
        ranked = sorted(labels.items(), key=lambda x: (-x[1], x[0]))
        for label, n in ranked[:10]:
            view.add_row(escape(label), str(n))
        if len(ranked) > 10:
            view.add_row(f"… {len(ranked) - 10} more labels", str(sum(n for _, n in ranked[10:])))
        out.print(view)
    if errors:
        if not failed:
            out.print("no failures")
        for kind, recs in sorted(failed.items()):
            out.print(f"[bold]{kind}[/bold] ({len(recs)})", highlight=False)
            for rec in recs[:limit]:
                out.print(f"  {rec.uri}  [{rec.model}]  {rec.error}", markup=False, highlight=False, soft_wrap=True)
            if len(recs) > limit:
                out.print(f"  … {len(recs) - limit} more")


def tally_records(job: str, records: Iterator[Record]) -> dict[str, Any]:
    """What SQLStore.tally counts, from any store's records (one pass)."""
    uris: set[str] = set()
    status: dict[str, int] = {}
    labels: dict[str, dict[str, int]] = {}
    errors: dict[str, int] = {}
    first = last = None
    for rec in records:
        uris.add(rec.uri)
        status[rec.status] = status.get(rec.status, 0) + 1
        if rec.ok:
            by_label = labels.setdefault(rec.model, {})
            by_label[rec.label or ""] = by_label.get(rec.label or "", 0) + 1
        else:
            errors[rec.error_kind or "model_error"] = errors.get(rec.error_kind or "model_error", 0) + 1
        first = min(first or rec.processed_at, rec.processed_at)
        last = max(last or rec.processed_at, rec.processed_at)
    return {"job": job, "objects": len(uris), "status": status, "labels": labels, "errors": errors,
            "first": first, "last": last}


def _peek(job: str, store: Any, close: Callable[[], None], where: str, kind: str) -> FoundJob | None:
    """The job's records in ``store`` when it has any (the first is read), else None (``store`` closed)."""
    from itertools import chain

    records = store.iter_records(job)
    first = next(records, None)
    if first is None:
        close()
        return None
    return FoundJob(kind, chain([first], records), store, close, where)
