"""Commands of distributed jobs: worker, enqueue, status, retry, jobs, ping, listen."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import UsageError
from .base import ModelOpt, app, clean_errors, count, err, load_settings, out, setup_logging

if TYPE_CHECKING:
    from ..config import Settings

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- distributed


@app.command()
@clean_errors
def worker(
    devices: Annotated[str, typer.Option(help="auto (one process per GPU, else cpu), cpu, or GPU indices 0,1,...")] = "auto",
    loglevel: Annotated[str, typer.Option(help="worker log level")] = "INFO",
    name: Annotated[str | None, typer.Option(help="node name prefix (default cpu / gpuN); distinct per worker on a host")] = None,
    live: Annotated[bool, typer.Option(help="serve the live queue (single uploads, dynamic batching) instead of bulk chunks")] = False,
) -> None:
    """Start Celery workers: one process per device, models loaded once per process."""
    from ..launcher import run_workers
    from ..redis_client import connect

    settings = load_settings()
    setup_logging(settings)
    connect(settings.jobs_redis, master=settings.sentinel_master)  # fail fast, with one clear line, when Redis is down
    raise typer.Exit(run_workers(devices, settings, loglevel=loglevel, name=name, live=live))


@app.command()
@clean_errors
def enqueue(
    source: Annotated[str, typer.Argument(help="s3://bucket/prefix, folder, manifest file or inventory manifest.json")],
    model: ModelOpt = None,
    job: Annotated[str | None, typer.Option(help="job name (its id); the same name again resumes the job")] = None,
    chunk_size: Annotated[int | None, typer.Option(help="the largest chunk: object refs per task (default LABELQ_CHUNK_SIZE)")] = None,
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
    from ..producer import QueueFull
    from ..producer import enqueue as do_enqueue
    from ..services import open_services

    settings = load_settings(models=model or None, chunk_size=chunk_size)
    setup_logging(settings, quiet=not background)
    services = open_services(settings)
    if not background:
        from ..hub import check_model

        for name in settings.models:  # before anything is published
            check_model(name)
        _check_local(source, settings, services.app)
    job = job or _new_job_id()
    try:
        result = do_enqueue(source, settings, app=services.app, book=services.book, store=services.records, job=job,
                            force=force, wait_for_room=wait or background)
    except QueueFull:
        pid, log = _spawn_producer(source, settings, job, force)
        info = services.job(job)
        err.print(f"job {job}: listed {info.listed}, enqueued {info.enqueued} in {count(info.chunks, 'chunk')} so far; the queue "
                  f"is full (LABELQ_MAX_QUEUED_CHUNKS={settings.max_queued_chunks}): listing goes on in the background "
                  f"(pid {pid}, log {log})", highlight=False, soft_wrap=True)
        out.print(job, highlight=False)
        if wait:  # not reached: --wait lists in this process
            raise typer.Exit(_exit_code(follow(services, job), strict)) from None
        return
    if result.state == "busy":
        err.print(f"job {job} is being listed by another producer; it goes on from its cursor "
                  f"(listed {result.listed} so far)", highlight=False)
    elif not background:
        err.print(
            f"job {result.job}: listed {result.listed}, enqueued {result.enqueued} in {count(result.chunks, 'chunk')}, "
            f"skipped {result.skipped} already labelled"
            + (f" (resumed after {result.resumed_from})" if result.resumed_from else "")
            + (f"; {result.missing} objects without records sent again" if result.missing else ""),
            highlight=False,
        )
    if background:
        return
    out.print(result.job, highlight=False)
    if wait:
        raise typer.Exit(_exit_code(follow(services, result.job), strict))


def _check_local(source: str, settings: Settings, app: Any) -> None:
    """A local folder or image is read by the workers: say up front what they need (or refuse, when the live
    workers all lack a LABELQ_LOCAL_ROOT covering it), and what a folder leaves out by suffix."""
    from ..health import check_local_source
    from ..sources import parse_source

    parsed = parse_source(source, suffixes=settings.suffixes)
    if parsed.kind in ("folder", "object") and parsed.root is not None:
        warning = check_local_source(parsed, settings, app)
        if warning:
            err.print(f"warning: {warning}", highlight=False, markup=False, soft_wrap=True)
    if parsed.kind == "folder":
        from ..embedded import count_unkept, unkept_text

        unkept = count_unkept(Path(parsed.location), settings.suffixes)
        if unkept:
            err.print(f"left out {unkept_text(unkept)} by suffix: not enqueued, no records (LABELQ_SUFFIXES="
                      ".jpg,.png,... includes them)", highlight=False, markup=False, soft_wrap=True)


def _new_job_id() -> str:
    from ..jobs import new_job_id

    return new_job_id()


def _spawn_producer(source: str, settings: Settings, job: str, force: bool) -> tuple[int, Path]:
    """Go on listing in a detached process (it resumes from the job's cursor)."""
    import os
    import subprocess

    from ..logs import open_private_log

    fd, log = open_private_log(f"producer-{job}", os.environ.get("XDG_STATE_HOME"))  # never a shared /tmp name
    argv = [sys.executable, "-m", "labelq", "enqueue", source, "--job", job, "--background",
            "--chunk-size", str(settings.chunk_size)]
    for m in settings.models:
        argv += ["--model", m]
    if force:
        argv.append("--force")
    with os.fdopen(fd, "ab") as f:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=f, start_new_session=True,
                                env=dict(os.environ))
    return proc.pid, log


