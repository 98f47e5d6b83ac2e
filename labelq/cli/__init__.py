"""The ``labelq`` command: the edge where settings are read and services are opened.

One module per family of commands (``local``: run/export/model, ``jobs``: the distributed ones,
``moderate``: console and moderation); ``base`` holds what they share. Importing this package
imports no torch, transformers or Redis client: each command imports what it uses.
"""

from __future__ import annotations

# isort: off
from . import local  # registered first: `labelq --help` lists run, export and model first
from . import jobs, lake, moderate, quality  # quality: report and compare on the moderate app
# isort: on
from .base import app
from .jobs import follow, print_errors, print_job
from .local import _export_format, print_summary

__all__ = [
    "_export_format",
    "app",
    "follow",
    "jobs",
    "lake",
    "local",
    "main",
    "moderate",
    "print_errors",
    "print_job",
    "print_summary",
    "quality",
]


def main() -> None:
    app()


if __name__ == "__main__":
    main()
