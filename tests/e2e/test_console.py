"""`labelq console` in a real browser: Debian's Chromium driven by Playwright, over real Redis and moto's S3.

A real worker (``labelq worker --devices cpu``, the tiny ViT) labels a small bucket through
``labelq enqueue --wait``; the real moderator then quarantines (tags and moves) three objects
with awkward keys (``<script>``, quotes, unicode). The console runs in this process (uvicorn in
a thread) on a free port, over the same services the CLI opens. The browser signs in, opens the
job, filters by label, opens a record, releases one item, confirms another, labels a third and
finds the decisions in the audit trail; the test then checks the bucket and Redis did what the
pages said. Each page is saved to docs/console-*.png, so the screenshots stay current.

Chromium comes from the OS packages (``apt-get install chromium``; scripts/test.sh does it):
Playwright drives /usr/bin/chromium and never downloads a browser.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from io import BytesIO
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from labelq.config import Settings, load_settings
from labelq.errors import UsageError
from labelq.objects import Stores, s3_uri
from labelq.records import utcnow
from labelq.testing import CORPUS_MAX_PIXELS
from tests.e2e.conftest import RedisDB, put_objects
from tests.support.procs import HOST, free_port, wait_until
from tests.support.workers import Procs, cli, labelq_env

pytestmark = pytest.mark.slow

DOCS = Path(__file__).resolve().parents[2] / "docs"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
JOB = "photos-2026"
TOKEN = "e2e-token-" + "x" * 24
USERS = "alice:alice-pw,vera:vera-pw,bob:bob-pw,carol:carol-pw,dave:dave-pw,erin:erin-pw"  # vera is a viewer
ROLES = "alice:admin,carol:admin"  # the others reviewers
SCRIPT_KEY = "photos/<script>alert('key')</script>.jpg"
QUOTE_KEY = "photos/say \"cheese\" & 'smile'.jpg"
UNICODE_KEY = "photos/ünïcödé 猫 ☃.jpg"
AWKWARD = (SCRIPT_KEY, QUOTE_KEY, UNICODE_KEY)
HUMAN_LABEL = "<script>alert('label')</script> cat 猫"
BROKEN = {"photos/empty.jpg": "not_an_image", "photos/truncated.jpg": "corrupt"}
POLICY_VERSION = "e2e-console-1"


@dataclass
class Site:
    url: str
    settings: Settings
    services: Any
    app: Any
    bucket: str
    s3: Any
    model: str
    records: list[Any]
    quarantined: dict[str, str]  # original uri → quarantine uri


def _move_to_quarantine(settings: Settings, services: Any, records: list[Any]) -> dict[str, str]:
    """The real moderator under the policy file of settings: tag and move these records' objects."""
    from labelq.moderation import Moderator, load_policy

    assert settings.policy is not None
    policy = load_policy(settings.policy)
    actions = Moderator(policy, redis=services.redis, stores=Stores(settings)).apply(records)
    assert {(a.action, a.result) for a in actions} == {("tag", "ok"), ("move", "ok")}, actions
    return {a.uri: a.detail for a in actions if a.action == "move"}


