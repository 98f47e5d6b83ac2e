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
from rich.table import Table

from .config import Settings, load_settings
from .errors import UsageError

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
    for noisy in ("botocore", "urllib3", "PIL", "httpx", "huggingface_hub", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


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
        f"in {summary.seconds:.1f}s: {summary.images_per_s:.1f} images/s"
    )
    for model, labels in summary.labels.items():
        table = Table(title=f"{model}", title_justify="left")
        table.add_column("label")
        table.add_column("images", justify="right")
        for label, n in labels.most_common(10):
            table.add_row(label, str(n))
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()

__all__ = ["app", "main", "time"]
