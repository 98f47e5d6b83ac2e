"""The console's pure parts: thumbnails and their cache, URL signing, sign-in rules, figures."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from labelq.config import load_settings
from labelq.console.auth import Auth, parse_users
from labelq.console.progress import RateMeter, duration
from labelq.console.thumbs import Signer, ThumbCache, make_thumbnail
from labelq.console.web import _safe_next, shown_key, url
from labelq.errors import UsageError


def _image(size: tuple[int, int], mode: str = "RGB", fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 120 if mode in ("L", "P") else (120, 30, 200, 128)[: len(mode)]).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize(("size", "mode", "fmt"), [((2000, 1000), "RGB", "JPEG"), ((300, 900), "RGBA", "PNG"),
                                                   ((640, 480), "P", "PNG"), ((100, 50), "L", "PNG")])
def test_thumbnails_are_jpegs_no_bigger_than_asked(size: tuple[int, int], mode: str, fmt: str) -> None:
    thumb = make_thumbnail(_image(size, mode, fmt), 256, 10_000_000)
    with Image.open(io.BytesIO(thumb)) as im:
        assert im.format == "JPEG"
        assert max(im.size) == min(256, max(size))
        assert abs(im.size[0] / im.size[1] - size[0] / size[1]) < 0.05  # aspect kept


def test_an_image_over_the_pixel_limit_is_refused_before_decoding() -> None:
    with pytest.raises(ValueError, match="LABELQ_MAX_PIXELS"):
        make_thumbnail(_image((2000, 1000)), 256, 1_000_000)


def test_the_cache_stays_under_its_bound_dropping_the_oldest(tmp_path: Path) -> None:
    cache = ThumbCache(tmp_path, max_bytes=10_000)
    for i in range(10):
        cache.put(f"s3://b/{i}.jpg", "e", 256, bytes(3000))
    assert cache.used <= 10_000
    assert sum(p.stat().st_size for p in tmp_path.glob("*.jpg")) == cache.used
    assert cache.get("s3://b/9.jpg", "e", 256) == bytes(3000)  # the newest stays
    assert cache.get("s3://b/0.jpg", "e", 256) is None
    assert cache.get("s3://b/9.jpg", "other-etag", 256) is None  # a new version is a new thumbnail


def test_thumbnail_urls_are_signed_per_uri_and_etag() -> None:
    signer = Signer("secret")
    link = signer.url("s3://b/a <b>.jpg", "etag1")
    assert link.startswith("/thumb?u=s3%3A%2F%2Fb%2Fa+%3Cb%3E.jpg&e=etag1&s=")
    sig = link.rsplit("s=", 1)[1]
    assert signer.verify("s3://b/a <b>.jpg", "etag1", sig)
    assert not signer.verify("s3://b/other.jpg", "etag1", sig)
    assert not signer.verify("s3://b/a <b>.jpg", "etag2", sig)
    assert not Signer("another secret").verify("s3://b/a <b>.jpg", "etag1", sig)


def test_users_tokens_and_viewers() -> None:
    assert parse_users(" alice:pw:with:colons , bob:x ") == {"alice": "pw:with:colons", "bob": "x"}
    for bad in ("alice", "alice:", ":pw"):
        with pytest.raises(UsageError, match="name:password"):
            parse_users(bad)
    auth = Auth(load_settings(console_users="alice:a,vera:v", console_viewers="vera", console_token="t0k"))
    assert auth.check_password("alice", "a") == auth.user("alice", "session")
    assert auth.check_password("alice", "v") is None and auth.check_password("nobody", "") is None
    assert auth.check_password("token", "t0k") is not None
    assert auth.user("alice", "session").can_write and not auth.user("vera", "session").can_write
    assert not Auth(load_settings(console_users="alice:a", console_read_only=True)).user("alice", "session").can_write
    with pytest.raises(UsageError, match="anonymously"):
        Auth(load_settings()).require_configured()
    Auth(load_settings(console_auth_header="X-Forwarded-User")).require_configured()


def test_roles_from_settings_or_a_users_file(tmp_path: Path) -> None:
    from labelq.console.auth import parse_roles

    assert parse_roles("alice:admin, bob:reviewer") == {"alice": "admin", "bob": "reviewer"}
    with pytest.raises(UsageError, match="role one of viewer, reviewer, admin"):
        parse_roles("alice:root")
    auth = Auth(load_settings(console_users="alice:a,bob:b,vera:v", console_roles="alice:admin",
                              console_viewers="vera"))
    assert [auth.user(n, "session").role for n in ("alice", "bob", "vera")] == ["admin", "reviewer", "viewer"]
    assert auth.user("alice", "session").is_admin and not auth.user("bob", "session").is_admin
    assert auth.user("bob", "session").can_write
    assert Auth(load_settings(console_users="alice:a")).user("alice", "session").is_admin  # no roles: as before
    users = tmp_path / "users.toml"
    users.write_text('[users.ann]\npassword = "p:w"\nrole = "viewer"\n[users.ben]\npassword = "x"\n')
    auth = Auth(load_settings(console_users_file=users))
    assert auth.check_password("ann", "p:w") is not None and not auth.user("ann", "session").can_write
    assert auth.user("ben", "session").role == "reviewer"
    users.write_text('[users.ann]\nrole = "admin"\n')
    with pytest.raises(UsageError, match=r"\[users.ann\] needs a password"):
        Auth(load_settings(console_users_file=users))


def test_urls_keys_and_redirect_targets() -> None:
    assert url("/jobs/browse", job='a"b&c', label=None, lo="") == "/jobs/browse?job=a%22b%26c"
    assert shown_key("s3://b/photos/%3Cscript%3E%20%E7%8C%AB.jpg") == "s3://b/photos/<script> 猫.jpg"
    assert shown_key("http://x/%3C") == "http://x/%3C"
    assert _safe_next("/review?state=all") == "/review?state=all"
    for bad in ("//evil.example/", "https://evil.example/", "/\\evil", "", None):
        assert _safe_next(bad) == "/jobs"


def test_rate_and_eta() -> None:
    done = SimpleNamespace(id="j", models=["m1", "m2"], processed=200, total=100, done=True,
                           created_at="2026-12-01T10:00:00.000Z", finished_at="2026-12-01T10:00:50.000Z")
    p = RateMeter().progress(done)
    assert (p.objects_done, p.percent, p.rate, p.eta_s) == (100, 100.0, 2.0, None)
    running = SimpleNamespace(id="r", models=["m"], processed=10, total=100, done=False,
                              created_at="2000-01-01T00:00:00Z", finished_at=None)
    p = RateMeter().progress(running)
    assert p.percent == 10.0 and p.rate is not None and p.eta_s is not None and p.eta_s > 0
    assert (duration(None), duration(5), duration(125), duration(7322)) == ("—", "5s", "2m 05s", "2h 02m")
