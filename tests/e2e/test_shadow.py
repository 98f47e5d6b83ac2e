"""Shadow models end to end: a real worker with a policy whose [shadow] model scores beside the active one never
acts on the shadow model's records; `labelq moderate shadow --rate 1.0` scores a stored job's objects with the
candidate in JOB.shadow (never acted on either), `labelq moderate compare` lists exactly the objects whose action
flips between the two models' records; `labelq moderate promote` rewrites the policy (audited) and the running
worker follows it (LABELQ_POLICY_RELOAD) without a restart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from labelq.moderation import iter_audit, load_policy
from labelq.objects import file_uri
from labelq.records import Record
from labelq.results.redis import RedisStore
from labelq.testing import build_vit
from tests.support.procs import wait_until
from tests.support.workers import Procs, cli, labelq_env

pytestmark = pytest.mark.slow


def _photos(folder: Path, data: list[bytes]) -> set[str]:
    folder.mkdir(parents=True)
    for i, b in enumerate(data):
        (folder / f"p{i}.jpg").write_bytes(b)
    return {file_uri(folder / f"p{i}.jpg") for i in range(len(data))}


def _nsfw(records: list[Record], model: str) -> dict[str, float]:
    return {r.uri: next(float(t["score"]) for t in r.top_k if t["label"] == "nsfw") for r in records
            if r.model == model and r.ok}


def test_a_worker_never_acts_on_a_shadow_models_records_and_follows_a_promotion(
        tmp_path: Path, redis_url: str, redis_client: Any, procs: Procs, tiny_vit: Path,
        photo_bytes: list[bytes]) -> None:
    root = tmp_path / "root"
    first, second = _photos(root / "one", photo_bytes[:3]), _photos(root / "two", photo_bytes[3:6])
    active, candidate = str(tiny_vit), str(build_vit(tmp_path / "candidate-vit", seed=1))
    policy = tmp_path / "policy.toml"
    policy.write_text(f'version = "s-1"\n[[rule]]\nmodel = {json.dumps(active)}\nlabel = "nsfw"\nthreshold = 0.0\n'
                      'actions = ["copy"]\n[[sample]]\n'
                      f'model = {json.dumps(active)}\nlabel = "nsfw"\nbands = [[0.0, 1.0, 1.0]]\n'
                      f'[shadow]\nmodels = [{json.dumps(candidate)}]\n', encoding="utf-8")
    env = labelq_env(broker=redis_url, models=[active, candidate], local_root=root, policy=policy,
                     policy_reload=0.2)
    procs.worker(env)

    cli(["enqueue", str(root / "one"), "--job", "A", "--wait"], env, timeout=120).check()
    wait_until(lambda: len(list(iter_audit(redis_client, job="A"))) == 6, timeout=30, what="A's actions")
    acted = {(a.uri, a.model, a.action, a.policy_version) for a in iter_audit(redis_client, job="A")}
    assert acted == {(u, active, kind, "s-1") for u in first for kind in ("copy", "sample")}  # none on the shadow

    # the candidate scores A's objects in bulk, in its own job, and the statistics compare the two models' records
    got = cli(["moderate", "shadow", "A", "--model", candidate, "--rate", "1.0", "--wait"], env, timeout=120).check()
    assert got.stdout.strip() == "A.shadow"
    store = RedisStore(redis_client)
    a = _nsfw(list(store.iter_records("A")), active)
    b = _nsfw(list(store.iter_records("A.shadow")), candidate)
    assert set(a) == set(b) == first and not list(iter_audit(redis_client, job="A.shadow"))
    far = max(first, key=lambda u: abs(a[u] - b[u]))  # a threshold between its two scores flips it at least
    threshold = (a[far] + b[far]) / 2
    flips = {u for u in first if (a[u] >= threshold) != (b[u] >= threshold)}
    assert far in flips
    got = cli(["moderate", "compare", "--model", active, "--candidate", candidate, "--label", "nsfw", "--job", "A",
               "--candidate-job", "A.shadow", "--threshold", str(threshold), "--json"], env).check()
    c = json.loads(got.stdout)
    assert {f["uri"] for f in c["flips"]} == flips and c["pairs"] == len(first) and c["candidate_job"] == "A.shadow"
    assert {f["uri"]: (f["score_a"], f["score_b"]) for f in c["flips"]} == {u: (a[u], b[u]) for u in flips}
    assert c["unmatched_active"] == c["unmatched_candidate"] == 0
    none = cli(["moderate", "compare", "--model", active, "--candidate", "org/unscored", "--label", "nsfw", "--job",
                "A", "--threshold", "0.5"], env)  # the error names the command that would give it records
    assert none.returncode != 0 and "`labelq moderate shadow A --model org/unscored`" in none.stderr

    cli(["moderate", "promote", "--policy", str(policy), "--candidate", candidate, "--version", "s-2"], env).check()
    promoted_policy = load_policy(policy)
    assert promoted_policy.shadow == () and promoted_policy.models == (candidate,)
    assert [(r.model, r.threshold) for r in promoted_policy.rules] == [(candidate, 0.0)]
    cli(["enqueue", str(root / "two"), "--job", "B", "--wait"], env, timeout=120).check()
    # the candidate now acts (its rule copies, its sample draws every object); the old model's records do not
    wait_until(lambda: len(list(iter_audit(redis_client, job="B"))) == 6, timeout=30, what="B's actions")
    later = {(a.uri, a.model, a.action, a.policy_version) for a in iter_audit(redis_client, job="B")}
    assert later == {(u, candidate, kind, "s-2") for u in second for kind in ("copy", "sample")}
    promoted = [a for a in iter_audit(redis_client) if a.action == "promote"]
    assert [a.detail for a in promoted] == [f"{active} -> {candidate}, version s-1 -> s-2"]
