"""The ``labelq`` command: the edge where settings are read and services are opened."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import UsageError
from .logs import quiet_libraries

if TYPE_CHECKING:
    from .config import Settings

# Module level stays light (typer, rich): `labelq --help` and commands that need no model import no
# pydantic, torch or transformers. Each command imports what it uses.


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment plus CLI flags (labelq.config.load_settings, imported on first use)."""
    from .config import load_settings as load

    return load(**overrides)

logger = logging.getLogger(__name__)

app = typer.Typer(
    name="labelq",
    help="Label stored images with image classifiers, in bulk and in the background.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
out = Console()

F = TypeVar("F", bound=Callable[..., Any])


@app.callback()
def _root() -> None:
    """labelq: label stored images with image classifiers."""


def clean_errors(fn: F) -> F:
    """Turn UsageError (and Ctrl-C) into one line on stderr and a non-zero exit."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UsageError as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except Exception as exc:
            # A service failing under us (Redis out of memory, read-only or gone): one line, exit 1.
            if type(exc).__module__.split(".")[0] not in ("redis", "kombu", "amqp"):
                raise
            line = " ".join(f"{type(exc).__name__}: {exc}".split())
            err.print(f"[red]error:[/red] {escape(line)} (nothing after the last completed step was done; "
                      "run the same command again when the service is back)", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def setup_logging(settings: Settings, *, quiet: bool = False) -> None:
    level = logging.WARNING if quiet else getattr(logging, settings.log_level.upper(), logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    quiet_libraries()


ModelOpt = Annotated[
    list[str] | None, typer.Option("--model", "-m", help="hub id or local folder; repeat for several (default LABELQ_MODELS)")
]


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
    from .embedded import run_embedded

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
    from .hub import human_size, pull

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
    from .hub import cache_dir, cached_models, human_size

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


# ----------------------------------------------------------------------------- distributed


def _services(settings: Settings) -> tuple[Any, Any]:
    """The job book and the record store named by settings (see labelq.services)."""
    from .services import open_services

    services = open_services(settings)
    return services.book, services.records


def _job_services(job: str) -> tuple[Settings, Any, Any]:
    """Settings, job book and record store for a command about one existing job."""
    from .services import open_services

    settings = load_settings()
    setup_logging(settings, quiet=True)
    services = open_services(settings)
    services.job(job)
    return settings, services.book, services.records


@app.command()
@clean_errors
def worker(
    devices: Annotated[str, typer.Option(help="auto (one process per GPU, else cpu), cpu, or GPU indices 0,1,...")] = "auto",
    loglevel: Annotated[str, typer.Option(help="worker log level")] = "INFO",
    name: Annotated[str | None, typer.Option(help="node name prefix (default cpu / gpuN); distinct per worker on a host")] = None,
    live: Annotated[bool, typer.Option(help="serve the live queue (single uploads, dynamic batching) instead of bulk chunks")] = False,
) -> None:
    """Start Celery workers: one process per device, models loaded once per process."""
    from .launcher import run_workers
    from .redis_client import connect

    settings = load_settings()
    setup_logging(settings)
    connect(settings.jobs_redis)  # fail fast, with one clear line, when Redis is down
    raise typer.Exit(run_workers(devices, settings, loglevel=loglevel, name=name, live=live))


@app.command()
@clean_errors
def enqueue(
    source: Annotated[str, typer.Argument(help="s3://bucket/prefix, folder, manifest file or inventory manifest.json")],
    model: ModelOpt = None,
    job: Annotated[str | None, typer.Option(help="job name (its id); the same name again resumes the job")] = None,
    chunk_size: Annotated[int | None, typer.Option(help="object refs per task (default LABELQ_CHUNK_SIZE)")] = None,
    wait: Annotated[bool, typer.Option(help="show progress and return when every object has a record")] = False,
    strict: Annotated[bool, typer.Option(help="with --wait: exit 1 when any record failed")] = False,
    force: Annotated[bool, typer.Option(help="relabel objects that already have records")] = False,
    background: Annotated[bool, typer.Option(hidden=True, help="internal: the background producer of a job")] = False,
) -> None:
    """List SOURCE and queue its images for the workers; prints the job id.

    At most LABELQ_MAX_QUEUED_CHUNKS chunks wait in the broker: when the queue is full, listing
    goes on in a background producer (or, with --wait, in this process) as workers drain it.
    Exit codes: 0 done, 1 the job failed (dead-lettered chunks), stalled, or (--strict) has failures, 2 usage.
    """
    from .producer import QueueFull
    from .producer import enqueue as do_enqueue
    from .services import open_services

    settings = load_settings(models=model or None, chunk_size=chunk_size)
    setup_logging(settings, quiet=not background)
    services = open_services(settings)
    if not background:
        from .models import check_model

        for name in settings.models:  # before anything is published
            check_model(name)
    job = job or _new_job_id()
    try:
        result = do_enqueue(source, settings, app=services.app, book=services.book, store=services.records, job=job,
                            force=force, wait_for_room=wait or background)
    except QueueFull:
        pid, log = _spawn_producer(source, settings, job, force)
        info = services.job(job)
        err.print(f"job {job}: listed {info.listed}, enqueued {info.enqueued} in {info.chunks} chunks so far; the queue "
                  f"is full (LABELQ_MAX_QUEUED_CHUNKS={settings.max_queued_chunks}): listing goes on in the background "
                  f"(pid {pid}, log {log})", highlight=False, soft_wrap=True)
        out.print(job, highlight=False)
        if wait:  # not reached: --wait lists in this process
            raise typer.Exit(_exit_code(follow(services.book, job), strict)) from None
        return
    if result.state == "busy":
        err.print(f"job {job} is being listed by another producer; it goes on from its cursor "
                  f"(listed {result.listed} so far)", highlight=False)
    elif not background:
        err.print(
            f"job {result.job}: listed {result.listed}, enqueued {result.enqueued} in {result.chunks} chunks, "
            f"skipped {result.skipped} already labelled"
            + (f" (resumed after {result.resumed_from})" if result.resumed_from else ""),
            highlight=False,
        )
    if background:
        return
    out.print(result.job, highlight=False)
    if wait:
        raise typer.Exit(_exit_code(follow(services.book, result.job), strict))


def _new_job_id() -> str:
    from .jobs import new_job_id

    return new_job_id()


def _spawn_producer(source: str, settings: Settings, job: str, force: bool) -> tuple[int, Path]:
    """Go on listing in a detached process (it resumes from the job's cursor)."""
    import os
    import re
    import subprocess
    import tempfile

    log = Path(tempfile.gettempdir()) / f"labelq-producer-{re.sub(r'[^A-Za-z0-9_.-]', '_', job)}.log"
    argv = [sys.executable, "-m", "labelq", "enqueue", source, "--job", job, "--background",
            "--chunk-size", str(settings.chunk_size)]
    for m in settings.models:
        argv += ["--model", m]
    if force:
        argv.append("--force")
    with log.open("ab") as f:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=f, start_new_session=True,
                                env=dict(os.environ))
    return proc.pid, log


def _exit_code(info: Any, strict: bool) -> int:
    if info is None or info.state != "done":
        return 1
    return 1 if strict and info.error else 0


def follow(book: Any, job: str, *, poll: float = 0.5, stall_timeout: float | None = None) -> Any:
    """A live progress bar until the job is finished: done, failed, total, rate, ETA.

    Gives up (returns the job's info, not finished) when nothing moved for ``stall_timeout``
    seconds (default LABELQ_STALL_TIMEOUT): no worker took a chunk or wrote a record.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    if stall_timeout is None:
        stall_timeout = load_settings().stall_timeout
    info = book.info(job)
    if info is None:
        raise UsageError(f"no such job: {job}")
    with Progress(
        TextColumn(f"[bold]{escape(job)}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("failed {task.fields[failed]}"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
    ) as bar:
        n_models = max(1, len(info.models))
        task = bar.add_task("job", total=info.total, failed=0, rate="")
        start, first = time.monotonic(), info.processed
        moved_at, last = time.monotonic(), None
        while True:
            try:
                info = book.info(job)
            except Exception as exc:  # noqa: BLE001 - Redis went away while waiting
                raise UsageError(f"lost the job Redis while waiting for job {job}: {type(exc).__name__}: {exc}; "
                                 f"`labelq status {job}` shows it once Redis is back") from None
            if info is None:
                raise UsageError(f"job {job} disappeared (expired, or Redis lost its data)")
            rate = (info.processed - first) / n_models / max(time.monotonic() - start, 1e-9)
            bar.update(task, completed=info.processed // n_models, total=info.total, failed=info.error // n_models,
                       rate=f"{rate:.1f} img/s")
            if info.done:
                break
            now = (info.processed, info.dead, info.chunks_done, info.listed, book.oldest_waiting()[1])
            if now != last:
                moved_at, last = time.monotonic(), now
            elif time.monotonic() - moved_at > stall_timeout:
                bar.stop()
                err.print(f"[red]error:[/red] job {escape(job)}: nothing moved for {stall_timeout:g}s "
                          f"({info.processed // n_models} of {info.total if info.total is not None else '?'} done): "
                          "is a worker running for its queue and models? (`labelq ping`); `labelq status "
                          f"{escape(job)}` shows where it stands", highlight=False, soft_wrap=True)
                return info
            time.sleep(poll)
    if info.state == "failed":
        err.print(f"job {escape(job)} finished with {info.dead_chunks} dead-lettered chunks ({info.dead} records not "
                  f"written): `labelq status {escape(job)} --errors` shows why, `labelq retry {escape(job)}` runs them "
                  "again", highlight=False, soft_wrap=True)
    return info


@app.command()
@clean_errors
def status(
    job: Annotated[str, typer.Argument(help="job id")],
    follow_: Annotated[bool, typer.Option("--follow", "-f", help="show live progress until done")] = False,
    errors: Annotated[bool, typer.Option("--errors", help="list failed objects by error kind")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Totals of a job: state, listed, done, failed (by kind), dead-lettered chunks."""
    import json

    from .services import open_services

    settings = load_settings()
    setup_logging(settings, quiet=True)
    services = open_services(settings)
    book = services.book
    if follow_:
        follow(book, job)
    info = services.job(job)
    older = _older_revisions(services, info)
    if as_json:
        doc = info.to_dict()
        doc["older_revisions"] = older
        doc["dead_letters"] = [{k: v for k, v in d.items() if k != "refs"} | {"objects": len(d.get("refs", []))}
                               for d in book.dead_chunks(job)]
        out.print_json(json.dumps(doc))
    else:
        print_job(info, producer_stale=_producer_stale(info), older=older)
    if errors:
        print_errors(book, job)


def _older_revisions(services: Any, info: Any) -> dict[str, int]:
    """Per model, the job's records made by another revision than the model's current one (hub commit or
    folder hash): what a rerun would relabel."""
    from .models import resolve_revision
    from .results import older_revisions

    try:
        counts = services.records.revisions(info.id)
    except Exception as exc:  # noqa: BLE001 - a store that cannot say must not break status
        logger.debug("revisions of %s: %s", info.id, exc)
        return {}
    return older_revisions(counts, {m: resolve_revision(m) for m in info.models})


def _producer_stale(info: Any) -> bool:
    """A job still listing whose producer has not been heard from for a while (killed?)."""
    from .producer import LEASE_S

    return info.state == "listing" and info.producer_at is not None and time.time() - info.producer_at > 2 * LEASE_S


def print_job(info: Any, *, producer_stale: bool = False, older: dict[str, int] | None = None) -> None:
    table = Table(title=f"job {escape(info.id)}", title_justify="left", show_header=False)
    table.add_column("field")
    table.add_column("value")
    n_models = max(1, len(info.models))
    state = info.state
    if producer_stale:
        state += " (no producer for a while: run the same `labelq enqueue` again to resume the listing)"
    rows = [
        ("state", state),
        ("source", info.source),
        ("models", ", ".join(info.models)),
        ("created", info.created_at),
        ("finished", info.finished_at or "-"),
        ("objects listed", str(info.listed) + ("" if info.total is not None else " (listing)")),
        ("total", "-" if info.total is None else str(info.total)),
        ("skipped (already labelled)", str(info.skipped)),
        ("chunks", f"{info.chunks_done} of {info.chunks} done"),
        ("records ok", str(info.ok)),
        ("records failed", str(info.error)),
        ("objects done", f"{info.processed // n_models}"),
    ]
    for kind, n in sorted(info.errors.items()):
        rows.append((f"  {kind}", str(n)))
    for model, n in sorted((older or {}).items()):
        if n:
            rows.append((f"records from an older revision of {model}", f"{n} (a new job relabels them)"))
    if info.dead_chunks:
        rows.append(("dead-lettered chunks", f"{info.dead_chunks} ({info.dead} records not written; "
                                             f"`labelq retry {info.id}` runs them again)"))
    for k, v in rows:
        table.add_row(k, escape(v))
    out.print(table)


def print_errors(book: Any, job: str, limit: int = 20) -> None:
    """The job's dead letters: failed objects grouped by kind with their messages, and dead chunks."""
    by_kind: dict[str, list[Any]] = {}
    for f in book.failures(job):
        by_kind.setdefault(f.kind or "?", []).append(f)
    dead = book.dead_chunks(job)
    if not by_kind and not dead:
        out.print("no failures")
        return
    for kind, fails in sorted(by_kind.items()):
        out.print(f"[bold]{kind}[/bold] ({len(fails)})", highlight=False)
        for f in sorted(fails, key=lambda f: (f.uri, f.model))[:limit]:
            out.print(f"  {f.uri}  [{f.model}]  {f.message}", markup=False, highlight=False, soft_wrap=True)
        if len(fails) > limit:
            out.print(f"  … {len(fails) - limit} more")
    if dead:
        out.print(f"[bold]dead-lettered chunks[/bold] ({len(dead)})", highlight=False)
        for d in dead[:limit]:
            out.print(f"  {d['chunk']}  {len(d.get('refs', []))} objects, {d.get('attempts')} attempts, "
                      f"last on {d.get('worker')}: {d.get('error')}", markup=False, highlight=False, soft_wrap=True)


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
    from .embedded import OutFile, prepare_output
    from .records import RecordWriter

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
    from .records import FORMATS, format_for

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

    from .config import redact
    from .redis_client import connect

    why = "not in the job book"
    try:
        connect(settings.jobs_redis, retries=0).close()  # one quick try: no Redis must not cost seconds
        reachable = True
    except UsageError:
        reachable, why = False, "no job Redis reachable"
    if reachable:
        from .services import open_services

        services = open_services(settings)
        if services.book.info(job) is not None:
            return services.job_records(job), services.close
        services.close()
    from .results.sql import SQLStore

    table = SQLStore(settings.db_url)
    records = table.iter_records(job)
    first = next(records, None)
    if first is None:
        table.close()
        raise UsageError(f"no such job: {job} ({why} at {redact(settings.jobs_redis)}, no records in the result "
                         f"table {redact(settings.db_url)}; `labelq jobs` lists distributed jobs, --db names "
                         "another result table)")
    return chain([first], records), table.close


@app.command()
@clean_errors
def retry(
    job: Annotated[str, typer.Argument(help="job id")],
    wait: Annotated[bool, typer.Option(help="show progress and return when the retried objects are done")] = False,
) -> None:
    """Re-run a job's dead-lettered chunks and its objects that failed with a retryable kind
    (storage_error, model_error, access_denied)."""
    from .producer import retry as do_retry
    from .services import open_services

    settings = load_settings()
    setup_logging(settings, quiet=True)
    services = open_services(settings)
    services.job(job)
    n = do_retry(job, settings, app=services.app, book=services.book, store=services.records)
    err.print(f"job {job}: re-enqueued {n} objects (dead-lettered chunks and retryable failures)", highlight=False)
    if wait and n:
        raise typer.Exit(_exit_code(follow(services.book, job), False))


@app.command()
@clean_errors
def jobs(limit: Annotated[int, typer.Option(help="how many, newest first")] = 20) -> None:
    """Recent jobs and their state."""
    settings = load_settings()
    setup_logging(settings, quiet=True)
    book, _ = _services(settings)
    table = Table()
    for col in ("job", "state", "total", "ok", "failed", "dead", "models", "created"):
        table.add_column(col)
    for info in book.jobs(limit):
        table.add_row(escape(info.id), info.state, "-" if info.total is None else str(info.total), str(info.ok),
                      str(info.error), str(info.dead), escape(", ".join(info.models)), info.created_at)
    out.print(table)


@app.command()
@clean_errors
def ping(
    source: Annotated[str | None, typer.Option(help="also check this source can be listed")] = None,
    workers: Annotated[bool, typer.Option(help="require at least one worker to answer")] = True,
    node: Annotated[str | None, typer.Option(help="require this worker node (e.g. gpu0@host) to answer")] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for workers")] = 3.0,
) -> None:
    """Check broker, job Redis, result store, storage and workers; non-zero exit if any is down."""
    from .health import ping as do_ping

    settings = load_settings()
    setup_logging(settings, quiet=True)
    checks, replies = do_ping(settings, source=source, workers=workers or node is not None, node=node, timeout=timeout)
    for check in checks:
        mark = "[green]ok[/green]  " if check.ok else "[red]DOWN[/red]"
        out.print(f"{mark} {check.name}: {escape(check.detail)}", highlight=False, soft_wrap=True)
    for name, info in sorted(replies.items()):
        models = ", ".join(info.get("models", [])) or "(none loaded)"
        out.print(f"     {escape(name)}: device {info.get('device')}, models {escape(models)}", highlight=False)
    if not all(c.ok for c in checks):
        raise typer.Exit(1)


@app.command()
@clean_errors
def listen(
    minio: Annotated[bool, typer.Option(help="read MinIO bucket events from the Redis list LABELQ_EVENTS_KEY")] = False,
    sqs: Annotated[str | None, typer.Option(help="SQS queue URL of S3 event notifications (or LABELQ_SQS_QUEUE_URL)")] = None,
    model: ModelOpt = None,
    job: Annotated[str, typer.Option(help="the job new uploads are counted in")] = "live",
) -> None:
    """Enqueue new uploads from bucket notifications as live tasks, until interrupted."""
    from .listen import Listener
    from .tasks import make_app

    settings = load_settings(models=model or None, sqs_queue_url=sqs)
    setup_logging(settings)
    if not minio and not settings.sqs_queue_url:
        raise UsageError("say where events come from: --minio and/or --sqs QUEUE_URL")
    book, _ = _services(settings)
    listener = Listener(settings, app=make_app(settings), book=book, job=job, models=list(settings.models))
    import threading

    threads = []
    if minio:
        threads.append(threading.Thread(target=listener.run_minio, name="minio", daemon=True))
    if settings.sqs_queue_url:
        threads.append(threading.Thread(target=listener.run_sqs, name="sqs", daemon=True))
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads):
            time.sleep(0.5)
    finally:
        listener.stop.set()
        err.print(f"enqueued {listener.enqueued}, duplicates {listener.duplicates}, malformed {listener.bad}")


