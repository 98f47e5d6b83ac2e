"""Commands of moderation: the console, ``labelq moderate apply`` and ``audit``."""

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


