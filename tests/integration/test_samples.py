"""Audit samples and shadow models against a real Redis: the moderator queues sampled items once (with their
rate), `labelq moderate apply` samples stored records, a sample-only item is decided through the console's HTTP
API, the review store is rebuilt from the audit trail with its rates, `labelq moderate promote` rewrites and
audits the policy and a worker's moderator reloads it, `labelq moderate shadow` enqueues exactly its sample,
and `labelq listen` adds the policy's shadow models to live tasks."""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from labelq.config import load_settings
from labelq.moderation import Moderator, in_sample, iter_audit, load_policy
from labelq.moderation.shadow import SHADOW_LABEL
from labelq.objects import ObjectRef, Stores, file_uri
from labelq.records import Record
from labelq.reviews import ReviewStore
from tests.support.procs import HOST, free_port, wait_until
from tests.support.workers import cli, labelq_env

MODEL = "m"
BANDS = ((0.0, 0.5, 0.05), (0.5, 0.9, 0.25), (0.9, 1.0, 1.0))
POLICY = f"""version = "s-1"

[[rule]]
model = "{MODEL}"
label = "nsfw"
threshold = 0.95
actions = ["copy"]

[[sample]]
model = "{MODEL}"
label = "nsfw"
bands = {json.dumps([list(b) for b in BANDS])}

[shadow]
models = ["cand"]
"""


def rate_of(score: float) -> float:
    return next(r for lo, hi, r in BANDS if lo <= score < hi or (hi == 1.0 and score == 1.0))


def records(root: Path, n: int, *, job: str = "j") -> list[Record]:
    """n records of MODEL with scores spread over [0, 1] (nsfw in top_k), the same of the shadow model 'cand',
    and files for those a rule copies."""
    out = []
    for i in range(n):
        score = round(i / (n - 1), 4)
        path = root / "in" / f"{i:04d}.png"
        if score >= 0.95:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"png %d" % i)
        ranked = sorted([("nsfw", score), ("normal", round(1 - score, 4))], key=lambda t: -t[1])
        top: list[dict[str, Any]] = [{"label": label, "score": s} for label, s in ranked]
        for model in (MODEL, "cand"):
            out.append(Record(file_uri(path), f"e{i}", model, ranked[0][0], ranked[0][1], top,
                              job=job, processed_at="2026-12-06T10:00:00.000000Z"))
    return out


def expected(recs: list[Record]) -> dict[str, float]:
    """uri → rate of the records of MODEL the sample draws, computed here from the hash rule."""
    out = {}
    for r in recs:
        score = next(float(t["score"]) for t in r.top_k if t["label"] == "nsfw")
        if r.model == MODEL and in_sample(r.uri, r.etag, MODEL, "nsfw", rate_of(score)):
            out[r.uri] = rate_of(score)
    return out


def sampled_items(redis: Any) -> dict[str, Any]:
    store = ReviewStore(redis)
    return {i.uri: i for i in store.get_many([i.id for i in _all(store)]) if "sample" in i.actions}


def _all(store: ReviewStore) -> list[Any]:
    from labelq.reviews import Query

    items, q = [], Query(state="all", size=200)
    while True:
        page = store.query(q)
        items += page.items
        if page.next_after is None:
            return items
        q.after = page.next_after


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY, encoding="utf-8")
    return path


