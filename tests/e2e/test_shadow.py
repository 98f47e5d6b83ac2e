"""Shadow models end to end: a real worker with a policy whose [shadow] model scores beside the active one never
acts on the shadow model's records; `labelq moderate promote` rewrites the policy and the running worker follows
it (LABELQ_POLICY_RELOAD) without a restart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from labelq.moderation import iter_audit, load_policy
from labelq.objects import file_uri
from tests.support.procs import wait_until
from tests.support.workers import Procs, cli, labelq_env

pytestmark = pytest.mark.slow


def _photos(folder: Path, data: list[bytes]) -> set[str]:
    folder.mkdir(parents=True)
    for i, b in enumerate(data):
        (folder / f"p{i}.jpg").write_bytes(b)
    return {file_uri(folder / f"p{i}.jpg") for i in range(len(data))}


def test_a_worker_never_acts_on_a_shadow_models_records_and_follows_a_promotion(
        tmp_path: Path, redis_url: str, redis_client: Any, procs: Procs, tiny_vit: Path, tiny_timm: Path,
        photo_bytes: list[bytes]) -> None:
    root = tmp_path / "root"
    first, second = _photos(root / "one", photo_bytes[:3]), _photos(root / "two", photo_bytes[3:6])
    active, candidate = str(tiny_vit), str(tiny_timm)
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

    cli(["moderate", "promote", "--policy", str(policy), "--candidate", candidate, "--version", "s-2"], env).check()
    assert load_policy(policy).shadow == ()
    cli(["enqueue", str(root / "two"), "--job", "B", "--wait"], env, timeout=120).check()
    # the candidate's records lack "nsfw": the rule does not fire, the sample scores them 0.0 and draws them all
    wait_until(lambda: len(list(iter_audit(redis_client, job="B"))) == 3, timeout=30, what="B's samples")
    later = {(a.uri, a.model, a.action, a.policy_version, a.score) for a in iter_audit(redis_client, job="B")}
    assert later == {(u, candidate, "sample", "s-2", 0.0) for u in second}
    promoted = [a for a in iter_audit(redis_client) if a.action == "promote"]
    assert [a.detail for a in promoted] == [f"{active} -> {candidate}, version s-1 -> s-2"]
