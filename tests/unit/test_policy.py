"""labelq.moderation: parsing and validating a policy file, and which rules a record fires."""

from __future__ import annotations

import textwrap
import urllib.error
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from labelq.errors import UsageError
from labelq.moderation import ACTIONS, Action, Policy, Rule, load_policy, post_json
from labelq.records import Record

MODEL = "Falconsai/nsfw_image_detection"

VALID = """
version = "2026-11-25.1"
quarantine_prefix = "held/"

[notify]
stream = "labelq:events"
webhook_attempts = 2

[[rule]]
model = "Falconsai/nsfw_image_detection"
label = "nsfw"
threshold = 0.8
actions = ["move", "notify", "tag", "tag"]

[[rule]]
model = "timm/mobilenetv3_small_100.lamb_in1k"
label = "bikini"
threshold = 0.5
actions = ["copy"]
"""

RULE = """
[[rule]]
model = "m"
label = "nsfw"
threshold = 0.8
actions = ["tag"]
"""


def write(tmp_path: Path, text: str, name: str = "policy.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def record(top_k: dict[str, float], *, model: str = MODEL, status: str = "ok") -> Record:
    ranked = sorted(top_k.items(), key=lambda kv: -kv[1])
    if status != "ok":
        return Record("s3://b/k.jpg", "e1", model, status="error", error_kind="corrupt", error="bad")
    return Record("s3://b/k.jpg", "e1", model, ranked[0][0], ranked[0][1],
                  [{"label": k, "score": v} for k, v in ranked])


# ------------------------------------------------------------------ parsing


def test_a_valid_policy_parses_with_actions_ordered_move_last(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, VALID))
    assert policy.version == "2026-11-25.1"
    assert policy.quarantine_prefix == "held/"
    assert policy.stream == "labelq:events"
    assert policy.webhook is None
    assert policy.webhook_attempts == 2
    assert policy.rules[0] == Rule(MODEL, "nsfw", 0.8, ("tag", "notify", "move"))  # deduplicated, move last
    assert policy.rules[1] == Rule("timm/mobilenetv3_small_100.lamb_in1k", "bikini", 0.5, ("copy",))


def test_quarantine_prefix_defaults_to_quarantine(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, 'version = "1"\n' + RULE))
    assert policy.quarantine_prefix == "quarantine/"
    assert policy.stream is None and policy.webhook is None


def test_version_may_be_a_number(tmp_path: Path) -> None:
    assert load_policy(write(tmp_path, "version = 3\n" + RULE)).version == "3"


@pytest.mark.parametrize("head", ["", 'version = ""\n'], ids=["missing", "empty"])
def test_a_policy_without_version_is_refused(tmp_path: Path, head: str) -> None:
    with pytest.raises(UsageError, match=r"set a version"):
        load_policy(write(tmp_path, head + RULE))


@pytest.mark.parametrize("threshold", ["1.5", "-0.1"])
def test_a_threshold_outside_0_1_is_refused(tmp_path: Path, threshold: str) -> None:
    text = 'version = "1"\n' + RULE.replace("threshold = 0.8", f"threshold = {threshold}")
    with pytest.raises(UsageError, match=rf"rule 1: threshold must be between 0 and 1, not {threshold}"):
        load_policy(write(tmp_path, text))


def test_a_threshold_that_is_not_a_number_is_refused(tmp_path: Path) -> None:
    text = 'version = "1"\n' + RULE.replace("threshold = 0.8", 'threshold = "high"')
    with pytest.raises(UsageError, match=r"rule 1: threshold: must be a number, not string 'high'$"):
        load_policy(write(tmp_path, text))


def test_a_rule_without_a_label_is_refused(tmp_path: Path) -> None:
    text = 'version = "1"\n' + RULE.replace('label = "nsfw"\n', "")
    with pytest.raises(UsageError, match=r"rule 1: label: is missing$"):
        load_policy(write(tmp_path, text))


def test_an_unknown_action_is_named_with_the_allowed_ones(tmp_path: Path) -> None:
    text = 'version = "1"\n' + RULE + RULE.replace('["tag"]', '["tag", "delete"]')
    with pytest.raises(UsageError) as info:
        load_policy(write(tmp_path, text))
    message = str(info.value)
    assert "rule 2" in message
    assert "delete" in message
    assert all(a in message for a in ACTIONS)


def test_a_rule_with_no_actions_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"rule 1: actions must be some of .* not none"):
        load_policy(write(tmp_path, 'version = "1"\n' + RULE.replace('["tag"]', "[]")))


def test_notify_without_a_stream_or_webhook_is_refused(tmp_path: Path) -> None:
    text = 'version = "1"\n' + RULE.replace('["tag"]', '["notify"]')
    with pytest.raises(UsageError, match=r"a rule notifies, so set \[notify\] stream and/or webhook"):
        load_policy(write(tmp_path, text))


