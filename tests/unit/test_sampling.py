"""Audit samples and shadow models in a policy: the [[sample]] and [shadow] schema, band lookup, the hash rule
(deterministic, nested, at its rate), promoting a candidate and writing the policy back as TOML."""

from __future__ import annotations

import datetime as dt
import math
import textwrap
from pathlib import Path

import pytest

from labelq.errors import UsageError
from labelq.moderation import Band, Sample, in_sample, load_policy
from labelq.moderation.shadow import policy_toml, promote, shadow_refs, write_policy
from labelq.records import Record

MODEL = "Falconsai/nsfw_image_detection"

HEAD = """
version = "s1"

[[rule]]
model = "Falconsai/nsfw_image_detection"
label = "nsfw"
threshold = 0.8
actions = ["tag"]
"""

SAMPLE = HEAD + """
[[sample]]
model = "Falconsai/nsfw_image_detection"
label = "nsfw"
bands = [[0.5, 0.8, 0.02], [0.0, 0.5, 0.005], [0.8, 1.0, 0.01]]

[shadow]
models = ["org/candidate", "/models/new-rev"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def bands(text: str) -> str:
    return HEAD + f'\n[[sample]]\nmodel = "m"\nlabel = "nsfw"\nbands = {text}\n'


def test_samples_and_shadow_models_parse_with_bands_in_order(tmp_path: Path) -> None:
    p = load_policy(write(tmp_path, SAMPLE))
    assert p.samples == (Sample(MODEL, "nsfw", (Band(0.0, 0.5, 0.005), Band(0.5, 0.8, 0.02), Band(0.8, 1.0, 0.01))),)
    assert p.shadow == ("org/candidate", "/models/new-rev")
    assert p.models == (MODEL,)


def test_a_policy_without_samples_or_shadow_has_none(tmp_path: Path) -> None:
    p = load_policy(write(tmp_path, HEAD))
    assert (p.samples, p.shadow) == ((), ())


@pytest.mark.parametrize(("text", "line"), [
    ("[[0.0, 0.5, 0.01], [0.4, 0.8, 0.02]]", "sample 1: bands: band 2 [0.4, 0.8) overlaps band 1 [0, 0.5)"),
    ("[[0.5, 0.9, 0.01], [0.0, 0.6, 0.02]]", "sample 1: bands: band 1 [0.5, 0.9) overlaps band 2 [0, 0.6)"),
    ("[[0.0, 0.5, 0]]", "sample 1: bands: band 1 rate must be above 0 and at most 1, not 0"),
    ("[[0.0, 0.5, 1.5]]", "sample 1: bands: band 1 rate must be above 0 and at most 1, not 1.5"),
    ("[[0.5, 0.5, 0.1]]", "sample 1: bands: band 1 needs 0 <= from < to <= 1, not [0.5, 0.5)"),
    ("[[0.7, 0.2, 0.1]]", "sample 1: bands: band 1 needs 0 <= from < to <= 1, not [0.7, 0.2)"),
    ("[[0.0, 1.2, 0.1]]", "sample 1: bands: band 1 needs 0 <= from < to <= 1, not [0, 1.2)"),
    ("[[0.0, 0.5]]", "sample 1: bands: band 1 must be [from, to, rate], not 2 numbers"),
    ("[]", "sample 1: bands: give at least one [from, to, rate]"),
    ('[["a", 0.5, 0.1]]', "sample 1: bands 1 1: must be a number, not string 'a'"),
])
def test_bad_bands_are_one_line_naming_the_sample(tmp_path: Path, text: str, line: str) -> None:
    with pytest.raises(UsageError) as info:
        load_policy(write(tmp_path, bands(text)))
    assert str(info.value) == f"policy {tmp_path / 'policy.toml'}: {line}"


def test_touching_bands_do_not_overlap_and_a_second_sample_of_one_label_is_refused(tmp_path: Path) -> None:
    assert load_policy(write(tmp_path, bands("[[0.0, 0.5, 0.1], [0.5, 1.0, 0.2]]"))).samples[0].bands[1].lo == 0.5
    twice = bands("[[0.0, 1.0, 0.1]]") + '\n[[sample]]\nmodel = "m"\nlabel = "nsfw"\nbands = [[0.0, 1.0, 0.2]]\n'
    with pytest.raises(UsageError, match="a second \\[\\[sample\\]\\] for model 'm' label 'nsfw'"):
        load_policy(write(tmp_path, twice))


def test_unknown_keys_in_sample_and_shadow_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="sample 1: rates: unknown key"):
        load_policy(write(tmp_path, bands("[[0.0, 1.0, 0.1]]") + "rates = 1\n"))
    with pytest.raises(UsageError, match=r"shadow\.model: unknown key"):
        load_policy(write(tmp_path, HEAD + '\n[shadow]\nmodel = ["x"]\n'))


def test_sample_rate_looks_up_the_band_of_the_score(tmp_path: Path) -> None:
    p = load_policy(write(tmp_path, SAMPLE))
    assert p.sample_rate(MODEL, "nsfw", 0.0) == 0.005
    assert p.sample_rate(MODEL, "nsfw", 0.4999) == 0.005
    assert p.sample_rate(MODEL, "nsfw", 0.5) == 0.02  # [from, to): from belongs to the band
    assert p.sample_rate(MODEL, "nsfw", 0.8) == 0.01
    assert p.sample_rate(MODEL, "nsfw", 1.0) == 0.01  # the last band includes 1.0
    assert p.sample_rate(MODEL, "normal", 0.9) == 0.0  # no sample of this label
    assert p.sample_rate("other", "nsfw", 0.9) == 0.0
    gap = load_policy(write(tmp_path, bands("[[0.2, 0.4, 0.5]]")))
    assert (gap.sample_rate("m", "nsfw", 0.1), gap.sample_rate("m", "nsfw", 0.3), gap.sample_rate("m", "nsfw", 0.4)) \
        == (0.0, 0.5, 0.0)


def test_in_sample_is_deterministic_and_nested() -> None:
    uris = [f"s3://b/img-{i}.jpg" for i in range(4000)]
    at = {rate: {u for u in uris if in_sample(u, "e1", "m", "nsfw", rate)} for rate in (0.01, 0.1, 0.5, 1.0)}
    assert at[0.01] <= at[0.1] <= at[0.5] <= at[1.0] == set(uris)  # raising a rate keeps the earlier sample
    assert at[0.01] == {u for u in uris if in_sample(u, "e1", "m", "nsfw", 0.01)}  # the same draw again
    assert not any(in_sample(u, "e1", "m", "nsfw", 0.0) for u in uris)
    # each of uri, etag, model and label is part of the draw
    for other in ({u for u in uris if in_sample(u, "e2", "m", "nsfw", 0.1)},
                  {u for u in uris if in_sample(u, "e1", "m2", "nsfw", 0.1)},
                  {u for u in uris if in_sample(u, "e1", "m", "normal", 0.1)}):
        assert other != at[0.1] and 0 < len(other & at[0.1]) < len(at[0.1])


@pytest.mark.parametrize("rate", [0.005, 0.02, 0.3])
def test_the_empirical_rate_over_20000_uris_is_within_a_binomial_tolerance(rate: float) -> None:
    n = 20_000
    hits = sum(in_sample(f"s3://bucket/photos/{i:06d}.jpg", f"etag{i}", MODEL, "nsfw", rate) for i in range(n))
    sd = math.sqrt(n * rate * (1 - rate))
    assert abs(hits - n * rate) <= 4.5 * sd, (hits, n * rate, sd)


def test_a_record_is_sampled_by_the_band_of_its_label_score_and_a_missing_label_scores_0(tmp_path: Path) -> None:
    p = load_policy(write(tmp_path, HEAD + f'\n[[sample]]\nmodel = "{MODEL}"\nlabel = "nsfw"\nbands = [[0.0, 0.1, 1.0]]\n'
                          '\n[shadow]\nmodels = ["cand"]\n'))
    lacks = Record("s3://b/k.jpg", "e1", MODEL, "normal", 0.99, [{"label": "normal", "score": 0.99}])
    [(sample, band, score)] = p.sampled(lacks)
    assert (sample.label, band, score) == ("nsfw", Band(0.0, 0.1, 1.0), 0.0)
    high = Record("s3://b/k.jpg", "e1", MODEL, "nsfw", 0.9, [{"label": "nsfw", "score": 0.9}])
    assert p.sampled(high) == []  # no band holds 0.9
    error = Record("s3://b/k.jpg", "e1", MODEL, status="error", error_kind="corrupt", error="bad")
    assert p.sampled(error) == []
    shadow = Record("s3://b/k.jpg", "e1", "cand", "normal", 0.99, [{"label": "normal", "score": 0.99}])
    assert p.sampled(shadow) == [] and p.matches(shadow) == []


def test_a_shadow_model_named_by_a_rule_still_never_fires(tmp_path: Path) -> None:
    p = load_policy(write(tmp_path, HEAD + f'\n[shadow]\nmodels = ["{MODEL}"]\n'))
    rec = Record("s3://b/k.jpg", "e1", MODEL, "nsfw", 0.95, [{"label": "nsfw", "score": 0.95}])
    assert p.matches(rec) == []


def test_shadow_refs_draw_each_object_once_from_ok_records_of_other_models() -> None:
    recs = [Record(f"s3://b/{i}.jpg", f"e{i}", m, "nsfw", 0.5) for i in range(3000) for m in ("active", "other")]
    recs += [Record("s3://b/bad.jpg", "e", "active", status="error", error_kind="corrupt", error="x"),
             Record("s3://b/cand-only.jpg", "e", "cand", "nsfw", 0.5)]
    every = list(shadow_refs(recs, candidate="cand", rate=1.0))
    assert len(every) == 3000 and len({u for u, _ in every}) == 3000 and ("s3://b/7.jpg", "e7") in every
    part = set(shadow_refs(recs, candidate="cand", rate=0.1, skip_models={"other"}))
    assert 200 < len(part) < 400 and part <= set(every)
    assert part <= set(shadow_refs(recs, candidate="cand", rate=0.2))
    with pytest.raises(UsageError, match="--rate"):
        list(shadow_refs(recs, candidate="cand", rate=0.0))


def test_promote_names_the_candidate_in_every_rule_and_sample_and_the_file_reads_back(tmp_path: Path) -> None:
    path = write(tmp_path, SAMPLE.replace('version = "s1"', 'version = "s1"\n[notify]\nstream = "ev \\"q\\""')
                 + '\n[[rule]]\nmodel = "Falconsai/nsfw_image_detection"\nlabel = "gore"\nthreshold = 0.6\n'
                 'actions = ["notify", "move"]\n')
    old = load_policy(path)
    new, replaced = promote(old, "org/candidate", threshold=0.7, today=dt.date(2026, 12, 6))
    assert replaced == MODEL and new.version == "s1.promoted-2026-12-06"
    assert [(r.model, r.label, r.threshold, r.actions) for r in new.rules] == [
        ("org/candidate", "nsfw", 0.7, ("tag",)), ("org/candidate", "gore", 0.7, ("notify", "move"))]
    assert new.samples[0].model == "org/candidate" and new.samples[0].bands == old.samples[0].bands
    assert new.shadow == ("/models/new-rev",)
    back = write_policy(path, policy_toml(new))
    assert back == new == load_policy(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.toml"]  # no temporary file left
    again, _ = promote(back, "/models/new-rev", version="v9")
    assert again.version == "v9" and {r.threshold for r in again.rules} == {0.7} and again.shadow == ()


def test_promote_refuses_what_it_cannot_decide(tmp_path: Path) -> None:
    two = load_policy(write(tmp_path, HEAD + '\n[[rule]]\nmodel = "b"\nlabel = "x"\nthreshold = 0.5\nactions = ["tag"]\n'))
    with pytest.raises(UsageError, match=r"name 2 models .* with --model"):
        promote(two, "cand")
    assert promote(two, "cand", model="b")[0].rules[1].model == "cand"
    with pytest.raises(UsageError, match=r"no rule or sample .* names zzz"):
        promote(two, "cand", model="zzz")
    with pytest.raises(UsageError, match="already acts"):
        promote(two, "b")
    with pytest.raises(UsageError, match="--threshold"):
        promote(two, "cand", model="b", threshold=1.5)