def _exit_code(info: Any, strict: bool) -> int:
    if info is None or info.state != "done":
        return 1
    return 1 if strict and info.error else 0


def follow(services: Any, job: str, *, poll: float = 1.0, stall_timeout: float | None = None) -> Any:
    """A live progress bar until the job is finished (done, failed, total, rate, ETA): ``Client.wait`` with a bar.

    Gives up (returns the job's info, not finished) when nothing moved for ``stall_timeout`` seconds
    (default LABELQ_STALL_TIMEOUT): no worker took a chunk or wrote a record.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from ..api import Client
    from ..errors import JobFailed, JobStalled

    client = Client(services=services)
    info = client.status(job)
    n_models = max(1, len(info.models))
    start, first = time.monotonic(), info.processed
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
        task = bar.add_task("job", total=info.total, failed=0, rate="")

        def show(now: Any) -> None:
            rate = (now.processed - first) / n_models / max(time.monotonic() - start, 1e-9)
            bar.update(task, completed=now.processed // n_models, total=now.total, failed=now.error // n_models,
                       rate=f"{rate:.1f} img/s")

        try:
            return client.wait(job, progress=show, poll=poll, stall_timeout=stall_timeout)
        except JobStalled as exc:
            bar.stop()
            info = exc.info
            total = info.total if info.total is not None else "?"
            err.print(f"[red]error:[/red] job {escape(job)}: nothing moved for {exc.seconds:g}s "
                      f"({info.processed // n_models} of {total} done): is a worker running for its queue and "
                      f"models? (`labelq ping`); `labelq status {escape(job)}` shows where it stands",
                      highlight=False, soft_wrap=True)
            return info
        except JobFailed as exc:
            info = exc.info
    err.print(f"job {escape(job)} finished with {count(info.dead_chunks, 'dead letter')} (chunks dead-lettered "
              f"after every attempt failed; {count(info.dead, 'record')} not written): `labelq status "
              f"{escape(job)} --errors` shows why, `labelq retry {escape(job)}` runs them again", highlight=False,
              soft_wrap=True)
    return info


@app.command()
@clean_errors
def status(
    job: Annotated[str, typer.Argument(help="job id")],
    follow_: Annotated[bool, typer.Option("--follow", "-f", help="show live progress until done")] = False,
    errors: Annotated[bool, typer.Option("--errors", help="list failed objects by error kind")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    db: Annotated[str | None, typer.Option(help="result table of `labelq run` jobs (default LABELQ_DB_URL)")] = None,
) -> None:
    """Totals of a job: state, listed, done, failed (by kind), dead-lettered chunks.

    A `labelq run` job (or one whose state Redis no longer has) is told from its records: counts by
    status, label and error kind."""
    import json

    from .local import find_job, print_records_status

    settings = load_settings(db_url=db)
    setup_logging(settings, quiet=True)
    found = find_job(job, settings)
    if found.kind != "distributed":
        print_records_status(found, job, as_json=as_json, errors=errors)
        return
    services = found.services
    book = services.book
    if follow_:
        follow(services, job)
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
    from ..hub import resolve_revision
    from ..results import older_revisions

    try:
        counts = services.records.revisions(info.id)
    except Exception as exc:  # noqa: BLE001 - a store that cannot say must not break status
        logger.debug("revisions of %s: %s", info.id, exc)
        return {}
    return older_revisions(counts, {m: resolve_revision(m) for m in info.models})


def _producer_stale(info: Any) -> bool:
    """A job still listing whose producer has not been heard from for a while (killed?)."""
    from ..producer import LEASE_S

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
        *([("listing stopped", info.listing_error)] if getattr(info, "listing_error", "") else []),
        ("source", info.source),
        ("models", ", ".join(info.models)),
        ("created", info.created_at),
        ("finished", info.finished_at or "-"),
        ("objects listed", str(info.listed) + ("" if info.total is not None else " (listing)")),
        ("total", "-" if info.total is None else str(info.total)),
        ("skipped (already labelled)", str(info.skipped)),
        ("chunks", f"{info.chunks_done} of {info.chunks} done"
                   + (f", republished {info.republished} (lost by the broker)" if info.republished else "")),
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
        rows.append(("dead letters (chunks)", f"{info.dead_chunks} ({info.dead} records not written; "
                                             f"`labelq retry {info.id}` runs them again)"))
    for k, v in rows:
        table.add_row(k, escape(v))
    out.print(table)


def print_errors(book: Any, job: str, limit: int = 20) -> None:
    """The job's failures (error records, grouped by kind, with their messages), then its dead letters
    (chunks that failed every attempt: "dead letter" always means a chunk)."""
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
        out.print(f"[bold]dead letters[/bold] ({count(len(dead), 'chunk')} that failed every attempt)", highlight=False)
        for d in dead[:limit]:
            out.print(f"  {d['chunk']}  {len(d.get('refs', []))} objects, {d.get('attempts')} attempts, "
                      f"last on {d.get('worker')}: {d.get('error')}", markup=False, highlight=False, soft_wrap=True)


@app.command()
@clean_errors
def retry(
    job: Annotated[str, typer.Argument(help="job id")],
    wait: Annotated[bool, typer.Option(help="show progress and return when the retried objects are done")] = False,
) -> None:
    """Re-run a job's dead-lettered chunks and every object whose records are missing or failed with a
    retryable kind (storage_error, model_error, access_denied), as the record store says."""
    from ..api import Client
    from ..services import open_services

    settings = load_settings()
    setup_logging(settings, quiet=True)
    services = open_services(settings)
    n = Client(services=services).retry(job)
    err.print(f"job {job}: re-enqueued {count(n, 'object')} (dead-lettered chunks, objects without records and "
              "retryable failures)", highlight=False)
    if wait and n:
        raise typer.Exit(_exit_code(follow(services, job), False))


@app.command()
@clean_errors
def jobs(
    limit: Annotated[int, typer.Option(help="how many, newest first")] = 20,
    db: Annotated[str | None, typer.Option(help="result table of `labelq run` jobs (default LABELQ_DB_URL, "
                                           "sqlite:///labelq.db)")] = None,
) -> None:
    """Recent jobs of both kinds, newest first: `labelq enqueue` jobs from the job book (Redis) and
    `labelq run` jobs from their result table (--db). Works without Redis: the distributed part is then
    said to be unavailable. State of a run: "-" (`labelq status NAME` counts its records)."""
    from ..config import redact
    from ..embedded import open_run_table
    from ..redis_client import connect

    settings = load_settings(db_url=db)
    setup_logging(settings, quiet=True)
    rows: list[tuple[str, ...]] = []
    notes: list[str] = []
    try:
        connect(settings.jobs_redis, retries=0).close()  # one quick try: no Redis must not cost seconds
    except UsageError:
        notes.append(f"distributed jobs: unavailable (no job Redis at {redact(settings.jobs_redis)})")
    else:
        from ..services import open_services

        services = open_services(settings)
        try:
            for info in services.book.jobs(limit):
                state = info.state + (f" ({count(info.dead_chunks, 'dead letter')})" if info.dead_chunks else "")
                rows.append((info.created_at, info.id, "enqueue", state, "-" if info.total is None else str(info.total),
                             str(info.ok), str(info.error), ", ".join(info.models)))
        finally:
            services.close()
    table = open_run_table(settings.db_url)
    if table is None:
        notes.append(f"`labelq run` jobs: none (no result table at {redact(settings.db_url)}; --db names another)")
    else:
        try:
            for run in table.jobs(limit):
                rows.append((run["first"] or "", run["job"], "run", "-", str(run["objects"]), str(run["ok"]),
                             str(run["error"]), ", ".join(run["models"])))
        finally:
            table.close()
    if rows:
        from rich import box

        # No rules between columns, the time without the year: the list fits 80 columns.
        view = Table(box=box.SIMPLE_HEAD, pad_edge=False)
        for col in ("job", "kind", "state", "objects", "ok", "failed", "created"):
            view.add_column(col, no_wrap=True, justify="right" if col in ("objects", "ok", "failed") else "left")
        view.add_column("models", overflow="ellipsis")  # the one that gives way on a narrow terminal
        for created, *cells, models in sorted(rows, reverse=True)[:limit]:
            view.add_row(*(escape(c) for c in cells), created[5:16].replace("T", " "), escape(models))
        out.print(view)
    else:
        err.print(f"no jobs (looked in the job book at {redact(settings.jobs_redis)} and the result table "
                  f"{redact(settings.db_url)})", highlight=False, soft_wrap=True)
    for note in notes:
        err.print(note, highlight=False, soft_wrap=True)


@app.command()
@clean_errors
def ping(
    source: Annotated[str | None, typer.Option(help="also check this source can be listed")] = None,
    workers: Annotated[bool, typer.Option(help="require at least one worker to answer")] = True,
    node: Annotated[str | None, typer.Option(help="require this worker node (e.g. gpu0@host) to answer")] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for workers")] = 3.0,
) -> None:
    """Check broker, job Redis, result store, storage and workers; non-zero exit if any is down."""
    from ..health import ping as do_ping
    from ..health import summary

    settings = load_settings()
    setup_logging(settings, quiet=True)
    checks, replies = do_ping(settings, source=source, workers=workers or node is not None, node=node, timeout=timeout)
    for check in checks:
        mark = "[green]ok[/green]  " if check.ok else "[red]DOWN[/red]"
        out.print(f"{mark} {check.name}: {escape(check.detail)}", highlight=False, soft_wrap=True)
    for name, info in sorted(replies.items()):
        models = ", ".join(info.get("models", [])) or "(none loaded)"
        health = info.get("health") or {}
        down = "; ".join(f"{k} down: {v}" for k, v in (health.get("down") or {}).items())
        out.print(f"     {escape(name)}: device {info.get('device')}, models {escape(models)}"
                  + (f", degraded ({escape(down)})" if down else ""), highlight=False, soft_wrap=True)
    word = summary(checks, replies)
    if word == "degraded":
        out.print("degraded: a service is down; workers keep what they hold and wait for it (nothing is lost)",
                  highlight=False)
    if word != "ok":
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
    from ..listen import Listener
    from ..tasks import make_app

    settings = load_settings(models=model or None, sqs_queue_url=sqs)
    setup_logging(settings)
    if not minio and not settings.sqs_queue_url:
        raise UsageError("say where events come from: --minio and/or --sqs QUEUE_URL")
    from ..services import open_services

    book = open_services(settings).book
    listener = Listener(settings, app=make_app(settings), book=book, job=job, models=list(settings.models))
    import threading

    threads = []
    if minio:
        threads.append(threading.Thread(target=listener.run, args=(listener.run_minio,), name="minio", daemon=True))
    if settings.sqs_queue_url:
        threads.append(threading.Thread(target=listener.run, args=(listener.run_sqs,), name="sqs", daemon=True))
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads):
            time.sleep(0.5)
    finally:
        listener.stop.set()
        err.print(f"enqueued {listener.enqueued}, duplicates {listener.duplicates}, malformed {listener.bad}")
    if listener.failure:
        err.print(f"[red]error:[/red] labelq listen: {escape(listener.failure)}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


