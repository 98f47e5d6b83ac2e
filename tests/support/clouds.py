"""Local emulators of the other clouds' object stores, in subprocesses on free loopback ports.

* :class:`GcsEmulator`: ``gcp-storage-emulator`` (PyPI) — the official Python client reaches it through
  ``STORAGE_EMULATOR_HOST``, as it reaches any GCS emulator.
* :class:`Azurite`: ``azurite-blob`` (npm, Microsoft's emulator) — the Azure SDK reaches it through a
  connection string with ``BlobEndpoint=`` (the well-known development account and key).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from tests.support.procs import HOST, MissingBinary, Proc, free_port, port_open, wait_until

logger = logging.getLogger(__name__)

# Azurite's fixed development account (documented by Microsoft; not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class GcsEmulator:
    """gcp-storage-emulator in memory; ``env`` is what a process needs to reach it."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.log = folder / "gcs.log"
        self.process: Proc | None = None

    @property
    def host(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.host}

    def start(self, timeout: float = 30.0) -> GcsEmulator:
        self.folder.mkdir(parents=True, exist_ok=True)
        exe = Path(sys.executable).parent / "gcp-storage-emulator"
        if not exe.exists():
            raise MissingBinary("gcp-storage-emulator", "gcp-storage-emulator (pip)")
        argv = [str(exe), "start", "--host", HOST, "--port", str(self.port), "--in-memory", "--quiet"]
        self.process = Proc(argv, log=self.log, env=dict(os.environ), cwd=self.folder, watchdog=True).start()
        wait_until(lambda: port_open(self.port), timeout=timeout, every=0.05, what=f"GCS emulator on {self.port}",
                   log=self.log, alive=self.process.alive)
        return self

    def client(self) -> Any:
        """A google-cloud-storage client of this emulator (anonymous, as against any emulator)."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        old = os.environ.get("STORAGE_EMULATOR_HOST")
        os.environ["STORAGE_EMULATOR_HOST"] = self.host
        try:
            return storage.Client(project="labelq-test", credentials=AnonymousCredentials())
        finally:
            if old is None:
                os.environ.pop("STORAGE_EMULATOR_HOST", None)
            else:
                os.environ["STORAGE_EMULATOR_HOST"] = old

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(10.0, sig=signal.SIGTERM, group=True)
            self.process = None


class Azurite:
    """Azurite's blob service with its data in ``folder``; ``env`` holds the connection string."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.log = folder / "azurite.log"
        self.process: Proc | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}/{AZURITE_ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
                f"BlobEndpoint={self.endpoint};")

    @property
    def env(self) -> dict[str, str]:
        return {"AZURE_STORAGE_CONNECTION_STRING": self.connection_string}

    def start(self, timeout: float = 60.0) -> Azurite:
        self.folder.mkdir(parents=True, exist_ok=True)
        exe = shutil.which("azurite-blob")
        if exe is None:
            raise MissingBinary("azurite-blob", "azurite (npm install -g azurite)")
        argv = [exe, "--blobHost", HOST, "--blobPort", str(self.port), "--location", str(self.folder / "data"),
                "--skipApiVersionCheck", "--loose", "--silent"]
        self.process = Proc(argv, log=self.log, env=dict(os.environ), cwd=self.folder, watchdog=True).start()
        start = time.monotonic()
        wait_until(lambda: port_open(self.port), timeout=timeout, every=0.1, what=f"Azurite on {self.port}",
                   log=self.log, alive=self.process.alive)
        logger.info("Azurite on %s ready in %.1f s", self.endpoint, time.monotonic() - start)
        return self

    def client(self) -> Any:
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(10.0, sig=signal.SIGTERM, group=True)
            self.process = None
