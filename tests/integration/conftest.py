"""Fixtures of the integration tier: moto with authentication switched on, SQL result stores."""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from labelq.results import TABLE, SQLStore


@dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str


@dataclass(frozen=True)
class AuthMoto:
    """moto enforcing IAM: ``reader`` may do anything on S3, ``nobody`` exists but has no policy."""

    endpoint_url: str
    bucket: str
    reader: Credentials
    nobody: Credentials

    def client(self, creds: Credentials) -> Any:
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.endpoint_url, region_name="us-east-1",
            aws_access_key_id=creds.access_key, aws_secret_access_key=creds.secret_key,
        )


def _set_moto_auth(endpoint_url: str, count: str) -> None:
    """moto's own API: authenticate every request after ``count`` more (``inf``: never)."""
    request = urllib.request.Request(
        f"{endpoint_url}/moto-api/reset-auth", data=count.encode(), method="POST", headers={"Content-Type": "text/plain"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


@pytest.fixture
def moto_auth(s3_server: Any, s3_client: Any, s3_bucket: str) -> Iterator[AuthMoto]:
    """Switch the session's moto server to enforce IAM for one test (and back off afterwards).

    The session server runs with authentication off; moto's ``/moto-api/reset-auth`` turns it on
    at run time, so no second server is needed. Users and keys are made first, while it is off.
    """
    import boto3

    iam = boto3.client("iam", endpoint_url=s3_server.endpoint_url, region_name="us-east-1")
    suffix = uuid.uuid4().hex[:8]
    keys = {}
    for role in ("reader", "nobody"):
        user = f"labelq-{role}-{suffix}"
        iam.create_user(UserName=user)
        key = iam.create_access_key(UserName=user)["AccessKey"]
        keys[role] = Credentials(key["AccessKeyId"], key["SecretAccessKey"])
    iam.put_user_policy(
        UserName=f"labelq-reader-{suffix}",
        PolicyName="s3-all",
        PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        ),
    )
    _set_moto_auth(s3_server.endpoint_url, "0")
    try:
        yield AuthMoto(s3_server.endpoint_url, s3_bucket, keys["reader"], keys["nobody"])
    finally:
        _set_moto_auth(s3_server.endpoint_url, "inf")


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SQLStore]:
    """An empty result table on SQLite (a temporary file) and on the session's PostgreSQL."""
    if request.param == "sqlite":
        store = SQLStore(f"sqlite:///{tmp_path / 'results.db'}")
    else:
        import sqlalchemy as sa

        store = SQLStore(request.getfixturevalue("postgres_url"))
        with store.engine.begin() as conn:
            conn.execute(sa.text(f"DELETE FROM {TABLE}"))
    try:
        yield store
    finally:
        store.close()
