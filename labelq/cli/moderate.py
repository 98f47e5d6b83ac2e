"""Commands of moderation: the console, ``labelq moderate apply``, ``audit``, ``shadow`` and ``promote``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ..errors import UsageError
from .base import app, clean_errors, err, load_settings, out, setup_logging

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

@app.command()
@clean_errors
def console(
    host: Annotated[str | None, typer.Option(help="address to listen on (default LABELQ_CONSOLE_HOST, 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default LABELQ_CONSOLE_PORT, 8080)")] = None,
    read_only: Annotated[bool, typer.Option("--read-only", help="nobody may change anything (viewers only)")] = False,
) -> None:
    """Serve the web console: jobs, label browser, review queue (docs/console.md)."""
    try:
        from ..console import serve
    except ImportError as exc:
        raise UsageError(f"the console needs its extra: pip install 'labelq[console]' ({exc})") from None

    from ..console.auth import Auth

    settings = load_settings(console_host=host, console_port=port, console_read_only=read_only or None)
    setup_logging(settings)
    settings.jobs_redis  # noqa: B018 - no Redis named for job state: one line (exit 2) before the banner
    if settings.policy is not None:  # the review pages show its rules: a bad file is an error now, not a blank later
        from ..moderation import load_policy

        load_policy(settings.policy)
    Auth(settings).require_configured()  # who may sign in, before a URL nobody could use is printed
    err.print(f"labelq console on http://{settings.console_host}:{settings.console_port}/", highlight=False)
    serve(settings)


moderate_app = typer.Typer(help="Moderation: apply a policy to stored scores, export the audit trail, shadow and "
                           "promote candidate models.",
                           no_args_is_help=True)
app.add_typer(moderate_app, name="moderate")


@moderate_app.command("apply")
@clean_errors
def moderate_apply(
    job: Annotated[str, typer.Argument(help="job whose stored records the policy is applied to")],
    policy: Annotated[Path, typer.Option(help="policy file (TOML)")],
    dry_run: Annotated[bool, typer.Option(help="print what would change, change nothing")] = False,
) -> None:
    """Apply a (new) policy to a job's stored scores without re-running any model.

    Rules act (tag, copy, move, notify) and sample tables draw audit samples for review, each once per
    object version; a shadow model's records are never acted on. --dry-run prints "would ACTION" lines.
    """
    from ..moderation import Moderator, load_policy
    from ..objects import Stores
    from ..records import chunks
    from ..services import open_services

    rules = load_policy(policy)  # a bad file is told before any service is opened
    settings = load_settings()
    setup_logging(settings, quiet=True)
    services = open_services(settings)
    services.job(job)
    book, store = services.book, services.records
    moderator = Moderator(rules, redis=book.redis, stores=Stores(settings))
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
    if not dry_run and moderator.policy.webhook:
        from ..moderation import Deliverer

        left = Deliverer(book.redis, timeout=settings.outbox_timeout).drain(OUTBOX_DRAIN_S)
        err.print(f"outbox: {left['waiting']} notifications waiting (a worker with the policy delivers them), "
                  f"{left['dead']} dead-lettered (`labelq moderate outbox`)", markup=False)


OUTBOX_DRAIN_S = 60.0  # seconds `moderate apply` delivers the outbox before it leaves the rest to the workers


@moderate_app.command("outbox")
@clean_errors
def moderate_outbox() -> None:
    """The notification outbox: how many wait, and every dead-lettered one with its last error."""
    import json

    from ..moderation.outbox import counts, dead_letters
    from ..services import open_services

    settings = load_settings()
    setup_logging(settings, quiet=True)
    redis = open_services(settings).redis
    c = counts(redis)
    out.print(f"waiting {c['waiting']}, dead {c['dead']}", highlight=False)
    for entry in dead_letters(redis):
        out.print(json.dumps({"uri": entry["body"]["uri"], "policy_version": entry["body"]["policy_version"],
                              "url": entry["url"], "attempts": entry["attempts"], "error": entry.get("error")}),
                  markup=False, highlight=False, soft_wrap=True)


@moderate_app.command("audit")
@clean_errors
def moderate_audit(
    job: Annotated[str | None, typer.Option(help="only actions on this job's records")] = None,
    fmt: Annotated[str, typer.Option("--format", help="jsonl or csv")] = "jsonl",
    output: Annotated[Path | None, typer.Option("--output", "-o", help="file (default stdout)")] = None,
) -> None:
    """Export the audit trail: every action taken, with object, label, score, policy version, result and time."""
    from ..moderation import iter_audit, write_audit

    if fmt not in ("jsonl", "csv"):
        raise UsageError(f"audit format must be jsonl or csv, not {fmt!r}")
    settings = load_settings()
    setup_logging(settings, quiet=True)
    from ..services import open_services

    book = open_services(settings).book
    if output:
        with output.open("w", encoding="utf-8", newline="") as f:
            n = write_audit(iter_audit(book.redis, job=job), fmt, f)
        err.print(f"wrote {n} audit entries to {output}")
    else:
        write_audit(iter_audit(book.redis, job=job), fmt, sys.stdout)



@moderate_app.command("shadow")
@clean_errors
def moderate_shadow(
    job: Annotated[str, typer.Argument(help="job whose ok records of its active model(s) are sampled")],
    model: Annotated[str, typer.Option("--model", help="the candidate model (hub id or folder) to score them")],
    rate: Annotated[float, typer.Option(help="share of the objects to score (0 < rate <= 1; the same objects "
                                             "every time, a higher rate keeps them)")] = 1.0,
    shadow_job: Annotated[str | None, typer.Option("--job", help="name of the shadow job (default JOB.shadow)")] = None,
    wait: Annotated[bool, typer.Option(help="show progress and return when every object has a record")] = False,
) -> None:
    """Score a sample of JOB's objects with a candidate model, in a new job; prints the job id.

    The sample is drawn by the same hash rule as audit samples, from the objects with an ok record of
    JOB's models other than the candidate (and other than LABELQ_POLICY's shadow models). Its manifest
    (uri and etag per line) is kept in labelq's private state folder; the job goes through the normal
    producer and workers, and the policy never acts on it.
    """
    import os

    from ..logs import private_folder
    from ..models import check_model
    from ..moderation import load_policy
    from ..moderation.shadow import shadow_job_name, shadow_refs, write_manifest
    from ..producer import enqueue as do_enqueue
    from ..services import open_services

    if not 0.0 < rate <= 1.0:
        raise UsageError(f"--rate must be above 0 and at most 1, not {rate:g}")
    settings = load_settings()
    setup_logging(settings, quiet=True)
    skip = load_policy(settings.policy).shadow if settings.policy is not None else ()
    check_model(model)
    services = open_services(settings)
    services.job(job)
    name = shadow_job or shadow_job_name(job)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    manifest = private_folder(os.environ.get("XDG_STATE_HOME")) / "shadow" / f"{safe}.manifest"
    fresh = manifest.with_name(manifest.name + ".new")
    n = write_manifest(fresh, shadow_refs(services.job_records(job), candidate=model, rate=rate, skip_models=skip))
    if services.book.info(name) is not None and not (manifest.exists() and manifest.read_bytes() ==
                                                     fresh.read_bytes()):
        fresh.unlink()  # a job resumes from its manifest's line number: the same name must list the same objects
        raise UsageError(f"job {name} exists and lists other objects: give the shadow job a new name with --job")
    fresh.replace(manifest)
    if not n:
        raise UsageError(f"job {job} has no ok records of another model in the sample at rate {rate:g}: nothing to "
                         "score")
    result = do_enqueue(str(manifest), settings, app=services.app, book=services.book, store=services.records,
                        job=name, models=[model], wait_for_room=True)
    err.print(f"shadow job {result.job}: {n} objects of job {job} (rate {rate:g}) for {model}, enqueued "
              f"{result.enqueued} in {result.chunks} chunks (manifest {manifest})", markup=False, highlight=False,
              soft_wrap=True)
    out.print(result.job, highlight=False)
    if wait:
        from .jobs import _exit_code, follow

        raise typer.Exit(_exit_code(follow(services, result.job), False))


@moderate_app.command("promote")
@clean_errors
def moderate_promote(
    policy: Annotated[Path, typer.Option(help="policy file (TOML), rewritten in place")],
    candidate: Annotated[str, typer.Option(help="the model that takes the active model's place")],
    model: Annotated[str | None, typer.Option(help="the active model it replaces (needed when the rules name "
                                                   "several)")] = None,
    threshold: Annotated[float | None, typer.Option(help="new threshold of every rule of the promoted model")] = None,
    version: Annotated[str | None, typer.Option(help="new policy version (default OLD.promoted-YYYY-MM-DD)")] = None,
    dry_run: Annotated[bool, typer.Option(help="print the change as a diff, write nothing")] = False,
) -> None:
    """Promote a candidate: every rule and sample of the active model names it, it leaves the shadow models, new version.

    The file is rewritten atomically as clean TOML (comments are not kept) and the promotion is audited.
    Workers with this LABELQ_POLICY pick the new version up within LABELQ_POLICY_RELOAD seconds.
    """
    import difflib

    from ..moderation import audit, load_policy
    from ..moderation.shadow import policy_toml, promote, promote_action, write_policy

    old = load_policy(policy)
    new, replaced = promote(old, candidate, model=model, threshold=threshold, version=version)
    text = policy_toml(new)
    if dry_run:
        before = policy.read_text(encoding="utf-8-sig").splitlines(keepends=True)
        for line in difflib.unified_diff(before, text.splitlines(keepends=True), str(policy), f"{policy} (promoted)"):
            out.print(line, end="", markup=False, highlight=False, soft_wrap=True)
        return
    settings = load_settings()
    setup_logging(settings, quiet=True)
    from ..services import open_services

    redis = open_services(settings).redis  # reachable before the file changes: the promotion is audited
    written = write_policy(policy, text)
    pipe = redis.pipeline(transaction=True)
    audit.append(pipe, [promote_action(policy.resolve(), old, written, replaced, candidate)])
    pipe.execute()
    err.print(f"policy {policy}: {replaced} -> {candidate}, version {old.version} -> {written.version}",
              markup=False, highlight=False, soft_wrap=True)
