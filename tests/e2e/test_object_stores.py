"""Every store of the seam end to end, with real `labelq` processes: `labelq run` over gs://, az:// and a
manifest of URLs; a distributed job over gs:// and az:// through a real worker; a moderation move in both.

Each run ends with exactly one record per object, with the error kinds the objects deserve.
"""

from __future__ import annotations

import io
import uuid
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from labelq.records import read_records
from tests.e2e.conftest import RUN_ENV, RedisDB, labelq
from tests.support.webserver import ImageServer
from tests.support.workers import Procs, cli, labelq_env

pytestmark = pytest.mark.slow

VIT_LABELS = {"normal", "nsfw"}


def _image(i: int, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64 + i, 48), (i * 40 % 255, 90, 160)).save(buf, format=fmt)
    return buf.getvalue()


# name → (bytes, the record's outcome)
OBJECTS: dict[str, tuple[bytes, str]] = {
    "set/a.jpg": (_image(1), "ok"),
    "set/b.png": (_image(2, "PNG"), "ok"),
    "set/deep/c.jpg": (_image(3), "ok"),
    "set/empty.jpg": (b"", "not_an_image"),
    "set/text.jpg": (b"hello, not an image", "not_an_image"),
}


class Cloud:
    def __init__(self, scheme: str, env: dict[str, str], put: Any, keys: Any, tags: Any) -> None:
        self.scheme, self.env, self.put, self.keys, self.tags = scheme, env, put, keys, tags
        self.bucket = ""

    def uri(self, key: str) -> str:
        return f"{self.scheme}://{self.bucket}/{key}"


@pytest.fixture(params=["gs", "az"])
def cloud(request: pytest.FixtureRequest) -> Cloud:
    bucket = f"e2e-{uuid.uuid4().hex[:10]}"
    if request.param == "gs":
        server = request.getfixturevalue("gcs_server")
        b = server.client().create_bucket(bucket)
        made = Cloud("gs", server.env, lambda k, d: b.blob(k).upload_from_string(d),
                     lambda: {x.name for x in b.list_blobs()}, lambda k: dict(b.get_blob(k).metadata or {}))
    else:
        server = request.getfixturevalue("azurite")
        c = server.client().create_container(bucket)
        made = Cloud("az", server.env, lambda k, d: c.upload_blob(k, d, overwrite=True),
                     lambda: {x.name for x in c.list_blobs()}, lambda k: dict(c.get_blob_client(k).get_blob_tags()))
    made.bucket = bucket
    for key, (data, _) in OBJECTS.items():
        made.put(key, data)
    return made


def check(records: list[Any], expected: dict[str, str]) -> None:
    by_uri = {r.uri: r for r in records}
    assert len(records) == len(by_uri) == len(expected)  # exactly one record per object
    for uri, outcome in expected.items():
        rec = by_uri[uri]
        if outcome == "ok":
            assert rec.status == "ok" and rec.label in VIT_LABELS and rec.etag, rec
        else:
            assert (rec.status, rec.error_kind) == ("error", outcome), rec


