"""moto's server (S3 and every other AWS service) over HTTP, in a subprocess.

``python -m moto.server`` runs under this interpreter on ``127.0.0.1:PORT``, so
Celery workers started as other processes reach it at
:attr:`MotoServer.endpoint_url`. Ready in ~1-2 s.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.procs import HOST, Proc, free_port, wait_until

logger = logging.getLogger(__name__)


class MotoServer:
    """moto's S3 over HTTP; the log is ``folder/moto.log`` unless ``log`` says otherwise."""

    def __init__(self, folder: Path, port: int | None = None, *, log: Path | None = None) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.log = log or folder / "moto.log"
        self.process: Proc | None = None
        self.startup_s = 0.0

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:PORT``: pass as ``endpoint_url`` to boto3 / ``LABELQ_S3_ENDPOINT_URL``."""
        return f"http://{HOST}:{self.port}"

    def answers(self) -> bool:
        """Whether the server answers HTTP (any status)."""
        try:
            with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1):
                return True
        except urllib.error.HTTPError:
            return True

    def client(self) -> Any:
        """A boto3 S3 client for this server (the environment's credentials, us-east-1)."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1")

    def start(self, timeout: float = 30.0) -> MotoServer:
        """Start the server and wait until it answers."""
        if self.process is not None and self.process.alive():
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        argv = [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)]
        self.process = Proc(argv, log=self.log, env=dict(os.environ), cwd=self.folder, watchdog=True).start()
        wait_until(
            self.answers,
            timeout=timeout,
            every=0.05,
            what=f"moto server on port {self.port}",
            log=self.log,
            alive=self.process.alive,
        )
        self.startup_s = time.monotonic() - start
        logger.info("moto server on %s ready in %.2f s", self.endpoint_url, self.startup_s)
        return self

    def stop(self) -> None:
        """Stop the server."""
        if self.process is not None:
            self.process.stop(15.0, sig=signal.SIGTERM, group=True)
            self.process = None

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def empty_bucket(s3_client: Any, bucket: str) -> None:
    """Delete every object of ``bucket`` and its policy, if any."""
    with contextlib.suppress(Exception):
        s3_client.delete_bucket_policy(Bucket=bucket)
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        objs = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if objs:
            s3_client.delete_objects(Bucket=bucket, Delete={"Objects": objs})


@contextlib.contextmanager
def fresh_bucket(s3_client: Any, prefix: str) -> Iterator[str]:
    """A new bucket ``PREFIX-<random>``; emptied and deleted afterwards."""
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        empty_bucket(s3_client, name)
        s3_client.delete_bucket(Bucket=name)