def test_notify_with_only_a_webhook_is_accepted(tmp_path: Path) -> None:
    text = 'version = "1"\n[notify]\nwebhook = "http://127.0.0.1:9/hook"\n' + RULE.replace('["tag"]', '["notify"]')
    policy = load_policy(write(tmp_path, text))
    assert policy.webhook == "http://127.0.0.1:9/hook"
    assert policy.rules[0].actions == ("notify",)


@pytest.mark.parametrize("prefix", ["../elsewhere/", "quarantine/../../x/", "/abs/", ""])
def test_a_quarantine_prefix_that_escapes_is_refused(tmp_path: Path, prefix: str) -> None:
    text = f'version = "1"\nquarantine_prefix = "{prefix}"\n' + RULE
    with pytest.raises(UsageError, match=r"quarantine_prefix must be a relative prefix"):
        load_policy(write(tmp_path, text))


def test_a_policy_with_no_rules_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"no \[\[rule\]\] tables"):
        load_policy(write(tmp_path, 'version = "1"\n'))


def test_a_file_that_is_not_toml_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"is not valid TOML"):
        load_policy(write(tmp_path, "version: 1\nrules: [nsfw]\n"))


@pytest.mark.parametrize(("text", "line"), [
    ('notify = "x"\n' + RULE, "notify: must be a table, not string 'x'"),
    ("rule = 5\n", "rule: must be a list, not integer 5"),
    ('quarantine_prefix = ["q/"]\n' + RULE, "quarantine_prefix: must be a string, not list ['q/']"),
    ("[notify]\nwebhook_attempts = \"3\"\n" + RULE, "notify.webhook_attempts: must be an integer, not string '3'"),
    ("[notify]\nstream = 7\n" + RULE, "notify.stream: must be a string, not integer 7"),
    (RULE.replace('actions = ["tag"]', 'actions = "tag"'), "rule 1: actions: must be a list, not string 'tag'"),
    (RULE.replace('model = "m"', "model = 3"), "rule 1: model: must be a string, not integer 3"),
    (RULE.replace('model = "m"', 'model = ""'), "rule 1: model: must not be empty"),
    (RULE.replace("threshold = 0.8", "threshold = true"), "rule 1: threshold: must be a number, not boolean True"),
    ("quarantine-prefix = 'q/'\n" + RULE, "quarantine-prefix: unknown key (a typo?)"),
    (RULE.replace("threshold = 0.8", "treshold = 0.8"), "rule 1: treshold: unknown key (a typo?)"),
], ids=["notify-str", "rule-int", "prefix-list", "attempts-str", "stream-int", "actions-str", "model-int",
        "model-empty", "threshold-bool", "unknown-top", "unknown-in-rule"])
def test_wrong_types_are_one_line_naming_the_field(tmp_path: Path, text: str, line: str) -> None:
    path = write(tmp_path, 'version = "1"\n' + text)
    with pytest.raises(UsageError) as caught:
        load_policy(path)
    assert f"policy {path}: {line}" in str(caught.value).splitlines()


def test_every_error_of_a_policy_is_its_own_line(tmp_path: Path) -> None:
    text = ('version = "1"\nquarantine_prefix = ["q/"]\nnotify = "x"\n'
            + RULE.replace("threshold = 0.8", "threshold = 2.0") + RULE.replace('actions = ["tag"]', 'actions = ["zap"]'))
    path = write(tmp_path, text)
    with pytest.raises(UsageError) as caught:
        load_policy(path)
    lines = str(caught.value).splitlines()
    assert len(lines) == 4, lines
    assert all(line.startswith(f"policy {path}: ") for line in lines)
    assert [line.split(": ", 2)[1] for line in lines] == ["quarantine_prefix", "notify", "rule 1", "rule 2"]


def test_a_policy_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(('version = "1"\n' + RULE.replace("nsfw", "nu\xe9")).encode("latin-1"))
    with pytest.raises(UsageError, match=r"is not UTF-8 text \(byte 0xe9 at offset \d+\): save it as UTF-8$"):
        load_policy(path)


def test_a_folder_given_as_the_policy_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"is a folder: give the policy's TOML file$"):
        load_policy(tmp_path)


def test_a_policy_with_a_utf8_bom_parses(tmp_path: Path) -> None:
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + ('version = "1"\n' + RULE).encode())
    assert load_policy(path).version == "1"


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"policy file not found"):
        load_policy(tmp_path / "absent.toml")


# ------------------------------------------------------------------ matching


def policy_of(*rules: Rule) -> Policy:
    return Policy("v1", rules)


def test_a_rule_fires_at_or_over_its_threshold_with_the_score_that_fired_it() -> None:
    over, equal, under = Rule(MODEL, "nsfw", 0.8, ("tag",)), Rule(MODEL, "nsfw", 0.9, ("move",)), Rule(
        MODEL, "nsfw", 0.91, ("copy",))
    fired = policy_of(over, equal, under).matches(record({"nsfw": 0.9, "normal": 0.1}))
    assert fired == [(over, 0.9), (equal, 0.9)]


