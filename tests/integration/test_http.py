"""Images named by URLs: a scripted server on loopback, and the guard that keeps URL lists off private
networks (tested with a resolver stub: no connection is ever made to the addresses it names)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from labelq.config import Settings
from labelq.errors import LabelqError, UsageError
from labelq.objects import ObjectRef, Stores
from labelq.objects.http import HttpStore, public
from labelq.sources import iter_listing, parse_source
from tests.support.webserver import ImageServer


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(buf, format="JPEG")
    return buf.getvalue()


JPEG = _jpeg()


@pytest.fixture
def server() -> Any:
    with ImageServer({"/a.jpg": JPEG, "/b.jpg": JPEG}, slow_s=2.5) as s:
        yield s


def settings(**extra: Any) -> Settings:
    base: dict[str, Any] = {"http_allow_private": True, "http_timeout": 1.0, "s3_max_attempts": 3,
                            "max_bytes": 100_000}
    return Settings(**{**base, **extra})


def kind(store: Any, url: str) -> str:
    with pytest.raises(LabelqError) as caught:
        store.fetch(ObjectRef(url))
    return caught.value.kind


def test_answers_become_bytes_or_error_kinds(server: ImageServer) -> None:
    store = HttpStore(settings())
    data = store.fetch(ObjectRef(server.url("/a.jpg")))
    assert data == JPEG and data.version == "etag-a.jpg"  # type: ignore[attr-defined]
    assert store.fetch(ObjectRef(server.url("/to/b.jpg"))) == JPEG  # a redirect is followed
    assert store.fetch(ObjectRef(server.url("/flaky/a.jpg"))) == JPEG  # 503 twice, then served: retried
    assert server.hits["/flaky/a.jpg"] == 3
    assert store.fetch(ObjectRef(server.url("/busy/a.jpg"))) == JPEG  # 429 then served
    assert kind(store, server.url("/gone")) == "not_found"
    assert kind(store, server.url("/secret")) == "access_denied"
    assert server.hits["/gone"] == server.hits["/secret"] == 1  # 4xx are not retried
    assert kind(store, server.url("/huge")) == "too_large"  # declared length over the limit: not read
    assert kind(store, server.url("/big")) == "too_large"  # no length: cut off at the limit while streaming
    assert kind(store, server.url("/loop")) == "storage_error"  # a redirect loop ends at the limit
    assert server.hits["/loop"] == (5 + 1) * 1  # LABELQ_HTTP_MAX_REDIRECTS=5 hops, not retried as transient


def test_a_server_that_does_not_answer_in_time_is_a_storage_error_after_retries(server: ImageServer) -> None:
    store = HttpStore(settings(s3_max_attempts=2))
    assert kind(store, server.url("/slow/a.jpg")) == "storage_error"
    assert server.hits["/slow/a.jpg"] == 2


def test_a_manifest_of_urls_is_a_source(server: ImageServer, tmp_path: Path) -> None:
    manifest = tmp_path / "urls.txt"
    manifest.write_text(f"{server.url('/a.jpg')}\n{server.url('/b.jpg')}\n# a comment\n{server.url('/gone')}\n")
    refs = [ref.uri for ref, _ in iter_listing(parse_source(str(manifest)), Stores(settings()))]
    assert refs == [server.url("/a.jpg"), server.url("/b.jpg"), server.url("/gone")]
    with pytest.raises(UsageError, match="manifest"):
        parse_source(server.url("/images/"))  # a URL prefix cannot be listed: say what to give instead


def test_moderation_actions_are_refused_in_one_line(server: ImageServer) -> None:
    store = Stores(settings()).store(server.url("/a.jpg"))
    assert not store.actions
    with pytest.raises(UsageError, match="not possible on http:// objects"):
        store.move(server.url("/a.jpg"), server.url("/q/a.jpg"))


# ---------------------------------------------------------------- the private-address guard


class Stub:
    """A resolver that maps test names to addresses and records what it was asked."""

    def __init__(self, names: dict[str, list[str]]) -> None:
        self.names, self.asked = names, []

    def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        return self.names[host]


@pytest.mark.parametrize("address", ["10.0.0.7", "192.168.1.20", "172.16.5.4", "127.0.0.1", "169.254.169.254",
                                     "::1", "fd00::1", "fe80::1", "0.0.0.0", "::ffff:10.0.0.7"])
def test_private_addresses_are_refused_before_any_connection(address: str) -> None:
    stub = Stub({"images.internal.test": [address]})
    store = HttpStore(settings(http_allow_private=False), resolver=stub)
    assert kind(store, "http://images.internal.test/cat.jpg") == "access_denied"
    assert stub.asked == ["images.internal.test"]
    assert store._pools == {}  # no connection pool, so no connection, was ever made


def test_a_name_with_one_private_address_among_public_ones_is_refused() -> None:
    stub = Stub({"mixed.test": ["93.184.215.14", "10.1.1.1"]})
    store = HttpStore(settings(http_allow_private=False), resolver=stub)
    with pytest.raises(LabelqError, match=r"10\.1\.1\.1"):
        store.fetch(ObjectRef("https://mixed.test/x.jpg"))
    assert store._pools == {}


def test_literal_private_addresses_and_their_setting(server: ImageServer) -> None:
    refused = HttpStore(settings(http_allow_private=False))
    assert kind(refused, server.url("/a.jpg")) == "access_denied"  # 127.0.0.1 literal, no lookup
    assert server.hits["/a.jpg"] == 0 and refused._pools == {}
    assert HttpStore(settings(http_allow_private=True)).fetch(ObjectRef(server.url("/a.jpg"))) == JPEG


def test_a_redirect_to_a_private_address_is_refused(server: ImageServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first hop is allowed (the loopback test server counts as public here); the hop it redirects to
    resolves to a private address and is refused before connecting."""
    import labelq.objects.http as http

    monkeypatch.setattr(http, "public", lambda a: a == "127.0.0.1" or public(a))
    stub = Stub({"metadata.internal.test": ["169.254.169.254"]})
    store = HttpStore(settings(http_allow_private=False), resolver=stub)
    url = server.url("/redirect-out?to=http://metadata.internal.test/latest/meta-data/")
    assert kind(store, url) == "access_denied"
    assert stub.asked == ["metadata.internal.test"]
    assert {key[1] for key in store._pools} == {"127.0.0.1"}  # only the test server was ever connected to


def test_public_classifies_addresses() -> None:
    assert public("93.184.215.14") and public("2606:4700::1111")
    assert not any(public(a) for a in ["10.0.0.1", "127.0.0.1", "169.254.0.1", "::1", "224.0.0.1", "100.64.0.1"])