@pytest.fixture(scope="module")
def site(redis_db: RedisDB, module_bucket: str, s3_client: Any, s3_server: Any, tiny_vit: Path,
         tiny_timm: Path, module_procs: Procs, photo_bytes: list[bytes], corpus_bytes: dict[str, bytes],
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    import uvicorn

    from labelq.console import create_app
    from labelq.services import open_services

    objects = {f"photos/p_{i:02d}.jpg": photo_bytes[i] for i in range(14)}
    objects.update({key: photo_bytes[20 + i] for i, key in enumerate(AWKWARD)})
    objects.update({key: corpus_bytes[key.split("/")[1]] for key in BROKEN})
    put_objects(s3_client, module_bucket, objects)
    models = [str(tiny_vit), str(tiny_timm)]  # the ViT calls everything nsfw; timm spreads over many labels
    env = labelq_env(broker=redis_db.url, models=models, s3=s3_server.endpoint_url, max_pixels=CORPUS_MAX_PIXELS)
    module_procs.worker(env)
    cli(["enqueue", f"s3://{module_bucket}/photos", "--job", JOB, "--wait"], env, timeout=240).check()

    folder = tmp_path_factory.mktemp("console")
    (folder / "root").mkdir()
    policy = folder / "policy.toml"  # a rule every score of the ViT fires
    policy.write_text(f'version = "{POLICY_VERSION}"\nquarantine_prefix = "quarantine/"\n[[rule]]\n'
                      f'model = {json.dumps(str(tiny_vit))}\nlabel = "nsfw"\nthreshold = 0.0\nactions = ["tag", "move"]\n')
    settings = load_settings(
        broker_url=redis_db.url, s3_endpoint_url=s3_server.endpoint_url, models=models, policy=policy,
        max_pixels=CORPUS_MAX_PIXELS, local_root=folder / "root", console_users=USERS, console_viewers=["vera"],
        console_roles=ROLES,
        console_token=TOKEN, console_secret="e2e-secret", console_thumb_dir=folder / "thumbs",
    )
    services = open_services(settings)
    records = list(services.job_records(JOB))
    assert len(records) == 2 * len(objects), [r.uri for r in records]
    awkward = [r for r in records if r.model == str(tiny_vit) and r.uri in {s3_uri(module_bucket, k) for k in AWKWARD}]
    assert len(awkward) == 3 and all(r.ok for r in awkward)
    quarantined = _move_to_quarantine(settings, services, awkward)

    app = create_app(settings, services)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host=HOST, port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name="console", daemon=True)
    thread.start()
    wait_until(lambda: server.started, timeout=30, what="console listening")
    try:
        yield Site(f"http://{HOST}:{port}", settings, services, app, module_bucket, s3_client, str(tiny_vit),
                   records, quarantined)
    finally:
        server.should_exit = True
        thread.join(15)
        services.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium under Playwright (never a downloaded browser)."""
    from playwright.sync_api import sync_playwright

    if not os.path.exists(CHROMIUM):
        message = "chromium is not installed: apt-get install chromium (scripts/test.sh does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield b
        finally:
            b.close()


def _context(browser: Any, site: Site) -> Any:
    return browser.new_context(base_url=site.url, viewport={"width": 1280, "height": 860}, locale="en-US")


def _watch(page: Any) -> dict[str, list[str]]:
    """Dialogs (a script that ran would open one) and console errors (CSP violations land there)."""
    seen: dict[str, list[str]] = {"dialogs": [], "errors": [], "failed": []}

    def dialog(d: Any) -> None:
        seen["dialogs"].append(d.message)
        d.dismiss()

    page.on("dialog", dialog)
    page.on("console", lambda m: seen["errors"].append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
    page.on("response", lambda r: seen["failed"].append(f"{r.status} {r.url}") if r.status >= 400 else None)
    return seen


def _shot(page: Any, name: str) -> None:
    page.screenshot(path=str(DOCS / f"console-{name}.png"), full_page=True)


def _sign_in(page: Any, name: str, password: str, start: str = "/jobs") -> None:
    page.goto(start)
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    page.wait_for_load_state()


def _csrf(page: Any) -> str:
    return str(page.locator("input[name=csrf]").first.get_attribute("value"))


def _item(page: Any, key: str) -> Any:
    return page.locator("li.item").filter(has=page.locator("p.uri", has_text=key.split("/", 1)[1]))


# ------------------------------------------------------------------ the reviewer's day, in a browser


def test_sign_in_open_a_job_filter_by_label_review_and_audit(site: Site, browser: Any) -> None:
    from playwright.sync_api import expect

    ctx = _context(browser, site)
    page = ctx.new_page()
    seen = _watch(page)

    # anonymous: sent to sign in; a wrong password is refused
    page.goto("/jobs")
    assert page.url.startswith(site.url + "/login?next=")
    _shot(page, "login")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", "not-her-password")
    page.click("button[type=submit]")
    expect(page.locator("p.error")).to_have_text("wrong name or password")
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", "alice-pw")
    page.click("button[type=submit]")
    expect(page).to_have_url(site.url + "/jobs")
    expect(page.locator(".who .user")).to_have_text("alice")

    # jobs: the job with its live figures; the worker answers
    row = page.locator("tr[data-job]").filter(has_text=JOB)
    expect(row).to_have_count(1)
    n = len(site.records) // 2  # objects
    expect(row.locator("td").nth(3)).to_have_text(f"{n} / {n}")
    expect(row.locator(".state")).to_have_text("done")
    expect(page.locator(".facts")).to_contain_text("workers answering: 1")
    _shot(page, "jobs")

    # one job: counts, a label chart per model, the failures by kind with their messages
    row.get_by_role("link", name=JOB).click()
    expect(page.locator("h1")).to_contain_text(JOB)
    ok = sum(1 for r in site.records if r.ok)
    expect(page.locator("[data-field=done]")).to_have_text(str(n))
    expect(page.locator("[data-field=ok]")).to_have_text(str(ok))
    expect(page.locator("[data-field=error]")).to_have_text(str(len(site.records) - ok))
    expect(page.locator("[data-field=workers]")).to_have_text("1")
    timm = next(m for m in site.settings.models if m != site.model)
    charts = page.locator("figure.chart")
    expect(charts).to_have_count(2)
    for i, model in enumerate(site.settings.models):  # the bars of each model: its top 20 labels, counted
        counts = Counter(r.label for r in site.records if r.ok and r.model == model)
        expect(charts.nth(i).locator("figcaption")).to_contain_text(model)
        top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:20]
        expect(charts.nth(i).locator("text.bar-n")).to_have_text([str(c) for _, c in top])
        expect(charts.nth(i).locator("a.bar-link title")).to_have_text([f"{lbl}: {c}" for lbl, c in top])
    for key, kind in BROKEN.items():
        box = page.locator(f"details[data-kind={kind}]")
        expect(box).to_contain_text(key.split("/")[1])
        message = next(r.error for r in site.records if r.uri == s3_uri(site.bucket, key))
        expect(box).to_contain_text(" ".join(message.split())[:60])
    expect(page.locator("#retry")).to_have_count(0)  # nothing retryable: no retry button
    _shot(page, "job")

    # browse: filter timm's records by its most common label; every card shows it, thumbnails load
    label, count = Counter(r.label for r in site.records if r.ok and r.model == timm).most_common(1)[0]
    assert count < ok // 2  # the filter leaves some out
    charts.nth(1).locator("figcaption a", has_text="browse").click()
    page.select_option("#label-filter", label)
    page.click("#filters button[type=submit]")
    cards = page.locator(".grid figure.card")
    expect(cards).to_have_count(min(count, 48))
    assert set(cards.locator("b.label").all_inner_texts()) == {label}
    img = cards.first.locator("img")
    img.scroll_into_view_if_needed()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img.element_handle(), timeout=15000)
    _shot(page, "browse")

    # a record: top-k, etag, worker, time
    uri = cards.first.get_attribute("data-uri")
    from urllib.parse import unquote

    shown = cards.first.locator(".uri").inner_text()
    assert unquote(str(uri)).endswith("/" + shown)  # the whole file name (decoded), never cut
    rec = next(r for r in site.records if r.uri == uri and r.model == timm)
    cards.first.locator("a").click()
    fields = page.locator("#record-fields")
    expect(fields).to_contain_text(rec.etag)
    expect(fields).to_contain_text(rec.worker)
    expect(fields).to_contain_text(rec.processed_at)
    assert rec.model_revision
    expect(fields).to_contain_text(rec.model_revision)
    expect(page.locator("table.topk tbody tr")).to_have_count(len(rec.top_k))
    _shot(page, "record")

    # the three quarantined objects show (from their quarantine copy) with a badge
    page.goto(f"/jobs/browse?{urlencode({'job': JOB, 'model': site.model})}")
    expect(page.locator(".grid figure.card")).to_have_count(sum(1 for r in site.records if r.ok and r.model == site.model))
    expect(page.locator(".grid .badge")).to_have_count(3)
    # and by score range
    vit = [r.score for r in site.records if r.ok and r.model == site.model]
    for lo, hi in ((0.5, 0.8), (0.8, 1.0), (0.52, 0.53)):
        page.goto(f"/jobs/browse?{urlencode({'job': JOB, 'model': site.model, 'lo': lo, 'hi': hi})}")
        expect(page.locator(".grid figure.card")).to_have_count(sum(1 for s in vit if lo <= s <= hi))

    # review: three items, newest first, with the rule that fired; keys shown as text
    page.goto("/review")
    items = page.locator("li.item")
    expect(items).to_have_count(3)
    expect(page.locator("li.item p.uri", has_text="<script>alert('key')</script>.jpg")).to_have_count(1)
    expect(page.locator("li.item p.uri", has_text='say "cheese" & \'smile\'')).to_have_count(1)
    expect(page.locator("li.item p.uri", has_text="ünïcödé 猫 ☃")).to_have_count(1)
    expect(items.first.locator(".rule")).to_contain_text(f"{site.model}: nsfw ≥ 0.0")
    expect(items.first).to_contain_text(POLICY_VERSION)
    _shot(page, "review")

    _item(page, SCRIPT_KEY).locator("button.release").click()
    expect(page.locator("p.flash")).to_contain_text("release")
    _item(page, QUOTE_KEY).locator("button.confirm").click()
    expect(page.locator("p.flash")).to_contain_text("confirm")
    _item(page, UNICODE_KEY).locator("input[name=human_label]").fill(HUMAN_LABEL)
    _item(page, UNICODE_KEY).locator("button.set-label").click()
    expect(page.locator("li.item")).to_have_count(0)  # nothing pending
    page.goto("/review?state=decided")
    expect(page.locator("li.item .reviewer")).to_have_text(["alice"] * 3)
    expect(_item(page, UNICODE_KEY).locator(".decision")).to_contain_text(HUMAN_LABEL)
    _shot(page, "review-decided")

    # the audit trail: each decision with the reviewer's name and time
    page.goto("/audit")
    for action in ("review:release", "review:confirm", "review:label"):
        row = page.locator(f"tr[data-action='{action}']")
        expect(row).to_have_count(1)
        expect(row.locator("td.reviewer")).to_have_text("alice")
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", row.locator("td").first.inner_text())
    expect(page.locator("tr[data-action='review:label']")).to_contain_text(HUMAN_LABEL)
    _shot(page, "audit")

    # decisions export as JSONL for retraining
    export = ctx.request.get("/review/export.jsonl")
    assert export.ok and export.headers["content-type"].startswith("application/x-ndjson")
    rows = {r["uri"]: r for r in map(json.loads, export.text().splitlines())}
    by_key = {k: rows[s3_uri(site.bucket, k)] for k in AWKWARD}
    assert [by_key[k]["decision"] for k in AWKWARD] == ["release", "confirm", "label"]
    assert by_key[UNICODE_KEY]["human_label"] == HUMAN_LABEL
    assert by_key[QUOTE_KEY]["human_label"] == by_key[QUOTE_KEY]["label"] == "nsfw"
    assert by_key[SCRIPT_KEY]["human_label"] is None
    assert all(r["reviewer"] == "alice" and 0 <= r["score"] <= 1 and r["model"] == site.model for r in rows.values())

    # no key or label ever ran as script, and the CSP was never violated
    assert seen["dialogs"] == [], seen
    assert seen["failed"] == [f"401 {site.url}/login"], seen  # the wrong password, nothing else
    assert not [e for e in seen["errors"] if "status of 401" not in e], seen
    ctx.close()

    # the bucket: released object back at its key, tagged as reviewed; the confirmed one stays quarantined
    _check_storage(site)


def _check_storage(site: Site) -> None:
    from labelq.moderation import Moderator, Policy, Rule
    from labelq.objects import split_s3

    s3, bucket = site.s3, site.bucket
    names = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert SCRIPT_KEY in names and "quarantine/" + SCRIPT_KEY not in names
    tags = {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key=SCRIPT_KEY)["TagSet"]}
    assert tags["labelq-review"] == "released" and tags["labelq-reviewer"] == "alice"
    assert not {"labelq-label", "labelq-score", "labelq-policy"} & set(tags)  # the policy's tags went with it
    assert QUOTE_KEY not in names and "quarantine/" + QUOTE_KEY in names
    tags = _tags(s3, bucket, "quarantine/" + QUOTE_KEY)  # confirmed: tagged where it is, the policy's tags kept
    assert tags["labelq-review"] == "confirmed" and tags["labelq-label"] == "nsfw"
    assert split_s3(site.quarantined[s3_uri(bucket, QUOTE_KEY)])[1] == "quarantine/" + QUOTE_KEY

    # never moderated again for that version: relabelled (same etag, new time), the policy leaves it alone;
    # an object nobody released is still acted on
    released = next(r for r in site.records if r.uri == s3_uri(bucket, SCRIPT_KEY))
    other = next(r for r in site.records if r.ok and r.model == site.model and r.uri not in site.quarantined)
    policy = Policy("e2e-console-2", (Rule(site.model, "nsfw", 0.0, ("tag", "move")),))
    moderator = Moderator(policy, redis=site.services.redis, stores=Stores(site.settings))
    assert moderator.plan([replace(released, processed_at=utcnow())]) == []
    assert [a.action for a in moderator.plan([other])] == ["tag", "move"]


# ------------------------------------------------------------------ security


def _signed_in(browser: Any, site: Site, name: str, password: str) -> tuple[Any, Any]:
    ctx = _context(browser, site)
    page = ctx.new_page()
    _sign_in(page, name, password)
    assert page.url == site.url + "/jobs", page.url
    return ctx, page


def test_nothing_without_signing_in_and_every_change_needs_the_csrf_token(site: Site, browser: Any) -> None:
    anon = browser.new_context(base_url=site.url).request
    for path in ("/jobs", "/review", "/audit", "/review/export.jsonl", f"/jobs/view?job={JOB}"):
        r = anon.get(path, max_redirects=0)
        assert r.status == 303 and r.headers["location"].startswith("/login?next="), (path, r.status)
    assert anon.get(f"/api/job?job={JOB}").status == 401
    assert anon.get("/thumb?u=s3://b/k&e=&s=x").status == 401
    assert anon.post("/review/decide", form={"decision": "release"}).status == 401
    login = anon.get("/login")
    csp = login.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert login.headers["x-frame-options"] == "DENY" and login.headers["x-content-type-options"] == "nosniff"
    assert "httponly" in login.headers["set-cookie"].lower() and "samesite=strict" in login.headers["set-cookie"].lower()
    assert anon.post("/login", form={"username": "alice", "password": "alice-pw"}).status == 403  # no CSRF token

    ctx, page = _signed_in(browser, site, "alice", "alice-pw")
    req = ctx.request
    item = {"uri": s3_uri(site.bucket, "photos/p_00.jpg"), "etag": "", "decision": "confirm"}
    assert req.post("/review/decide", form=item).status == 403  # no token
    assert req.post("/review/decide", form={**item, "csrf": "forged"}).status == 403
    assert req.post("/jobs/retry", form={"job": JOB}).status == 403
    assert req.post("/logout", form={}).status == 403
    # with the token, a retry goes through (nothing retryable here: none re-enqueued)
    page.goto(f"/jobs/view?job={JOB}")
    r = req.post("/jobs/retry", form={"job": JOB, "csrf": _csrf(page)}, max_redirects=0)
    assert r.status == 303
    page.goto(f"/jobs/view?job={JOB}")
    assert "re-enqueued 0 objects" in page.locator("p.flash").inner_text()
    # an open redirect after signing in is refused
    ctx.close()
    ctx = _context(browser, site)
    page = ctx.new_page()
    _sign_in(page, "alice", "alice-pw", start="/login?next=//evil.example/")
    assert page.url == site.url + "/jobs"
    ctx.close()


def test_viewers_only_look(site: Site, browser: Any) -> None:
    ctx, page = _signed_in(browser, site, "vera", "vera-pw")
    assert page.locator(".who .badge").inner_text() == "read-only"
    page.goto("/review?state=all")
    assert page.locator("li.item").count() >= 1 and page.locator("form.decide").count() == 0
    page.goto(f"/jobs/view?job={JOB}")
    csrf = _csrf(page)  # the sign-out form's: a valid token, still no permission
    before = site.services.redis.xlen("labelq:audit")
    item = {"uri": s3_uri(site.bucket, UNICODE_KEY), "etag": "", "decision": "release", "csrf": csrf}
    assert ctx.request.post("/review/decide", form=item).status == 403
    assert ctx.request.post("/jobs/retry", form={"job": JOB, "csrf": csrf}).status == 403
    assert site.services.redis.xlen("labelq:audit") == before
    ctx.close()


def test_a_bearer_token_reads_the_api(site: Site, browser: Any) -> None:
    req = browser.new_context(base_url=site.url).request
    r = req.get(f"/api/job?job={JOB}", headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status == 200
    data = r.json()
    n = len(site.records) // 2
    assert (data["state"], data["done"], data["total"]) == ("done", n, n)
    assert data["errors"] == {kind: 2 for kind in BROKEN.values()}  # one record per model
    assert req.get(f"/api/job?job={JOB}", headers={"Authorization": "Bearer wrong"}).status == 401


def test_thumbnails_are_bounded_cached_signed_and_from_the_store_only(site: Site, browser: Any) -> None:
    from PIL import Image

    console = site.app.state.console
    ctx, page = _signed_in(browser, site, "alice", "alice-pw")
    page.goto(f"/jobs/browse?job={JOB}")
    src = str(page.locator(".grid img").first.get_attribute("src"))
    assert src.startswith("/thumb?") and "amazonaws" not in src and site.settings.s3_endpoint_url not in src
    r = ctx.request.get(src)
    assert r.status == 200 and r.headers["content-type"] == "image/jpeg"
    with Image.open(BytesIO(r.body())) as im:
        assert max(im.size) <= site.settings.console_thumb_px
    assert list(Path(site.settings.console_thumb_dir).glob("*.jpg"))  # cached on disk

    assert ctx.request.get(re.sub(r"s=[0-9a-f]+", "s=" + "0" * 32, src)).status == 403  # not one we signed
    # even a URL the console signed never reaches outside the store's root or its schemes
    root = Path(site.settings.local_root)
    (root.parent / "secret.jpg").write_bytes(b"\xff\xd8secret")
    for uri in ("file:///etc/passwd", f"file://{root}/../secret.jpg", f"file://{root.parent}/secret.jpg",
                "http://169.254.169.254/latest/meta-data"):
        r = ctx.request.get(console.signer.url(uri, ""))
        assert r.status == 403, (uri, r.status)
    ctx.close()


def test_the_console_admits_nobody_anonymously(redis_url: str) -> None:
    from labelq.console import create_app

    with pytest.raises(UsageError, match="LABELQ_CONSOLE_USERS"):
        create_app(load_settings(broker_url=redis_url), services=object())
    env = labelq_env(broker=redis_url)
    result = cli(["console", "--port", str(free_port())], env, timeout=60)
    assert result.returncode == 2 and "admits nobody anonymously" in result.stderr, result.stderr


def test_a_running_job_updates_live(site: Site, browser: Any) -> None:
    from playwright.sync_api import expect

    book = site.services.book
    book.open("live-uploads", source=f"s3://{site.bucket}/live", models=[site.model])
    ctx, page = _signed_in(browser, site, "alice", "alice-pw")
    page.goto("/jobs/view?job=live-uploads")
    expect(page.locator("[data-field=state]")).to_have_text("listing")
    book.received("live-uploads", 7)  # what `labelq listen` does as uploads arrive: the job runs
    with page.expect_response(lambda r: "/api/job?job=live-uploads" in r.url, timeout=10000) as answer:
        pass
    assert answer.value.ok and answer.value.json()["state"] == "running"
    expect(page.locator("[data-field=state]")).to_have_text("running")  # the page changed without a reload
    # the label chart follows the records as they are written
    from labelq.records import Record

    expect(page.locator("#charts figure.chart")).to_have_count(0)
    site.services.records.write([Record(f"s3://{site.bucket}/live/{i}.jpg", f"e{i}", site.model, label="nsfw",
                                        score=0.9, job="live-uploads", worker="e2e") for i in range(3)])
    expect(page.locator("#charts figure.chart text.bar-n")).to_have_text(["3"], timeout=20000)
    assert page.url == site.url + "/jobs/view?job=live-uploads"
    # and the jobs list shows a new job without a reload
    page.goto("/jobs")
    expect(page.locator("tr[data-job='live-later']")).to_have_count(0)
    book.open("live-later", source=f"s3://{site.bucket}/later", models=[site.model])
    expect(page.locator("tr[data-job='live-later']")).to_have_count(1, timeout=10000)
    assert page.url == site.url + "/jobs"
    ctx.close()


def test_the_operator_view(site: Site, browser: Any, queues: dict[str, list[Any]]) -> None:
    from playwright.sync_api import expect

    ctx, page = _signed_in(browser, site, "alice", "alice-pw")
    page.goto("/ops")
    rows = page.locator("#ops-workers tbody tr")
    expect(rows).to_have_count(1)  # the module's worker
    worker = str(rows.first.get_attribute("data-worker"))
    assert int(rows.first.locator("[data-field=processed]").inner_text()) >= 1  # it ran the job's chunks
    assert rows.first.locator("[data-field=uptime]").inner_text() not in ("", "—")
    mine = [r for r in site.records if r.worker == worker]
    assert int(rows.first.locator("[data-field=ok]").inner_text()) == sum(1 for r in mine if r.ok) > 0
    assert int(rows.first.locator("[data-field=failed]").inner_text()) == sum(1 for r in mine if not r.ok) == 4
    expect(page.locator("#ops-queues [data-field=messages]")).to_have_text(["0", "0"])
    counts = site.app.state.console.reviews.counts()
    expect(page.locator("#ops-backlog [data-field=decided]")).to_have_text(str(counts["decided"]))
    alice = page.locator("#ops-reviewers tr[data-reviewer=alice]")
    before = int(alice.locator("[data-field=decided]").inner_text())
    assert before >= 3
    # a decision elsewhere shows up here without a reload
    from labelq.reviews import Query

    store = site.app.state.console.reviews
    from labelq.console import review as console_review

    (item,) = store.query(Query(state="pending", job="q-ops")).items
    console_review.decide(site.services.redis, site.app.state.console.stores, store, item.id, item.version,
                          "confirm", "alice")
    expect(alice.locator("[data-field=decided]")).to_have_text(str(before + 1), timeout=15000)
    assert page.url == site.url + "/ops"
    ctx.close()


# ------------------------------------------------------------------ the queue as a work queue


QUEUES = {"q-paging": 60, "q-two": 5, "q-keys": 20, "q-bulk": 6, "q-undo": 2, "q-ops": 1}
POLICY_TAGS = {"labelq-label", "labelq-score", "labelq-policy"}


def _tags(s3: Any, bucket: str, key: str) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in s3.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]}


@pytest.fixture(scope="module")
def queues(site: Site, photo_bytes: list[bytes]) -> dict[str, list[Any]]:
    """Jobs of records written straight to the record store (top-k nsfw, normal), their objects quarantined by
    the real moderator: job → records, oldest first."""
    from labelq.moderation import Moderator, load_policy
    from labelq.records import Record

    objects, n = {}, 0
    for job, count in QUEUES.items():
        for i in range(count):
            objects[f"{job}/p_{i:03d}.jpg"] = photo_bytes[100 + n]
            n += 1
    etags = put_objects(site.s3, site.bucket, objects)
    out: dict[str, list[Any]] = {}
    for job in QUEUES:
        recs = []
        for uri, etag in sorted((u, e) for u, e in etags.items() if u.split("/")[3] == job):
            score = 0.5 + (int(uri[-7:-4]) % 50) / 100
            recs.append(Record(uri, etag, site.model, label="nsfw", score=score, job=job, worker="e2e",
                               top_k=[{"label": "nsfw", "score": score}, {"label": "normal", "score": 1 - score}]))
        site.services.records.write(recs)
        assert site.settings.policy is not None
        done = Moderator(load_policy(site.settings.policy), redis=site.services.redis,
                         stores=Stores(site.settings)).apply(recs)
        assert {a.result for a in done} == {"ok"} and len(done) == 2 * len(recs)
        out[job] = recs
    return out


def _ids(page: Any) -> list[str]:
    return [str(x) for x in page.locator("li.item").evaluate_all("els => els.map(e => e.dataset.id)")]


def _key(uri: str) -> str:
    return uri.split("/", 3)[3]


def test_paging_through_a_queue_larger_than_a_page(site: Site, browser: Any, queues: dict[str, list[Any]]) -> None:
    from playwright.sync_api import expect

    ctx, page = _signed_in(browser, site, "carol", "carol-pw")
    page.goto("/review?job=q-paging")
    expect(page.locator("li.item")).to_have_count(50)
    expect(page.locator("#range")).to_have_text("1–50 of 60")
    first = _ids(page)
    page.click("#next-page")
    expect(page.locator("li.item")).to_have_count(10)
    expect(page.locator("#range")).to_have_text("51–60 of 60")
    second = _ids(page)
    assert not set(first) & set(second)
    uris = {i.get_attribute("data-uri") for i in page.locator("li.item").all()}
    assert uris == {r.uri for r in queues["q-paging"][50:]}  # oldest first: the last ten queued
    page.click("#prev-page")
    expect(page.locator("li.item")).to_have_count(50)
    assert _ids(page) == first
    expect(page.locator("#next-page")).to_have_count(1)
    # highest score first, across both pages; a score range narrows the total
    page.goto("/review?job=q-paging&sort=score&desc=1")
    scores = [float(t.split()[1]) for t in page.locator("li.item .what p:nth-child(2)").all_inner_texts()]
    assert scores == sorted(scores, reverse=True) and len(scores) == 50
    page.goto("/review?job=q-paging&lo=0.9&hi=1")
    want = sum(1 for r in queues["q-paging"] if r.score >= 0.9)
    expect(page.locator("#range")).to_have_text(f"1–{want} of {want}")
    ctx.close()


def test_two_reviewers_deciding_the_same_item(site: Site, browser: Any, queues: dict[str, list[Any]]) -> None:
    from playwright.sync_api import expect

    bob_ctx, bob = _signed_in(browser, site, "bob", "bob-pw")
    alice_ctx, alice = _signed_in(browser, site, "alice", "alice-pw")
    bob.goto("/review?state=all&job=q-two")  # the all tab claims nothing; Bob's page goes stale
    x = bob.locator("li.item").first
    x_id, x_uri = x.get_attribute("data-id"), str(x.get_attribute("data-uri"))
    alice.goto("/review?job=q-two")  # what Alice opens is hers
    expect(alice.locator("li.item")).to_have_count(5)
    alice.locator(f"li.item[data-id='{x_id}'] button.release").click()
    expect(alice.locator("p.flash")).to_contain_text("release: ")
    # Bob's stale confirm is refused, and says what X is now
    bob.locator(f"li.item[data-id='{x_id}'] button.confirm").click()
    expect(bob.locator("p.flash")).to_contain_text("refused: this item changed since you opened it (now: release by alice")
    # his pending queue has none of the items Alice holds
    bob.goto("/review?job=q-two")
    expect(bob.locator("#empty")).to_have_count(1)
    # the same refusal by keyboard (no reload): Bob's "all" page, X stale again after Alice undoes her release
    bob.goto("/review?state=all&job=q-two")
    alice.goto("/review?state=decided&job=q-two")
    alice.locator(f"li.item[data-id='{x_id}'] button.undo").click()
    expect(alice.locator("p.flash")).to_contain_text("undone: ")
    bob.locator(f"li.item[data-id='{x_id}']").click()
    with bob.expect_response(lambda r: r.url.endswith("/review/decide")) as answer:
        bob.keyboard.press("c")
    assert answer.value.status == 409
    expect(bob.locator(f"li.item[data-id='{x_id}'] .decision")).to_contain_text("open by alice")
    # storage says what the console says: X quarantined again by the undo, never confirmed by Bob
    key = _key(x_uri)
    names = {o["Key"] for o in site.s3.list_objects_v2(Bucket=site.bucket, Prefix="quarantine/q-two").get("Contents", [])}
    assert "quarantine/" + key in names
    tags = _tags(site.s3, site.bucket, "quarantine/" + key)
    assert "labelq-review" not in tags and tags["labelq-label"] == "nsfw"
    item = site.app.state.console.reviews.find(x_uri, next(r.etag for r in queues["q-two"] if r.uri == x_uri))
    assert (item.state, item.claimed_by, item.decision) == ("claimed", "alice", None)
    assert [h["event"] for h in site.app.state.console.reviews.history(item.id)] == [
        "queued", "claim", "release", "undo"]
    bob_ctx.close()
    alice_ctx.close()


def test_keyboard_only_review_of_twenty_items(site: Site, browser: Any, queues: dict[str, list[Any]]) -> None:
    import time

    from playwright.sync_api import expect

    ctx, page = _signed_in(browser, site, "carol", "carol-pw")
    page.goto("/review?job=q-keys")
    expect(page.locator("li.item")).to_have_count(20)
    page.keyboard.press("?")
    expect(page.locator("#help")).to_be_visible()
    page.keyboard.press("?")
    items = page.locator("li.item")
    expect(items.nth(0)).to_have_class(re.compile(r"\bfocus\b"))
    page.keyboard.press("j")
    page.keyboard.press("j")
    page.keyboard.press("k")
    expect(items.nth(1)).to_have_class(re.compile(r"\bfocus\b"))
    page.keyboard.press("k")
    keys = ["c", "r", "2"]  # confirm, release, label "normal" (top-k #2)
    plan: dict[str, str] = {}
    started = time.monotonic()
    for i in range(20):
        key = keys[i % 3]
        uri = str(page.locator("li.item.focus").get_attribute("data-uri"))
        page.keyboard.press(key)
        plan[uri] = {"c": "confirm", "r": "release", "2": "label"}[key]
        expect(page.locator("li.item.state-decided")).to_have_count(i + 1)
    elapsed = time.monotonic() - started
    assert len(plan) == 20
    print(f"keyboard review: 20 decisions in {elapsed:.1f} s = {60 * 20 / elapsed:.0f} per minute")
    assert page.url.endswith("/review?job=q-keys")  # never reloaded
    store = site.app.state.console.reviews
    for rec in queues["q-keys"]:
        item = store.find(rec.uri, rec.etag)
        want = plan[rec.uri]
        assert (item.decision, item.reviewer) == (want, "carol"), rec.uri
        key = _key(rec.uri)
        if want == "release":
            tags = _tags(site.s3, site.bucket, key)
            assert tags["labelq-review"] == "released" and not POLICY_TAGS & set(tags)
        elif want == "confirm":
            assert _tags(site.s3, site.bucket, "quarantine/" + key)["labelq-review"] == "confirmed"
        elif want == "label":
            assert item.human_label == "normal"
    ctx.close()


def test_undo_reverses_storage_and_enter_relabels(site: Site, browser: Any, queues: dict[str, list[Any]]) -> None:
    from playwright.sync_api import expect

    ctx, page = _signed_in(browser, site, "carol", "carol-pw")
    page.goto("/review?job=q-undo")
    expect(page.locator("li.item")).to_have_count(2)
    first, second = queues["q-undo"]
    key = _key(first.uri)
    page.keyboard.press("r")
    expect(page.locator("li.item.state-decided")).to_have_count(1)
    assert _tags(site.s3, site.bucket, key)["labelq-review"] == "released"
    assert site.services.redis.hget("labelq:released", first.uri) is not None
    page.keyboard.press("u")
    expect(page.locator("li.item.state-decided")).to_have_count(0)
    expect(page.locator("p.flash")).to_contain_text("undone: ")
    names = {o["Key"] for o in site.s3.list_objects_v2(Bucket=site.bucket, Prefix="").get("Contents", [])}
    assert key not in names and "quarantine/" + key in names  # quarantined again
    tags = _tags(site.s3, site.bucket, "quarantine/" + key)
    assert "labelq-review" not in tags and tags["labelq-label"] == "nsfw"  # the tags it had
    assert site.services.redis.hget("labelq:released", first.uri) is None  # the policy may act on it again
    # Enter in the label field sets that label; it does not confirm
    field = page.locator(f"li.item[data-uri='{second.uri}'] input[name=human_label]")
    field.fill("cat")
    field.press("Enter")
    expect(page.locator(f"li.item[data-uri='{second.uri}'] .decision")).to_contain_text("label by carol")
    item = site.app.state.console.reviews.find(second.uri, second.etag)
    assert (item.decision, item.human_label) == ("label", "cat")
    audit = [json.loads(v[b"a"]) for _, v in site.services.redis.xrange("labelq:audit")]
    mine = [(a["action"], a["uri"]) for a in audit if a["uri"] in (first.uri, second.uri) and a.get("reviewer")]
    assert mine == [("review:release", first.uri), ("review:undo", first.uri), ("review:label", second.uri)]
    ctx.close()


def test_bulk_release_of_a_filtered_selection(site: Site, browser: Any, queues: dict[str, list[Any]]) -> None:
    from playwright.sync_api import expect

    ctx, page = _signed_in(browser, site, "carol", "carol-pw")
    page.goto("/review?job=q-bulk")
    expect(page.locator("li.item")).to_have_count(6)
    page.click("#bulk-release")  # without the box ticked: refused
    expect(page.locator("p.flash")).to_contain_text("tick the box")
    expect(page.locator("li.item")).to_have_count(6)
    page.select_option("#bulk select[name=reason]", "false-positive")
    page.check("#bulk-sure")
    page.click("#bulk-release")
    expect(page.locator("p.flash")).to_contain_text("bulk release: 6 items")
    expect(page.locator("#empty")).to_have_count(1)
    names = {o["Key"] for o in site.s3.list_objects_v2(Bucket=site.bucket, Prefix="q-bulk/").get("Contents", [])}
    assert names == {_key(r.uri) for r in queues["q-bulk"]}
    audit = [json.loads(v[b"a"]) for _, v in site.services.redis.xrange("labelq:audit")]
    released = [a for a in audit if a["action"] == "review:release" and a["job"] == "q-bulk"]
    assert len(released) == 6 and {a["reason"] for a in released} == {"false-positive"}
    rows = [json.loads(x) for x in ctx.request.get("/review/export.jsonl").text().splitlines()]
    assert {r["reason"] for r in rows if r["job"] == "q-bulk"} == {"false-positive"}
    ctx.close()


# ------------------------------------------------------------------ sessions and roles


def test_sign_out_ends_every_session_of_the_user(site: Site, browser: Any) -> None:
    laptop, page = _signed_in(browser, site, "erin", "erin-pw")
    phone, other = _signed_in(browser, site, "erin", "erin-pw")
    stolen = laptop.cookies()  # a copy of the laptop's cookie, taken before signing out
    assert any(c["name"] == "labelq_console" for c in stolen)
    page.click(".who button.link")  # sign out
    assert page.url.startswith(site.url + "/login")
    other.goto("/jobs")  # the phone's session ended too
    assert other.url.startswith(site.url + "/login?next=")
    replay = browser.new_context(base_url=site.url)
    replay.add_cookies(stolen)
    r = replay.request.get("/jobs", max_redirects=0)
    assert r.status == 303 and r.headers["location"].startswith("/login")  # the old cookie is worth nothing
    assert site.services.redis.keys("labelq:console:session:*")  # others' sessions stand
    for ctx in (laptop, phone, replay):
        ctx.close()


def test_failed_sign_ins_are_throttled_per_user(site: Site, browser: Any) -> None:
    import time

    ctx = _context(browser, site)
    page = ctx.new_page()
    page.goto("/login")
    csrf = _csrf(page)
    started = time.monotonic()
    codes = [ctx.request.post("/login", form={"username": "dave", "password": f"guess{i}", "csrf": csrf}).status
             for i in range(8)]
    assert codes == [401] * 5 + [429] * 3, codes
    # even the right password waits now; another user is not held up
    r = ctx.request.post("/login", form={"username": "dave", "password": "dave-pw", "csrf": csrf}, max_redirects=0)
    assert r.status == 429 and "too many failed sign-ins" in r.text()
    assert time.monotonic() - started < 30
    ctx.close()
    _signed_in(browser, site, "bob", "bob-pw")[0].close()


def test_reviewers_decide_but_only_admins_retry_and_bulk(site: Site, browser: Any) -> None:
    ctx, page = _signed_in(browser, site, "bob", "bob-pw")
    assert page.locator(".who .role").inner_text() == "reviewer"
    csrf = _csrf(page)
    assert ctx.request.post("/jobs/retry", form={"job": JOB, "csrf": csrf}).status == 403
    r = ctx.request.post("/review/bulk", form={"decision": "confirm", "sure": "yes", "job": "q-bulk", "csrf": csrf})
    assert r.status == 403 and "only admins" in r.text()
    page.goto("/review")
    assert page.locator("#bulk").count() == 0
    ctx.close()
