"""The ``labelq`` command: the edge where settings are read and services are opened."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .config import Settings, load_settings
from .errors import UsageError
from .logs import quiet_libraries

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
    source: Annotated[str, typer.Argument(help="folder, file:// folder, manifest file or s3://bucket/prefix")],
    model: ModelOpt = None,
    batch_size: Annotated[int | None, typer.Option(help="images per forward pass")] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N, mps")] = None,
    dtype: Annotated[str | None, typer.Option(help="auto, float32, bfloat16, float16")] = None,
    db: Annotated[str | None, typer.Option(help="result table URL (default sqlite:///labelq.db)")] = None,
    out_file: Annotated[Path | None, typer.Option("--out", "-o", help="also write records here (.jsonl, .csv, .parquet)")] = None,
    force: Annotated[bool, typer.Option(help="relabel objects that already have records")] = False,
    job: Annotated[str | None, typer.Option(help="job name stored on each record")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Label SOURCE in this process (no broker, no Redis): results go to --db and --out."""
    from .embedded import run_embedded

    settings = load_settings(models=model or None, batch_size=batch_size, device=device, dtype=dtype, db_url=db)
    setup_logging(settings, quiet=True)
    summary = run_embedded(source, settings, out_file=out_file, force=force, job=job, progress=not quiet,
                           console=err)
    print_summary(summary, out)
    if summary.images == 0 and summary.skipped == 0:
        err.print("no images found in the source (kept suffixes: " + ", ".join(settings.suffixes) + ")")


def print_summary(summary: Any, console: Console) -> None:
    """Per model: counts by label; errors by kind; throughput."""
    console.print(
        f"labelled {summary.images} images ({summary.records} records, {summary.skipped} skipped as already done) "
        f"in {summary.seconds:.1f}s: {summary.images_per_s:.1f} images/s",
        soft_wrap=True,
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
        console.print(f"wrote {summary.out_file}")


# ----------------------------------------------------------------------------- distributed


def _services(settings: Settings) -> tuple[Any, Any]:
    """The job book and the result store named by settings."""
    from .jobs import JobBook
    from .redis_store import RedisStore, connect
    from .results import open_store

    redis = connect(settings.jobs_redis)
    book = JobBook(redis, ttl=settings.result_ttl)
    store = RedisStore(redis, ttl=settings.result_ttl) if settings.results == settings.jobs_redis else open_store(
        settings.results
    )
    return book, store


def _job_services(job: str) -> tuple[Settings, Any, Any]:
    """Settings, job book and result store for a command about one existing job."""
    settings = load_settings()
    setup_logging(settings, quiet=True)
    book, store = _services(settings)
    if book.info(job) is None:
        raise UsageError(f"no such job: {job}")
    return settings, book, store


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

    settings = load_settings()
    setup_logging(settings)
    from .redis_store import connect

    connect(settings.jobs_redis)  # fail fast, with one clear line, when Redis is down
    raise typer.Exit(run_workers(devices, settings, loglevel=loglevel, name=name, live=live))


@app.command()
@clean_errors
def enqueue(
    source: Annotated[str, typer.Argument(help="s3://bucket/prefix, folder, or manifest file")],
    model: ModelOpt = None,
    job: Annotated[str | None, typer.Option(help="job name (its id); the same name again resumes the job")] = None,
    chunk_size: Annotated[int | None, typer.Option(help="object refs per task (default LABELQ_CHUNK_SIZE)")] = None,
    wait: Annotated[bool, typer.Option(help="show progress and return when every object has a record")] = False,
    force: Annotated[bool, typer.Option(help="relabel objects that already have records")] = False,
) -> None:
    """List SOURCE and queue its images for the workers; prints the job id."""
    from .producer import enqueue as do_enqueue
    from .worker import make_app

    settings = load_settings(models=model or None, chunk_size=chunk_size)
    setup_logging(settings, quiet=True)
    book, store = _services(settings)
    result = do_enqueue(source, settings, app=make_app(settings), book=book, store=store, job=job, force=force)
    err.print(
        f"job {result.job}: listed {result.listed}, enqueued {result.enqueued} in {result.chunks} chunks, "
        f"skipped {result.skipped} already labelled"
        + (f" (resumed after {result.resumed_from})" if result.resumed_from else ""),
        highlight=False,
    )
    out.print(result.job, highlight=False)
    if wait:
        info = follow(book, result.job)
        raise typer.Exit(0 if info is not None and info.done else 1)


def follow(book: Any, job: str, *, poll: float = 0.5) -> Any:
    """A live progress bar until the job is done: done, failed, total, rate, ETA."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    info = book.info(job)
    if info is None:
        raise UsageError(f"no such job: {job}")
    with Progress(
        TextColumn(f"[bold]{job}"),
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
        while True:
            info = book.info(job)
            if info is None:
                raise UsageError(f"job {job} disappeared (expired?)")
            rate = (info.processed - first) / n_models / max(time.monotonic() - start, 1e-9)
            bar.update(task, completed=info.processed // n_models, total=info.total, failed=info.error // n_models,
                       rate=f"{rate:.1f} img/s")
            if info.done:
                break
            time.sleep(poll)
    return info


@app.command()
@clean_errors
def status(
    job: Annotated[str, typer.Argument(help="job id")],
    follow_: Annotated[bool, typer.Option("--follow", "-f", help="show live progress until done")] = False,
    errors: Annotated[bool, typer.Option("--errors", help="list failed objects by error kind")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
) -> None:
    """Totals of a job: state, listed, done, failed (by kind), rate."""
    import json

    settings = load_settings()
    setup_logging(settings, quiet=True)
    book, store = _services(settings)
    if follow_:
        follow(book, job)
    info = book.info(job)
    if info is None:
        raise UsageError(f"no such job: {job}")
    if as_json:
        out.print_json(json.dumps(info.to_dict()))
    else:
        print_job(info)
    if errors:
        print_errors(book, store, job)


def print_job(info: Any) -> None:
    table = Table(title=f"job {info.id}", title_justify="left", show_header=False)
    table.add_column("field")
    table.add_column("value")
    n_models = max(1, len(info.models))
    rows = [
        ("state", info.state),
        ("source", info.source),
        ("models", ", ".join(info.models)),
        ("created", info.created_at),
        ("finished", info.finished_at or "-"),
        ("objects listed", str(info.listed) + ("" if info.total is not None else " (listing)")),
        ("total", "-" if info.total is None else str(info.total)),
        ("skipped (already labelled)", str(info.skipped)),
        ("records ok", str(info.ok)),
        ("records failed", str(info.error)),
        ("objects done", f"{info.processed // n_models}"),
    ]
    for kind, n in sorted(info.errors.items()):
        rows.append((f"  {kind}", str(n)))
    for k, v in rows:
        table.add_row(k, escape(v))
    out.print(table)


def print_errors(book: Any, store: Any, job: str, limit: int = 20) -> None:
    """The job's dead letters: failed objects grouped by kind, with their messages."""
    from .redis_store import job_records

    by_kind: dict[str, list[Any]] = {}
    for rec in job_records(book, store, job):
        if not rec.ok:
            by_kind.setdefault(rec.error_kind or "?", []).append(rec)
    if not by_kind:
        out.print("no failures")
        return
    for kind, recs in sorted(by_kind.items()):
        out.print(f"[bold]{kind}[/bold] ({len(recs)})", highlight=False)
        for rec in recs[:limit]:
            out.print(f"  {rec.uri}  [{rec.model}]  {rec.error}", markup=False, highlight=False, soft_wrap=True)
        if len(recs) > limit:
            out.print(f"  … {len(recs) - limit} more")


@app.command()
@clean_errors
def export(
    job: Annotated[str, typer.Argument(help="job id")],
    fmt: Annotated[str | None, typer.Option("--format", help="jsonl, csv or parquet (default: from -o, else jsonl)")] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="file to write (default stdout for jsonl/csv)")] = None,
) -> None:
    """Stream a job's records (one per image and model) to JSONL, CSV or Parquet."""
    from .records import RecordWriter, format_for
    from .redis_store import job_records

    _, book, store = _job_services(job)
    kind = format_for(output, fmt) if output else (fmt or "jsonl")
    if kind == "parquet" and output is None:
        raise UsageError("parquet needs a file: add -o FILE.parquet")
    with RecordWriter(output if output else sys.stdout, format_for("x." + kind)) as writer:
        writer.write(job_records(book, store, job))
    if output:
        err.print(f"wrote {writer.count} records to {output}")