def test_a_rule_on_a_label_that_is_not_top_1_reads_its_score_from_top_k() -> None:
    normal = Rule(MODEL, "normal", 0.05, ("tag",))
    too_high = Rule(MODEL, "normal", 0.2, ("tag",))
    fired = policy_of(normal, too_high).matches(record({"nsfw": 0.9, "normal": 0.1}))
    assert fired == [(normal, 0.1)]


def test_a_label_missing_from_top_k_never_fires() -> None:
    rule = Rule(MODEL, "violence", 0.0, ("tag",))  # threshold 0: it would fire on any score at all
    assert policy_of(rule).matches(record({"nsfw": 0.9, "normal": 0.1})) == []


def test_only_rules_of_the_records_model_fire() -> None:
    rule = Rule("another/model", "nsfw", 0.1, ("tag",))
    assert policy_of(rule).matches(record({"nsfw": 0.9, "normal": 0.1})) == []


def test_error_records_never_fire() -> None:
    rule = Rule(MODEL, "nsfw", 0.0, ("tag",))
    assert policy_of(rule).matches(record({}, status="error")) == []


def test_a_record_without_top_k_falls_back_to_its_label_and_score() -> None:
    rule = Rule(MODEL, "nsfw", 0.5, ("tag",))
    rec = Record("s3://b/k.jpg", "e1", MODEL, "nsfw", 0.7, [])
    assert policy_of(rule).matches(rec) == [(rule, 0.7)]


def test_an_action_serialises_every_audit_field() -> None:
    import json

    a = Action("s3://b/k.jpg", MODEL, "nsfw", 0.9, "v1", "tag", "ok", "tagged", job="live")
    data = json.loads(a.to_json())
    assert set(data) == {"uri", "model", "label", "score", "policy_version", "action", "result", "detail", "time",
                         "job", "etag", "labelled_at", "reviewer", "human_label", "reason", "threshold",
                         "sample_rate"}
    assert data["time"].endswith("Z")


def test_webhook_attempts_under_1_is_refused(tmp_path: Path) -> None:
    """With webhook_attempts = 0, post_json's retry loop never runs: nothing is sent, yet notify reports ok."""
    text = ('version = "1"\n[notify]\nwebhook = "http://127.0.0.1:9/hook"\nwebhook_attempts = 0\n'
            + RULE.replace('["tag"]', '["notify"]'))
    with pytest.raises(UsageError, match="webhook_attempts"):
        load_policy(write(tmp_path, text))


# ------------------------------------------------------------------ webhook


class Hook:
    """A local HTTP endpoint that answers the statuses it is given, in order, and keeps what it was sent."""

    def __init__(self, statuses: list[int]) -> None:
        import http.server
        import threading

        self.statuses = list(statuses)
        self.bodies: list[dict[str, object]] = []
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                import json

                length = int(self.headers["Content-Length"])
                hook.bodies.append(json.loads(self.rfile.read(length)))
                status = hook.statuses.pop(0) if hook.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook_factory() -> Iterator[Callable[[list[int]], Hook]]:
    hooks: list[Hook] = []

    def make(statuses: list[int]) -> Hook:
        hooks.append(Hook(statuses))
        return hooks[-1]

    yield make
    for h in hooks:
        h.close()


def test_the_webhook_is_retried_on_5xx_until_it_succeeds(hook_factory: Callable[[list[int]], Hook]) -> None:
    hook = hook_factory([503, 500])
    post_json(hook.url, {"uri": "s3://b/k.jpg", "score": 0.9}, attempts=4)
    assert hook.bodies == [{"uri": "s3://b/k.jpg", "score": 0.9}] * 3


def test_the_webhook_gives_up_after_its_attempts(hook_factory: Callable[[list[int]], Hook]) -> None:
    hook = hook_factory([500, 502, 200])
    with pytest.raises(urllib.error.HTTPError, match="502"):
        post_json(hook.url, {"uri": "x"}, attempts=2)
    assert len(hook.bodies) == 2


def test_a_4xx_from_the_webhook_is_not_retried(hook_factory: Callable[[list[int]], Hook]) -> None:
    hook = hook_factory([404])
    with pytest.raises(urllib.error.HTTPError, match="404"):
        post_json(hook.url, {"uri": "x"}, attempts=4)
    assert len(hook.bodies) == 1


def test_an_unreachable_webhook_is_retried_then_raises() -> None:
    from tests.support.procs import free_port

    with pytest.raises(urllib.error.URLError):
        post_json(f"http://127.0.0.1:{free_port()}/hook", {"uri": "x"}, attempts=2, timeout=1)