def test_the_moderator_queues_the_sampled_items_once_with_their_rate(redis_client: Any, tmp_path: Path,
                                                                     policy_file: Path) -> None:
    root = tmp_path / "root"
    recs = records(root, 400)
    want = expected(recs)
    assert 20 < len(want) < 150  # the bands draw some of each
    moderator = Moderator(load_policy(policy_file), redis=redis_client, stores=Stores(load_settings(local_root=root)))
    first = moderator.apply(recs)
    samples = [a for a in first if a.action == "sample"]
    assert {a.uri: a.sample_rate for a in samples} == want
    assert all(a.result == "ok" and a.threshold is None and a.model == MODEL for a in samples)
    assert {a.detail for a in samples} <= {"band [0, 0.5) rate 0.05", "band [0.5, 0.9) rate 0.25",
                                           "band [0.9, 1] rate 1"}
    items = sampled_items(redis_client)
    assert {u: i.sample_rate for u, i in items.items()} == want
    copied = {a.uri for a in first if a.action == "copy"}
    assert copied and copied <= set(want)  # every score from 0.9 up is sampled at rate 1
    for uri in copied:  # acted on and sampled: one item with both, its rule's threshold and its rate
        item = items[uri]
        assert (sorted(item.actions), item.threshold, item.sample_rate, item.moved) == (["copy", "sample"], 0.95, 1.0,
                                                                                        False)
        assert not item.sample_only
    only = [i for i in items.values() if i.uri not in copied]
    assert only and all(i.sample_only and i.threshold is None and i.quarantine_uri is None for i in only)

    assert moderator.apply(recs) == []  # applied again: nothing new, no second audit entry
    assert moderator.apply([r for r in recs if r.model == MODEL][::-1]) == []
    audit = [a for a in iter_audit(redis_client) if a.action == "sample"]
    assert sorted(a.uri for a in audit) == sorted(want) and all(a.sample_rate == want[a.uri] for a in audit)
    assert {u: i.sample_rate for u, i in sampled_items(redis_client).items()} == want
    assert not [a for a in iter_audit(redis_client) if a.model == "cand"]  # the shadow model never acts

    # the store rebuilt from the audit trail alone keeps every rate
    ids = [k for k in redis_client.scan_iter(match="labelq:review:*")]
    redis_client.delete(*ids)
    assert ReviewStore(redis_client).rebuild_from_audit(iter_audit(redis_client)) > 0
    rebuilt = sampled_items(redis_client)
    assert {u: i.sample_rate for u, i in rebuilt.items()} == want
    assert all(sorted(rebuilt[u].actions) == ["copy", "sample"] and rebuilt[u].threshold == 0.95 for u in copied)


def test_moderate_apply_samples_stored_records_and_a_dry_run_says_would_sample(
        redis_url: str, redis_client: Any, tmp_path: Path, policy_file: Path) -> None:
    from labelq.services import open_services

    root = tmp_path / "root"
    recs = records(root, 200, job="stored")
    services = open_services(load_settings(broker_url=redis_url))
    services.book.open("stored", source="test", models=[MODEL, "cand"])
    services.write(recs)
    env = labelq_env(broker=redis_url, local_root=root)
    want = expected(recs)

    dry = cli(["moderate", "apply", "stored", "--policy", str(policy_file), "--dry-run"], env).check()
    lines = [line for line in dry.stdout.splitlines() if line.startswith("would sample: ")]
    assert sorted(line.split()[2] for line in lines) == sorted(want)
    assert not list(iter_audit(redis_client)) and not sampled_items(redis_client)

    cli(["moderate", "apply", "stored", "--policy", str(policy_file)], env).check()
    assert {u: i.sample_rate for u, i in sampled_items(redis_client).items()} == want
    again = cli(["moderate", "apply", "stored", "--policy", str(policy_file)], env).check()
    assert "took 0 actions" in again.stderr, again.stderr
    assert len([a for a in iter_audit(redis_client) if a.action == "sample"]) == len(want)