@app.command()
@clean_errors
def console(
    host: Annotated[str | None, typer.Option(help="address to listen on (default LABELQ_CONSOLE_HOST, 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default LABELQ_CONSOLE_PORT, 8080)")] = None,
    read_only: Annotated[bool, typer.Option("--read-only", help="nobody may change anything (viewers only)")] = False,
) -> None:
    """Serve the web console: jobs, label browser, review queue (docs/console.md)."""
    try:
        from .console import serve
    except ImportError as exc:
        raise UsageError(f"the console needs its extra: pip install 'labelq[console]' ({exc})") from None

    settings = load_settings(console_host=host, console_port=port, console_read_only=read_only or None)
    setup_logging(settings)
    err.print(f"labelq console on http://{settings.console_host}:{settings.console_port}/", highlight=False)
    serve(settings)


moderate_app = typer.Typer(help="Moderation: apply a policy to stored scores, export the audit trail.",
                           no_args_is_help=True)
app.add_typer(moderate_app, name="moderate")


@moderate_app.command("apply")
@clean_errors
def moderate_apply(
    job: Annotated[str, typer.Argument(help="job whose stored records the policy is applied to")],
    policy: Annotated[Path, typer.Option(help="policy file (TOML)")],
    dry_run: Annotated[bool, typer.Option(help="print what would change, change nothing")] = False,
) -> None:
    """Apply a (new) policy to a job's stored scores without re-running any model."""
    from .moderation import Moderator, load_policy
    from .records import chunks
    from .storage import Stores

    settings, book, store = _job_services(job)
    moderator = Moderator(load_policy(policy), redis=book.redis, stores=Stores(settings))
    total: dict[str, int] = {}
    for page in chunks(store.iter_records(job), 1000):
        actions = moderator.plan(page) if dry_run else moderator.apply(page)
        for a in actions:
            key = a.action if dry_run else f"{a.action} {a.result}"
            total[key] = total.get(key, 0) + 1
            if dry_run:
                out.print(f"would {a.action}: {a.uri} [{a.model}] {a.label}={a.score:.3f}", markup=False,
                          highlight=False, soft_wrap=True)
    verb = "would take" if dry_run else "took"
    summary = ", ".join(f"{k}: {v}" for k, v in sorted(total.items())) or "nothing to do"
    err.print(f"policy {moderator.policy.version} {verb} {sum(total.values())} actions ({summary})", markup=False)


@moderate_app.command("audit")
@clean_errors
def moderate_audit(
    job: Annotated[str | None, typer.Option(help="only actions on this job's records")] = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl or csv")] = "jsonl",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="file (default stdout)")] = None,
) -> None:
    """Export the audit trail: every action taken, with object, label, score, policy version, result and time."""
    from .moderation import iter_audit, write_audit

    if fmt not in ("jsonl", "csv"):
        raise UsageError(f"audit format must be jsonl or csv, not {fmt!r}")
    settings = load_settings()
    setup_logging(settings, quiet=True)
    book, _ = _services(settings)
    if output:
        with output.open("w", encoding="utf-8", newline="") as f:
            n = write_audit(iter_audit(book.redis, job=job), fmt, f)
        err.print(f"wrote {n} audit entries to {output}")
    else:
        write_audit(iter_audit(book.redis, job=job), fmt, sys.stdout)


def main() -> None:
    app()


if __name__ == "__main__":
    main()

