"""Record stores: where records land, how reruns know what is done, and reading them back.

* :mod:`.base`: the store protocol and the one "done" rule (:func:`settled`).
* :mod:`.redis`: records in Redis hashes (the small-deployment default, with a TTL).
* :mod:`.sql`: the SQL record table (SQLite for ``labelq run``, PostgreSQL at scale).
* :mod:`.parquet`: a Parquet dataset in a folder or on S3, one file per chunk.
* :mod:`.lake`: a Delta Lake table: the Parquet files per chunk, committed in batches, compacted.

:func:`open_store` picks one by URL; :mod:`labelq.services` decides which URL. Importing this
package imports no database driver, Redis client or pyarrow.
"""

from __future__ import annotations

from typing import Any

from ..errors import UsageError
from ..redis_client import is_redis_url
from .base import RecordStore, RevisionCounts, count_revisions, is_final, older_revisions, settled, skip_done
from .parquet import ParquetStore
from .redis import RedisStore
from .sql import TABLE, SQLStore

__all__ = [
    "TABLE",
    "ParquetStore",
    "RecordStore",
    "RedisStore",
    "RevisionCounts",
    "SQLStore",
    "count_revisions",
    "is_final",
    "older_revisions",
    "open_store",
    "settled",
    "skip_done",
]


def open_store(url: str, **kwargs: Any) -> Any:
    """A record store by URL: redis://, rediss://, unix://; sqlite:// or postgresql://; parquet:///abs/folder or
    parquet+s3://bucket/prefix; delta:///abs/folder or delta+s3://bucket/prefix. ``kwargs``: ``ttl`` (Redis),
    ``pg_method`` (SQL), ``settings``/``s3_client`` (Parquet and Delta on S3; Delta: ``settings`` also names the
    job Redis its writers share commit batches through); a store ignores the ones it has no use for."""
    from ..config import redact

    if is_redis_url(url):
        return RedisStore.from_url(url, **kwargs)
    if url.startswith(("sqlite:", "postgresql", "postgres:")):
        return SQLStore(url, **kwargs)
    if url.startswith(("parquet://", "parquet+s3://")):
        return ParquetStore.from_url(url, **kwargs)
    if url.startswith(("delta://", "delta+s3://")):
        from .lake import DeltaStore  # imports deltalake only when asked for

        return DeltaStore.from_url(url, **kwargs)
    raise UsageError(
        f"unsupported result store {redact(url)}: use redis://, sqlite:///, postgresql://, parquet:///, parquet+s3://, "
        "delta:/// or delta+s3://"
    )

