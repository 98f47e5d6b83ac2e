"""Measuring the policy against a ground truth known for every object.

Two tiny ViTs (different seeds) whose classifier heads are rescaled so that their ``nsfw`` scores spread over
[0, 1] label the same folder of generated images through labelq's engine; their records go to the record store
under one job (the active model and a shadow candidate). The truth of each object is drawn from a hidden rule
correlated with the active model's score (plus label noise), with a fixed seed. The real moderator applies the
policy file to the active model's records: its rule (``tag`` at 0.6) queues the flagged objects for review and
its ``[[sample]]`` (two bands below the threshold, rate 0.6) queues a sample of the rest, drawn by the hash rule
over the object's URI (a temporary path), so the sample differs from run to run. Two reviewers sign in to the
console over HTTP, open the queue (which claims it) and decide every item by the hidden truth (confirm, release,
or a label).

Then ``labelq moderate report`` (the CLI, in its own process) and ``/api/quality`` must give intervals that
contain the true precision and recall computed from all records (95 % intervals, eight of them checked: over
random samples of these scores at this rate, about one run in 200 misses one; at the rate 0.35 it was one in 16),
and ``labelq moderate compare`` must find
exactly the objects whose action flips between the two models. Chromium checks the /quality page.
"""

from __future__ import annotations

import http.cookiejar
import json
import re
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from labelq.config import Settings, load_settings
from labelq.records import Record
from tests.e2e.test_console import CHROMIUM, browser  # noqa: F401 - the Playwright fixture, reused
from tests.support.procs import HOST, free_port, wait_until
from tests.support.workers import cli, labelq_env

pytestmark = pytest.mark.slow

JOB = "quality-1"
LABEL = "nsfw"
THRESHOLD = 0.6
SAMPLE_RATE = 0.6  # the [[sample]] rate of both bands below the threshold, [0, 0.3) and [0.3, THRESHOLD)
SPLIT = 0.3
N_IMAGES = 360
USERS = "rita:rita-pw,sam:sam-pw,vic:vic-pw"


def _images(folder: Path, n: int) -> list[Path]:
    """Small images of many kinds (noise, gradients, flat colours) so the models' features vary."""
    rng = np.random.default_rng(7)
    folder.mkdir(parents=True)
    paths = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            arr = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
        elif kind == 1:
            ramp = np.linspace(0, 1, 48)[None, :, None] * rng.uniform(0, 255, 3)[None, None, :]
            arr = np.broadcast_to(ramp + rng.uniform(0, 80), (48, 48, 3)).clip(0, 255).astype(np.uint8)
        else:
            arr = np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), (48, 48, 3)).copy()
        path = folder / f"img_{i:04d}.png"
        Image.fromarray(arr).save(path)
        paths.append(path)
    return paths


def _spread_model(path: Path, seed: int, images: list[Path], offset: float) -> Path:
    """A tiny random ViT whose nsfw logit margin is rescaled to spread its scores over (0, 1)."""
    import torch
    from transformers import ViTForImageClassification, ViTImageProcessor

    from labelq.testing import build_vit

    build_vit(path, seed=seed)
    model = ViTForImageClassification.from_pretrained(path).eval()
    proc = ViTImageProcessor.from_pretrained(path)
    with torch.inference_mode():
        batch = proc([Image.open(p).convert("RGB") for p in images], return_tensors="pt")
        logits = model(**batch).logits.numpy()
    margin = logits[:, 1] - logits[:, 0]
    a = 2.2 / float(margin.std())
    head = model.classifier
    with torch.no_grad():
        w = (head.weight[1] - head.weight[0]).clone()
        b = float(head.bias[1] - head.bias[0])
        head.weight[1] = a * w / 2
        head.weight[0] = -a * w / 2
        head.bias[1] = (a * (b - float(np.median(margin))) + offset) / 2
        head.bias[0] = -head.bias[1]
    model.save_pretrained(path)
    return path


