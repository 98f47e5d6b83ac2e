"""Storage faults over real HTTP: a small S3 stand-in that fails on purpose.

moto cannot be told to answer 503 or to stall, so these tests run boto3 against a
local HTTP server that answers S3 GetObject with a scripted sequence of faults.
"""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from labelq.config import Settings
from labelq.errors import AccessDenied, NotFound, StorageError
from labelq.objects import ObjectRef, S3Store

BODY = b"\xff\xd8not-really-a-jpeg"


class _Script:
    """What the server answers, one entry per request: an HTTP status, or 'stall'."""

    def __init__(self) -> None:
        self.answers: list[Any] = []
        self.requests = 0
        self.times: list[float] = []


def _handler(script: _Script) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            script.requests += 1
            script.times.append(time.monotonic())
            answer = script.answers.pop(0) if script.answers else 200
            if answer == "stall":
                time.sleep(3)
                answer = 200
            if answer == 200:
                try:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(BODY)))
                    self.send_header("ETag", '"abc"')
                    self.end_headers()
                    self.wfile.write(BODY)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # after a stall the client has given up: that is the point of the stall
                return
            codes = {403: "AccessDenied", 404: "NoSuchKey", 500: "InternalError", 503: "SlowDown"}
            xml = f"<Error><Code>{codes[answer]}</Code><Message>scripted</Message></Error>".encode()
            self.send_response(answer)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(xml)))
            self.end_headers()
            self.wfile.write(xml)

    return Handler


@pytest.fixture()
def faulty_s3() -> Iterator[tuple[str, _Script]]:
    script = _Script()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(script))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", script
    finally:
        server.shutdown()
        server.server_close()


def _store(endpoint: str, **overrides: Any) -> S3Store:
    settings = Settings(s3_endpoint_url=endpoint, s3_region="us-east-1", **overrides)
    return S3Store(settings)


REF = ObjectRef("s3://bucket/photos/a.jpg")


@pytest.mark.parametrize("client", ["boto3", "obstore"])
def test_transient_5xx_is_retried_then_succeeds(faulty_s3: tuple[str, _Script], client: str) -> None:
    endpoint, script = faulty_s3
    script.answers = [503, 500, 503]
    assert _store(endpoint, s3_max_attempts=5, s3_client=client).fetch(REF) == BODY
    assert script.requests == 4  # three failures, then the answer


def test_persistent_5xx_becomes_storage_error_after_backoff(faulty_s3: tuple[str, _Script]) -> None:
    endpoint, script = faulty_s3
    script.answers = [503] * 50
    with pytest.raises(StorageError) as info:
        _store(endpoint, s3_max_attempts=3).fetch(REF)
    assert info.value.kind == "storage_error"
    assert "gave up after 3 attempts" in str(info.value)
    # botocore tries twice per call (standard mode, max_attempts=2) and labelq three calls: six requests.
    assert script.requests == 6
    gaps = [b - a for a, b in zip(script.times, script.times[1:], strict=False)]
    assert max(gaps) > 0.0  # there was a pause between attempts: backoff, not a hot loop


def test_timeouts_are_retried_then_storage_error(faulty_s3: tuple[str, _Script]) -> None:
    endpoint, script = faulty_s3
    script.answers = ["stall"] * 10
    store = _store(endpoint, s3_max_attempts=2, s3_read_timeout=0.5, s3_connect_timeout=0.5)
    with pytest.raises(StorageError) as info:
        store.fetch(REF)
    assert info.value.kind == "storage_error"
    assert script.requests >= 2


@pytest.mark.parametrize("client", ["boto3", "obstore"])
def test_not_found_and_access_denied_are_not_retried(faulty_s3: tuple[str, _Script], client: str) -> None:
    endpoint, script = faulty_s3
    script.answers = [404]
    with pytest.raises(NotFound):
        _store(endpoint, s3_client=client).fetch(REF)
    assert script.requests == 1
    script.answers = [403]
    with pytest.raises(AccessDenied):
        _store(endpoint, s3_client=client).fetch(REF)
    assert script.requests == 2


def test_obstore_persistent_5xx_and_stalls_become_storage_errors(faulty_s3: tuple[str, _Script]) -> None:
    endpoint, script = faulty_s3
    script.answers = [503] * 50
    with pytest.raises(StorageError, match="gave up after 3 attempts") as info:
        _store(endpoint, s3_max_attempts=3, s3_client="obstore").fetch(REF)
    assert info.value.kind == "storage_error"
    assert script.requests == 6  # obstore tries twice per call (max_retries 1), labelq three calls
    script.answers = ["stall"] * 10
    with pytest.raises(StorageError):
        _store(endpoint, s3_max_attempts=2, s3_read_timeout=0.5, s3_connect_timeout=0.5, s3_client="obstore").fetch(REF)
