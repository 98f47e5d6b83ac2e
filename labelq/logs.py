"""Logging helpers for the edges (CLI, worker start-up); modules only ever call getLogger."""

from __future__ import annotations

import logging

NOISY = ("botocore", "boto3", "urllib3", "PIL", "httpx", "huggingface_hub", "filelock", "s3transfer")


def quiet_libraries(level: int = logging.WARNING) -> None:
    """Libraries that log every connection or credential lookup at INFO: keep them at WARNING."""
    for name in NOISY:
        logging.getLogger(name).setLevel(level)