@pytest.fixture
def console(redis_url: str, s3_server: Any, tmp_path: Path) -> Iterator[tuple[str, Any]]:
    """The console over the test's Redis and moto's S3, on a free port, for a bearer token."""
    import uvicorn

    from labelq.console import create_app
    from labelq.services import open_services

    settings = load_settings(broker_url=redis_url, s3_endpoint_url=s3_server.endpoint_url, console_token="t" * 32,
                             console_secret="s" * 32, console_thumb_dir=tmp_path / "thumbs")
    services = open_services(settings)
    server = uvicorn.Server(uvicorn.Config(create_app(settings, services), host=HOST, port=free_port(),
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name="console", daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=30, what="console listening")
    try:
        yield f"http://{HOST}:{server.config.port}", services
    finally:
        server.should_exit = True
        thread.join(15)
        services.close()


def _post(url: str, form: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(url, data=urllib.parse.urlencode(form).encode(), method="POST", headers={
        "Authorization": "Bearer " + "t" * 32, "Accept": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return dict(json.loads(resp.read()))


def _get(url: str) -> str:
    req = urllib.request.Request(url, headers={"Authorization": "Bearer " + "t" * 32})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return str(resp.read().decode())


def test_sample_only_items_are_confirmed_and_released_through_the_console(
        console: tuple[str, Any], redis_client: Any, s3_client: Any, s3_bucket: str, s3_server: Any,
        tmp_path: Path) -> None:
    url, _ = console
    policy = tmp_path / "p.toml"
    policy.write_text('version = "s-2"\n[[rule]]\nmodel = "m"\nlabel = "nsfw"\nthreshold = 0.99\nactions = ["move"]\n'
                      '[[sample]]\nmodel = "m"\nlabel = "nsfw"\nbands = [[0.0, 1.0, 1.0]]\n')
    recs = []
    for key in ("a/one.jpg", "a/two.jpg"):
        etag = s3_client.put_object(Bucket=s3_bucket, Key=key, Body=key.encode(), Tagging="owner=web")["ETag"]
        recs.append(Record(f"s3://{s3_bucket}/{key}", etag.strip('"'), "m", "nsfw", 0.4,
                           [{"label": "nsfw", "score": 0.4}], job="j"))
    stores = Stores(load_settings(s3_endpoint_url=s3_server.endpoint_url))
    done = Moderator(load_policy(policy), redis=redis_client, stores=stores).apply(recs)
    assert [(a.action, a.result) for a in done] == [("sample", "ok"), ("sample", "ok")]
    store = ReviewStore(redis_client)
    one, two = (store.find(r.uri, r.etag) for r in recs)
    assert one is not None and two is not None and one.sample_only and one.sample_rate == 1.0
    assert "audit sample" in _get(url + "/review?state=all")

    confirmed = _post(url + "/review/decide", {"id": one.id, "version": one.version, "decision": "confirm"})
    assert confirmed["ok"] and confirmed["item"]["decision"] == "confirm" and confirmed["item"]["sample_rate"] == 1.0
    released = _post(url + "/review/decide", {"id": two.id, "version": two.version, "decision": "release",
                                              "reason": "false-positive"})
    assert released["ok"] and released["item"]["state"] == "decided", released
    tags = {k: {t["Key"]: t["Value"] for t in s3_client.get_object_tagging(Bucket=s3_bucket, Key=k)["TagSet"]}
            for k in ("a/one.jpg", "a/two.jpg")}
    assert tags["a/one.jpg"] == {"owner": "web", "labelq-review": "confirmed", "labelq-reviewer": "token"}
    assert tags["a/two.jpg"] == {"owner": "web", "labelq-review": "released", "labelq-reviewer": "token",
                                 "labelq-reason": "false-positive"}
    assert sorted(o["Key"] for o in s3_client.list_objects_v2(Bucket=s3_bucket)["Contents"]) == ["a/one.jpg",
                                                                                                 "a/two.jpg"]
    rows = {r["uri"]: r for r in map(json.loads, _get(url + "/review/export.jsonl").splitlines())}
    assert {u: (r["decision"], r["sample_rate"]) for u, r in rows.items()} == {
        recs[0].uri: ("confirm", 1.0), recs[1].uri: ("release", 1.0)}
    decisions = [(a.action, a.uri, a.reviewer) for a in iter_audit(redis_client) if a.action.startswith("review:")]
    assert decisions == [("review:confirm", recs[0].uri, "token"), ("review:release", recs[1].uri, "token")]


def test_promote_rewrites_and_audits_the_policy_and_a_workers_moderator_reloads_it(
        redis_url: str, redis_client: Any, tmp_path: Path, policy_file: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    root = tmp_path / "root"
    moderator = Moderator.from_file(policy_file, redis=redis_client, stores=Stores(load_settings(local_root=root)),
                                    reload_every=0.0)
    high = Record(file_uri(root / "x.png"), "ex", "cand", "nsfw", 0.99, [{"label": "nsfw", "score": 0.99}], job="j")
    assert moderator.plan([high]) == []  # a shadow model's record

    env = labelq_env(broker=redis_url)
    before = policy_file.read_text()
    dry = cli(["moderate", "promote", "--policy", str(policy_file), "--candidate", "cand", "--threshold", "0.9",
               "--version", "s-2", "--dry-run"], env).check()
    assert '-model = "m"' in dry.stdout and '+model = "cand"' in dry.stdout and "+threshold = 0.9" in dry.stdout
    assert policy_file.read_text() == before and not list(iter_audit(redis_client))

    cli(["moderate", "promote", "--policy", str(policy_file), "--candidate", "cand", "--threshold", "0.9",
         "--version", "s-2"], env).check()
    new = load_policy(policy_file)
    assert (new.version, new.shadow, {r.model for r in new.rules}, {s.model for s in new.samples}) == (
        "s-2", (), {"cand"}, {"cand"})
    assert new.rules[0].threshold == 0.9
    [entry] = list(iter_audit(redis_client))
    assert (entry.action, entry.result, entry.detail) == ("promote", "ok", "m -> cand, version s-1 -> s-2")

    os.utime(policy_file, ns=(1, 2))  # the file changed (its mtime): the next look reloads it
    assert {(a.action, a.policy_version) for a in moderator.plan([high])} == {("copy", "s-2"), ("sample", "s-2")}

    policy_file.write_text("version = 'broken'\n[[rule]]\n")  # a file that no longer parses keeps the old policy
    with caplog.at_level(logging.ERROR, logger="labelq.moderation.moderator"):
        assert moderator.plan([high]) != [] and moderator.policy.version == "s-2"
        assert moderator.plan([high]) != []
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "keeping version s-2" in errors[0].getMessage()


def test_moderate_shadow_enqueues_a_job_of_exactly_the_sampled_objects(
        redis_url: str, redis_client: Any, tmp_path: Path, tiny_vit: Path) -> None:
    from labelq.services import open_services

    root = tmp_path / "root"
    recs = [r for r in records(root, 300, job="old") if r.model == MODEL]
    recs.append(Record(file_uri(root / "bad.png"), "eb", MODEL, status="error", error_kind="corrupt", error="x",
                       job="old"))
    services = open_services(load_settings(broker_url=redis_url))
    services.book.open("old", source="test", models=[MODEL])
    services.write(recs)
    candidate = str(tiny_vit)
    want = {r.uri for r in recs if r.ok and in_sample(r.uri, r.etag, candidate, SHADOW_LABEL, 0.2)}
    assert 30 < len(want) < 100

    env = labelq_env(broker=redis_url, local_root=root)
    env["XDG_STATE_HOME"] = str(tmp_path / "state")
    done = cli(["moderate", "shadow", "old", "--model", candidate, "--rate", "0.2"], env).check()
    assert done.stdout.strip() == "old.shadow"
    info = services.job("old.shadow")
    assert (info.models, info.listed) == ([candidate], len(want))
    assert services.book.in_flight_uris("old.shadow") == want  # the chunks the workers get: exactly the sample
    manifest = tmp_path / "state" / "labelq" / "shadow" / "old.shadow.manifest"
    assert sorted(line.split("\t")[0] for line in manifest.read_text().splitlines()) == sorted(want)

    again = cli(["moderate", "shadow", "old", "--model", candidate, "--rate", "0.2"], env).check()
    assert again.stdout.strip() == "old.shadow" and services.job("old.shadow").listed == len(want)  # nothing twice
    other = cli(["moderate", "shadow", "old", "--model", candidate, "--rate", "0.5"], env)
    assert other.returncode == 2 and "job old.shadow exists and lists other objects" in other.stderr
    assert sorted(line.split("\t")[0] for line in manifest.read_text().splitlines()) == sorted(want)
    bad = cli(["moderate", "shadow", "old", "--model", candidate, "--rate", "0"], env)
    assert bad.returncode == 2 and "--rate" in bad.stderr


def test_listen_adds_the_policys_shadow_models_to_each_live_task(redis_url: str, redis_client: Any,
                                                                 policy_file: Path) -> None:
    from labelq.errors import UsageError
    from labelq.listen import Listener, Upload
    from labelq.services import open_services

    services = open_services(load_settings(broker_url=redis_url))
    plain = Listener(load_settings(broker_url=redis_url), app=services.app, book=services.book, job="live",
                     models=[MODEL])
    assert plain.models == [MODEL] and services.job("live").models == [MODEL]

    settings = load_settings(broker_url=redis_url, policy=policy_file)  # the same stream, now with a shadow model
    listener = Listener(settings, app=services.app, book=services.book, job="live", models=[MODEL])
    assert listener.models == [MODEL, "cand"]
    assert services.job("live").models == [MODEL, "cand"]
    assert listener.handle([Upload(ObjectRef("s3://b/new.jpg", 10, "e1"), None)]) == 1
    [raw] = redis_client.lrange(settings.live_queue, 0, -1)
    args = json.loads(base64.b64decode(json.loads(raw)["body"]))[0]
    assert args[0] == "live" and args[2] == [MODEL, "cand"]

    with pytest.raises(UsageError, match="exists with source listen and models m, cand"):
        Listener(settings, app=services.app, book=services.book, job="live", models=["other"])
