"""Bad input through real `labelq` processes: each is one clear line (or a job marked failed), never a
traceback, a hang, a secret in the output, or a write outside labelq's own files.

Real Redis (a database of this module), a real PostgreSQL, local files; no workers run except the one
that must refuse to start.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import stat
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import RedisDB, job_hash
from tests.support.workers import cli, labelq_env
from tests.unit.test_sources import KEPT, ROWS, write_report


def _one_error_line(stderr: str) -> str:
    """The one ``error:`` line a refused command prints, and nothing that looks like a traceback."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    return errors[0]


# ---------------------------------------------------------------- a source that breaks while listing


def test_a_corrupt_inventory_part_fails_the_job_with_its_message_not_listing(
        tmp_path: Path, redis_db: RedisDB, tiny_vit: Path) -> None:
    # Part 0 is good (its chunks are enqueued), part 1's deflate stream is corrupt half-way.
    manifest = write_report(tmp_path, "CSV", parts=[ROWS, ROWS * 400])
    part = next(tmp_path.rglob("part-1.csv.gz"))
    good = part.read_bytes()
    part.write_bytes(good[:10] + bytes(b ^ 0xFF for b in good[10:len(good) // 2]) + good[len(good) // 2:])
    env = labelq_env(broker=redis_db.url, models=[tiny_vit], chunk_size=2)
    args = ["enqueue", str(manifest), "--job", "inv"]

    result = cli(args, env, cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    line = _one_error_line(result.stderr)
    assert "cannot read the inventory part" in line and "part-1.csv.gz" in line

    state = job_hash(redis_db.client, "inv")
    assert state["state"] == "failed" and "part-1.csv.gz" in state["listing_error"], state
    status = cli(["status", "inv"], env, cwd=tmp_path).check()
    flat = " ".join(status.stdout.split())
    assert "failed" in flat and "listing stopped" in flat and "cannot read the inventory part" in flat
    assert json.loads(cli(["status", "inv", "--json"], env, cwd=tmp_path).check().stdout)["state"] == "failed"

    # Fixed, the same command resumes the job from its cursor and finishes listing it.
    part.write_bytes(good)
    cli(args, env, cwd=tmp_path, timeout=60).check()
    state = job_hash(redis_db.client, "inv")
    assert state["state"] == "running" and "listing_error" not in state, state
    assert int(state["total"]) == len(KEPT) * 401  # every kept row of both parts, listed once


# ---------------------------------------------------------------- policy files

BAD_POLICIES = {
    "notify-str": ('version = "1"\nnotify = "x"\n[[rule]]\nmodel = "m"\nlabel = "nsfw"\nthreshold = 0.8\n'
                   'actions = ["tag"]\n', "notify: must be a table, not string 'x'"),
    "rule-int": ('version = "1"\nrule = 5\n', "rule: must be a list, not integer 5"),
    "prefix-list": ('version = "1"\nquarantine_prefix = ["q/"]\n[[rule]]\nmodel = "m"\nlabel = "nsfw"\n'
                    'threshold = 0.8\nactions = ["tag"]\n', "quarantine_prefix: must be a string, not list ['q/']"),
}


def _policy(tmp_path: Path, case: str) -> tuple[Path, str]:
    if case == "folder":
        folder = tmp_path / "policy.d"
        folder.mkdir()
        return folder, "is a folder"
    if case == "latin1":
        path = tmp_path / "latin1.toml"
        path.write_bytes('version = "caf\xe9"\n'.encode("latin-1"))
        return path, "is not UTF-8 text"
    text, line = BAD_POLICIES[case]
    path = tmp_path / f"{case}.toml"
    path.write_text(text)
    return path, line


CASES = [*BAD_POLICIES, "folder", "latin1"]


@pytest.mark.parametrize("case", CASES)
def test_moderate_apply_with_a_bad_policy_is_one_line_naming_the_field(
        tmp_path: Path, redis_db: RedisDB, case: str) -> None:
    path, expected = _policy(tmp_path, case)
    env = labelq_env(broker=redis_db.url)
    result = cli(["moderate", "apply", "anyjob", "--policy", str(path)], env, cwd=tmp_path)
    assert result.returncode == 2
    assert expected in _one_error_line(result.stderr)


@pytest.mark.parametrize("case", ["notify-str", "folder"])
def test_a_worker_and_the_console_with_a_bad_labelq_policy_refuse_to_start_in_one_line(
        tmp_path: Path, redis_db: RedisDB, tiny_vit: Path, case: str) -> None:
    path, expected = _policy(tmp_path, case)
    env = labelq_env(broker=redis_db.url, models=[tiny_vit], policy=path, console_port=1)
    console = cli(["console"], env, cwd=tmp_path, timeout=60)
    assert console.returncode == 2 and expected in _one_error_line(console.stderr)

    worker = cli(["worker", "--devices", "cpu", "--name", "badpolicy"], env, cwd=tmp_path, timeout=120)
    assert worker.returncode != 0
    text = worker.stdout + worker.stderr
    refusals = [line for line in text.splitlines() if "cannot start" in line and expected in line]
    assert refusals, text[-3000:]
    assert "Traceback" not in text, text[-3000:]


# ---------------------------------------------------------------- secrets in LABELQ_RESULTS_URL

SECRET = "Sup3r@S3cretPw"  # an unencoded @: SQLAlchemy used to take "S3cretPw@127.0.0.1" for the host


def _pg_url(postgres_server: Any, *, userinfo: str, port: int | None = None) -> str:
    return f"postgresql://{userinfo}@127.0.0.1:{port or postgres_server.port}/{postgres_server.dbname}"


@pytest.mark.parametrize("where", ["password-with-at", "password-as-user", "unreachable"])
def test_a_results_url_password_appears_in_no_output_or_log(
        tmp_path: Path, redis_db: RedisDB, postgres_server: Any, tiny_vit: Path, where: str) -> None:
    from tests.support.procs import free_port

    if where == "password-with-at":  # the real server (trust auth): the URL works, its password stays hidden
        url = _pg_url(postgres_server, userinfo=f"postgres:{SECRET}")
    elif where == "password-as-user":  # a user who forgot the user name: the server names the "role"
        url = _pg_url(postgres_server, userinfo="S3cretPwAsUser")
    else:
        url = _pg_url(postgres_server, userinfo=f"postgres:{SECRET}", port=free_port())
    pieces = ("S3cretPw", "Sup3r")
    env = labelq_env(broker=redis_db.url, redis=redis_db.url, results=url, models=[tiny_vit], chunk_size=4)
    images = tmp_path / "images"
    images.mkdir()
    outputs = []
    outputs.append(cli(["ping", "--no-workers"], env, cwd=tmp_path, timeout=60))
    outputs.append(cli(["enqueue", str(images), "--job", f"pw-{where}"], env, cwd=tmp_path, timeout=60))
    outputs.append(cli(["status", f"pw-{where}"], env, cwd=tmp_path, timeout=60))
    outputs.append(cli(["status", f"pw-{where}", "--json"], env, cwd=tmp_path, timeout=60))
    if where == "unreachable":  # a worker that cannot open the record store says so, and exits
        outputs.append(cli(["worker", "--devices", "cpu", "--name", f"pw{where}"], env, cwd=tmp_path, timeout=120))
    text = "\n".join(r.stdout + r.stderr for r in outputs)
    for piece in pieces:
        assert piece not in text, text[-4000:]
    assert "Traceback" not in text, text[-4000:]
    if where == "password-with-at":
        assert outputs[0].returncode == 0, text  # ping: the record store answered (the right host this time)
    else:
        assert "***" in text and all(r.returncode != 0 for r in outputs[:1] + outputs[4:])


# ---------------------------------------------------------------- the background producer's log


def test_the_background_producer_log_never_follows_a_planted_symlink(
        tmp_path: Path, redis_db: RedisDB, tiny_vit: Path) -> None:
    job = "bg-symlink"
    # Where the log used to go: a shared name in the temp folder, which another user can plant first.
    planted = Path(tempfile.gettempdir()) / f"labelq-producer-{job}.log"
    victim = tmp_path / "victim.txt"  # the symlink's target: must not be created or written
    with contextlib.suppress(FileNotFoundError):
        planted.unlink()
    planted.symlink_to(victim)
    state = tmp_path / "state"
    manifest = tmp_path / "manifest.txt"
    manifest.write_text("".join(f"s3://bkt/k{i:04d}.jpg\n" for i in range(60)))
    env = labelq_env(broker=redis_db.url, models=[tiny_vit], max_queued_chunks=1, chunk_size=10,
                     base={**os.environ, "XDG_STATE_HOME": str(state)})
    pid = 0
    try:
        result = cli(["enqueue", str(manifest), "--job", job], env, cwd=tmp_path, timeout=60).check()
        found = re.search(r"pid (\d+), log (\S+?)\)", " ".join(result.stderr.split()))
        assert found, result.stderr
        pid, log = int(found.group(1)), Path(found.group(2))
        assert os.killpg(pid, 0) is None  # the background producer runs, its output going to ``log``
        assert not victim.exists() and planted.is_symlink()
        assert log.parent == state / "labelq"
        assert stat.S_IMODE(log.parent.stat().st_mode) == 0o700
        st = log.lstat()
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    finally:
        planted.unlink()
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)  # the producer this test started (its own session)