def test_labelq_run_over_a_bucket_of_the_store(cloud: Cloud, tiny_vit: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    result = labelq("run", f"{cloud.scheme}://{cloud.bucket}/set", "--model", str(tiny_vit), "--out", str(out),
                    "--db", f"sqlite:///{tmp_path / 'l.db'}", cwd=tmp_path, env={**RUN_ENV, **cloud.env})
    assert result.returncode == 0, result.stderr
    check(read_records(out), {cloud.uri(k): outcome for k, (_, outcome) in OBJECTS.items()})


def test_labelq_run_over_a_manifest_of_urls(tiny_vit: Path, tmp_path: Path) -> None:
    with ImageServer({"/a.jpg": _image(4), "/b.jpg": _image(5), "/junk.jpg": b"<html>nope</html>"},
                     slow_s=3.0) as server:
        expected = {
            server.url("/a.jpg"): "ok",
            server.url("/to/b.jpg"): "ok",  # redirected
            server.url("/flaky/a.jpg"): "ok",  # 503 twice, then served
            server.url("/junk.jpg"): "not_an_image",
            server.url("/gone"): "not_found",
            server.url("/secret"): "access_denied",
            server.url("/big"): "too_large",
            server.url("/loop"): "storage_error",
            server.url("/slow/a.jpg"): "storage_error",
        }
        manifest = tmp_path / "urls.txt"
        manifest.write_text("\n".join(expected) + "\n")
        out = tmp_path / "out.jsonl"
        env = {**RUN_ENV, "LABELQ_HTTP_ALLOW_PRIVATE": "true", "LABELQ_HTTP_TIMEOUT": "1",
               "LABELQ_S3_MAX_ATTEMPTS": "3", "LABELQ_MAX_BYTES": "200000"}
        result = labelq("run", str(manifest), "--model", str(tiny_vit), "--out", str(out), cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr
        records = read_records(out)
        check(records, expected)
        etags = {r.uri: r.etag for r in records}
        assert etags[server.url("/a.jpg")] == "etag-a.jpg"  # the server's ETag is the record's etag
        # the guard: the same list without the setting reaches nothing (the server is on loopback)
        before = sum(server.hits.values())
        refused = labelq("run", str(manifest), "--model", str(tiny_vit), "--out", str(tmp_path / "no.jsonl"),
                         "--db", f"sqlite:///{tmp_path / 'no.db'}", cwd=tmp_path, env=RUN_ENV)
        assert refused.returncode == 0, refused.stderr
        assert {r.error_kind for r in read_records(tmp_path / "no.jsonl")} == {"access_denied"}
        assert sum(server.hits.values()) == before


@pytest.fixture(scope="module")
def worker_env(redis_db: RedisDB, gcs_server: Any, azurite: Any, tiny_vit: Path, module_procs: Procs) -> dict[str, str]:
    env = labelq_env(broker=redis_db.url, models=[tiny_vit], batch_size=4, chunk_size=2)
    env.update(gcs_server.env)
    env.update(azurite.env)
    module_procs.workers(env, [None])
    return env


def test_a_distributed_job_then_a_moderation_move(cloud: Cloud, worker_env: dict[str, str], tiny_vit: Path,
                                                   tmp_path: Path) -> None:
    env = {**worker_env, **cloud.env}
    job = f"job-{cloud.scheme}-{uuid.uuid4().hex[:6]}"
    done = cli(["enqueue", f"{cloud.scheme}://{cloud.bucket}/set/", "--job", job, "--wait"], env, timeout=180)
    done.check()
    out = tmp_path / "export.jsonl"
    cli(["export", job, "-o", str(out)], env).check()
    check(read_records(out), {cloud.uri(k): outcome for k, (_, outcome) in OBJECTS.items()})

    policy = tmp_path / "policy.toml"
    policy.write_text(f'version = "e2e.1"\nquarantine_prefix = "quarantine/"\n[[rule]]\nmodel = "{tiny_vit}"\n'
                      'label = "nsfw"\nthreshold = 0.0\nactions = ["tag", "move"]\n', encoding="utf-8")
    applied = cli(["moderate", "apply", job, "--policy", str(policy)], env, timeout=120)
    applied.check()
    ok = [k for k, (_, outcome) in OBJECTS.items() if outcome == "ok"]
    assert "move ok: 3" in " ".join(applied.stderr.split()) and "tag ok: 3" in " ".join(applied.stderr.split())
    keys = cloud.keys()
    assert {f"quarantine/{k}" for k in ok} <= keys and not (set(ok) & keys)  # moved, not copied
    for k in ok:
        tags = cloud.tags(f"quarantine/{k}")
        assert tags["labelq-policy"] == "e2e.1" and tags["labelq-label"] in VIT_LABELS