@app.command()
@clean_errors
def retry(
    job: Annotated[str, typer.Argument(help="job id")],
    wait: Annotated[bool, typer.Option(help="show progress and return when the retried objects are done")] = False,
) -> None:
    """Re-enqueue a job's objects that failed with a retryable kind (storage_error, model_error)."""
    from .producer import retry as do_retry
    from .worker import make_app

    settings = load_settings()
    setup_logging(settings, quiet=True)
    book, store = _services(settings)
    n = do_retry(job, settings, app=make_app(settings), book=book, store=store)
    err.print(f"job {job}: re-enqueued {n} objects with retryable errors", highlight=False)
    if wait and n:
        info = follow(book, job)
        raise typer.Exit(0 if info is not None and info.done else 1)


@app.command()
@clean_errors
def jobs(limit: Annotated[int, typer.Option(help="how many, newest first")] = 20) -> None:
    """Recent jobs and their state."""
    settings = load_settings()
    setup_logging(settings, quiet=True)
    book, _ = _services(settings)
    table = Table()
    for col in ("job", "state", "total", "ok", "failed", "models", "created"):
        table.add_column(col)
    for info in book.jobs(limit):
        table.add_row(escape(info.id), info.state, "-" if info.total is None else str(info.total), str(info.ok),
                      str(info.error), escape(", ".join(info.models)), info.created_at)
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
    from .worker import make_app

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
    from .policy import Moderator, load_policy
    from .records import chunks
    from .redis_store import job_records
    from .storage import Stores

    settings, book, store = _job_services(job)
    moderator = Moderator(load_policy(policy), redis=book.redis, stores=Stores(settings))
    total: dict[str, int] = {}
    for page in chunks(job_records(book, store, job), 1000):
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
    from .policy import iter_audit, write_audit

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

