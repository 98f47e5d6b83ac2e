"""Logging helpers for the edges (CLI, worker start-up); modules only ever call getLogger."""

from __future__ import annotations

import logging
import os
import re
import secrets
import stat
import tempfile
import time
from pathlib import Path

NOISY = ("botocore", "boto3", "urllib3", "PIL", "httpx", "huggingface_hub", "filelock", "s3transfer")


def quiet_libraries(level: int = logging.WARNING) -> None:
    """Libraries that log every connection or credential lookup at INFO: keep them at WARNING."""
    for name in NOISY:
        logging.getLogger(name).setLevel(level)


def private_folder(state_home: str | None = None) -> Path:
    """A folder only this user can enter (mode 0700), for logs of processes labelq starts.

    ``$XDG_STATE_HOME/labelq`` (default ``~/.local/state/labelq``); where that cannot be made private (not
    ours, a symlink, not writable), a fresh ``mkdtemp`` folder. Never a shared name in /tmp, where another
    user could plant a symlink first.
    """
    try:
        base = Path(state_home or Path.home() / ".local" / "state") / "labelq"
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(base)
        if stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid():
            if stat.S_IMODE(st.st_mode) & 0o077:
                os.chmod(base, 0o700)
            return base
    except (OSError, RuntimeError):  # RuntimeError: no home folder
        pass
    return Path(tempfile.mkdtemp(prefix="labelq-"))


def open_private_log(name: str, state_home: str | None = None) -> tuple[int, Path]:
    """A new log file (mode 0600) in :func:`private_folder`, opened for appending: (file descriptor, path).

    Opened with ``O_CREAT | O_EXCL | O_NOFOLLOW`` under a fresh name (``NAME-TIME-RANDOM.log``): a file or
    symlink already at that path makes the open fail and another name is tried, so what is written never
    lands anywhere else.
    """
    folder = private_folder(state_home)
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:100]
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(16):
        path = folder / f"{safe}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}.log"
        try:
            return os.open(path, flags, 0o600), path
        except FileExistsError:
            continue
    raise OSError(f"cannot create a log file in {folder}")