class Browserless:
    """A signed-in HTTP session with the console (cookies, the CSRF token), over real loopback HTTP."""

    def __init__(self, base: str, name: str, password: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        page = self.get("/login")
        self.csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
        self.post("/login", {"username": name, "password": password, "csrf": self.csrf, "next": "/review"})
        self.csrf = re.search(r'data-csrf="([^"]+)"', self.get("/review")).group(1)  # type: ignore[union-attr]

    def get(self, path: str) -> str:
        with self.opener.open(self.base + path, timeout=30) as r:
            return str(r.read().decode())

    def post(self, path: str, form: dict[str, str], *, json_answer: bool = False) -> Any:
        req = urllib.request.Request(self.base + path, data=urllib.parse.urlencode(form).encode(), method="POST",
                                     headers={"accept": "application/json"} if json_answer else {})
        with self.opener.open(req, timeout=30) as r:
            body = r.read().decode()
        return json.loads(body) if json_answer else body


@dataclass
class World:
    url: str
    settings: Settings
    env: dict[str, str]
    policy: Path
    active: str
    candidate: str
    scores: dict[str, dict[str, float]]  # model → uri → nsfw score
    truth: dict[str, bool]
    decisions: int


def _nsfw(rec: Record) -> float:
    return next((float(t["score"]) for t in rec.top_k if t["label"] == LABEL), 0.0)


@pytest.fixture(scope="module")
def world(redis_db: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    import uvicorn

    from labelq.api import label
    from labelq.console import create_app
    from labelq.moderation import Moderator, load_policy
    from labelq.objects import Stores
    from labelq.reviews import Query, ReviewStore
    from labelq.services import open_services

    tmp = tmp_path_factory.mktemp("quality")
    images = _images(tmp / "root" / "photos", N_IMAGES)
    active = str(_spread_model(tmp / "model-a", 11, images, offset=-0.6))
    candidate = str(_spread_model(tmp / "model-b", 12, images, offset=-0.6))
    policy = tmp / "policy.toml"
    policy.write_text(f'version = "q-1"\n[[rule]]\nmodel = {json.dumps(active)}\nlabel = "{LABEL}"\n'
                      f'threshold = {THRESHOLD}\nactions = ["tag"]\n[[sample]]\nmodel = {json.dumps(active)}\n'
                      f'label = "{LABEL}"\nbands = [[0.0, {SPLIT}, {SAMPLE_RATE}], [{SPLIT}, {THRESHOLD}, {SAMPLE_RATE}]]\n')
    settings = load_settings(broker_url=redis_db.url, models=[active, candidate], local_root=tmp / "root",
                             policy=policy, console_users=USERS, console_viewers=["vic"], console_secret="q-secret",
                             console_thumb_dir=tmp / "thumbs")
    services = open_services(settings)
    records = label(str(tmp / "root" / "photos"), models=[active, candidate], job=JOB, settings=settings).to_list()
    assert len(records) == 2 * N_IMAGES and all(r.ok for r in records)
    services.write(records)
    scores = {m: {r.uri: _nsfw(r) for r in records if r.model == m} for m in (active, candidate)}
    a = np.array([scores[active][u] for u in sorted(scores[active])])
    assert a.min() < 0.1 and a.max() > 0.9 and 0.1 < (a >= THRESHOLD).mean() < 0.6, np.percentile(a, [0, 25, 50, 75, 100])

    # the hidden truth: correlated with the active model's score, plus label noise
    rng = np.random.default_rng(2026)
    uris = sorted(scores[active])
    truth = {u: bool(rng.random() < 0.04 + 0.9 * scores[active][u] ** 1.3) for u in uris}

    # the real moderator applies the policy file: its rule tags (and queues) what scores at or above the threshold,
    # its [[sample]] draws about SAMPLE_RATE of the objects below it (the hash rule) as audit samples for review
    mine = [r for r in records if r.model == active]
    acts = Moderator(load_policy(policy), redis=services.redis, stores=Stores(settings)).apply(mine)
    assert {(x.action, x.result) for x in acts} == {("tag", "ok"), ("sample", "ok")}
    tagged = {x.uri for x in acts if x.action == "tag"}
    sampled = {x.uri: x for x in acts if x.action == "sample"}
    assert tagged == {r.uri for r in mine if _nsfw(r) >= THRESHOLD}
    assert all(x.score < THRESHOLD and x.sample_rate == SAMPLE_RATE for x in sampled.values())
    n_below = sum(1 for r in mine if _nsfw(r) < THRESHOLD)
    assert 0.5 * n_below < len(sampled) < 0.7 * n_below, (len(sampled), n_below)  # enough for each stratum
    assert ReviewStore(services.redis).query(Query(state="pending", model=active, label=LABEL)).total == len(acts)

    app = create_app(settings, services)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host=HOST, port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name="console", daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=30, what="console listening")
    base = f"http://{HOST}:{port}"
    try:
        # two reviewers take turns with a page of the queue each (opening it claims it) and decide by the truth
        reviewers = [Browserless(base, "rita", "rita-pw"), Browserless(base, "sam", "sam-pw")]
        decided = 0
        for turn in range(100):
            who = reviewers[turn % 2]
            page = who.get("/review?" + urllib.parse.urlencode({"model": active, "label": LABEL}))
            items = re.findall(r'data-id="([0-9a-f]+)" data-version="(\d+)" data-uri="([^"]+)"', page)
            if not items:
                break
            for n, (iid, version, uri) in enumerate(items):
                uri = uri.replace("&amp;", "&")
                if truth[uri]:
                    form = {"decision": "confirm"} if n % 3 else {"decision": "label", "human_label": LABEL}
                else:
                    form = {"decision": "release"} if n % 2 else {"decision": "label", "human_label": "normal"}
                got = who.post("/review/decide", {**form, "id": iid, "version": version, "csrf": who.csrf},
                               json_answer=True)
                assert got["ok"], got
                decided += 1
        assert decided == len(sampled) + len(tagged)
        env = labelq_env(broker=redis_db.url, models=[active, candidate], local_root=tmp / "root")
        yield World(base, settings, env, policy, active, candidate, scores, truth, decided)
    finally:
        server.should_exit = True
        thread.join(15)
        services.close()


def _true(world: World, t: float) -> tuple[float, float]:
    s = world.scores[world.active]
    above = {u for u, v in s.items() if v >= t}
    positives = {u for u, y in world.truth.items() if y}
    return len(above & positives) / len(above), len(above & positives) / len(positives)


CHECKED = (0.3, 0.5, THRESHOLD, 0.8)


def test_the_report_covers_the_true_precision_and_recall(world: World, tmp_path: Path) -> None:
    items = tmp_path / "evidence.parquet"
    got = cli(["moderate", "report", "--model", world.active, "--label", LABEL, "--job", JOB, "--policy",
               str(world.policy), "--precision", "0.8", "--json", "--items", str(items)], world.env).check()
    report = json.loads(got.stdout)
    assert report["records"] == N_IMAGES and report["reviewed"] == world.decisions
    assert [s["lo"] for s in report["strata"]] == [0.0, SPLIT, THRESHOLD]  # the sample bands' edges, the rule's
    assert report["strata_without_reviews"] == []
    assert set(report["review_hours"]) == {"rita", "sam"}
    points = {p["threshold"]: p for p in report["points"]}
    for t in CHECKED:
        precision, recall = _true(world, t)
        p = points[t]
        assert p["precision_lo"] <= precision <= p["precision_hi"], (t, precision, p)
        assert p["recall_lo"] <= recall <= p["recall_hi"], (t, recall, p)
        assert p["precision_hi"] - p["precision_lo"] < 0.4 and p["recall_hi"] - p["recall_lo"] < 0.4, p
    s = report["suggestion"]
    if s["threshold"] is not None:  # the suggested threshold's precision really is at least near the target
        assert points[s["threshold"]]["precision_lo"] >= 0.8
        assert all(points[t]["precision"] is None or points[t]["precision_lo"] < 0.8
                   for t in points if t < s["threshold"])
    else:
        assert s["reason"].startswith("too little review to tell")

    import pyarrow.parquet as pq

    rows = pq.read_table(items).to_pylist()
    assert len(rows) == world.decisions
    assert {r["uri"]: r["truth"] for r in rows} == {u: world.truth[u] for u in (r["uri"] for r in rows)}
    for lo, hi in ((0.0, SPLIT), (SPLIT, THRESHOLD)):  # each sampled item stands for its band's share
        n_band = sum(1 for v in world.scores[world.active].values() if lo <= v < hi)
        band = [r for r in rows if lo <= r["score"] < hi]
        assert band and all(r["weight"] == pytest.approx(n_band / len(band)) for r in band)
        assert {r["sampled_rate"] for r in band} == {SAMPLE_RATE}  # the rate the policy's [[sample]] drew them at
    assert all(r["weight"] == pytest.approx(1.0) for r in rows if r["score"] >= THRESHOLD)

    # the console's JSON says the same, and a viewer may read it
    viewer = Browserless(world.url, "vic", "vic-pw")
    api = json.loads(viewer.get("/api/quality?" + urllib.parse.urlencode(
        {"model": world.active, "label": LABEL, "job": JOB, "precision": "0.8"})))
    assert api["points"] == report["points"] and api["suggestion"] == report["suggestion"]


def test_compare_finds_exactly_the_flips(world: World, tmp_path: Path) -> None:
    out = tmp_path / "flips.jsonl"
    got = cli(["moderate", "compare", "--model", world.active, "--candidate", world.candidate, "--label", LABEL,
               "--job", JOB, "--policy", str(world.policy), "--json", "--output", str(out)], world.env).check()
    c = json.loads(got.stdout)
    a, b = world.scores[world.active], world.scores[world.candidate]
    flips = {u for u in a if (a[u] >= THRESHOLD) != (b[u] >= THRESHOLD)}
    assert flips, "the two models should disagree somewhere"
    assert {f["uri"] for f in c["flips"]} == flips
    assert c["both"] == sum(1 for u in a if a[u] >= THRESHOLD and b[u] >= THRESHOLD)
    assert c["candidate_only"] == sum(1 for u in a if a[u] < THRESHOLD <= b[u])
    assert c["agreement"] == pytest.approx(1 - len(flips) / N_IMAGES)
    deltas = [abs(f["delta"]) for f in c["flips"]]
    assert deltas == sorted(deltas, reverse=True)
    assert [json.loads(line)["uri"] for line in out.read_text().splitlines()] == [f["uri"] for f in c["flips"]]
    assert c["reviewed"] == world.decisions and c["active"]["precision"] is not None
    precision, _ = _true(world, THRESHOLD)
    assert c["active"]["precision_lo"] <= precision <= c["active"]["precision_hi"]
    bad = cli(["moderate", "compare", "--model", world.active, "--candidate", "nobody", "--label", LABEL, "--job",
               JOB, "--threshold", "0.5"], world.env)
    assert bad.returncode != 0 and "no ok records of candidate nobody" in bad.stderr


def test_the_quality_page_in_chromium(world: World, browser: Any) -> None:  # noqa: F811
    from playwright.sync_api import expect

    ctx = browser.new_context(base_url=world.url, viewport={"width": 1280, "height": 900}, locale="en-US")
    page = ctx.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto("/quality")
    page.fill("input[name=username]", "rita")
    page.fill("input[name=password]", "rita-pw")
    page.click("button[type=submit]")
    page.select_option("#q-model", world.active)
    page.select_option("#q-label", LABEL)
    page.fill("input[name=precision]", "0.8")
    page.click("#quality-form button[type=submit]")
    expect(page.locator("svg#quality-chart")).to_be_visible()
    expect(page.locator("svg#quality-chart polyline.line-precision")).to_have_count(1)
    expect(page.locator("svg#quality-chart polygon.band-recall")).to_have_count(1)
    expect(page.locator("svg#quality-chart line.mark-policy")).to_have_count(1)
    api = json.loads(ctx.request.get("/api/quality?" + urllib.parse.urlencode(
        {"model": world.active, "label": LABEL, "precision": "0.8"})).text())
    s = api["suggestion"]
    if s["threshold"] is not None:
        expect(page.locator("#suggested-threshold")).to_have_text(f"{s['threshold']}")
        expect(page.locator("svg#quality-chart line.mark-suggested")).to_have_count(1)
    else:
        expect(page.locator("#suggestion")).to_contain_text("too little review to tell")
    expect(page.locator("#quality-table tr.policy td").first).to_have_text(str(THRESHOLD))
    page.screenshot(path=str(Path(__file__).resolve().parents[2] / "docs" / "console-quality.png"), full_page=True)

    page.goto("/quality/compare?" + urllib.parse.urlencode(
        {"model": world.active, "candidate": world.candidate, "label": LABEL, "job": JOB}))
    a, b = world.scores[world.active], world.scores[world.candidate]
    flips = sum(1 for u in a if (a[u] >= THRESHOLD) != (b[u] >= THRESHOLD))
    expect(page.locator("#compare-counts [data-field=pairs]")).to_have_text(str(N_IMAGES))
    expect(page.locator("#flips figure.flip")).to_have_count(min(flips, 48))
    img = page.locator("#flips figure.flip img").first
    img.scroll_into_view_if_needed()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img.element_handle(), timeout=15000)
    assert not errors, errors
    ctx.close()
    assert Path(CHROMIUM).exists()
