"""What every ``labelq`` command shares: the Typer app, the consoles, one-line errors, logging, settings."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from functools import wraps
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import UsageError
from ..logs import quiet_libraries

if TYPE_CHECKING:
    from ..config import Settings

# Module level stays light (typer, rich): `labelq --help` and commands that need no model import no
# pydantic, torch or transformers. Each command imports what it uses.


# The CLI flag of a setting where it is not ``--`` + the field name with dashes.
FLAGS = {"db_url": "--db", "models": "--model", "sqs_queue_url": "--sqs", "console_host": "--host",
         "console_port": "--port", "console_read_only": "--read-only"}


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment plus CLI flags (labelq.config.load_settings, imported on first use).

    A bad value from a flag is reported under the flag's name (``--batch-size``), not its variable's."""
    from ..config import load_settings as load

    flags = {k: FLAGS.get(k, "--" + k.replace("_", "-")) for k, v in overrides.items() if v is not None}
    return load(flags=flags, **overrides)

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
            err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)  # [notify] is text
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


def count(n: int, one: str, many: str | None = None) -> str:
    """``1 record``, ``2 records``, ``0 entries`` (with ``many``): every count the CLI prints."""
    return f"{n} {one if n == 1 else many or one + 's'}"


ModelOpt = Annotated[
    list[str] | None, typer.Option("--model", "-m", help="hub id or local folder; repeat for several (default LABELQ_MODELS)")
]


