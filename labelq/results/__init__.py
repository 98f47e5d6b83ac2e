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
from ..urls import REDIS_SCHEMES
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


# URL scheme → "module:Class" under labelq.results; each class has ``from_url(url, **kwargs)``. A new record store
# is one module and one line here (the class imported on first use: deltalake loads only for delta:// URLs).
SCHEMES: dict[str, str] = {
    **{scheme: "redis:RedisStore" for scheme in REDIS_SCHEMES},
    "sqlite": "sql:SQLStore",
    "postgresql": "sql:SQLStore",
    "postgres": "sql:SQLStore",
    "parquet": "parquet:ParquetStore",
    "parquet+s3": "parquet:ParquetStore",
    "delta": "lake:DeltaStore",
    "delta+s3": "lake:DeltaStore",
}


def open_store(url: str, **kwargs: Any) -> Any:
    """A record store by URL: redis://, rediss://, unix://, sentinel://; sqlite:// or postgresql://;
    parquet:///abs/folder or parquet+s3://bucket/prefix; delta:///abs/folder or delta+s3://bucket/prefix.
    ``kwargs``: ``ttl`` (Redis), ``pg_method`` (SQL), ``settings``/``s3_client`` (Parquet and Delta on S3; Delta:
    ``settings`` also names the job Redis its writers share commit batches through); a store ignores the ones
    it has no use for."""
    from importlib import import_module

    from ..config import redact

    scheme = url.split(":", 1)[0].lower()
    entry = SCHEMES.get(scheme) or SCHEMES.get(scheme.split("+", 1)[0])  # postgresql+psycopg: SQLAlchemy's driver form
    if entry is None:
        raise UsageError(f"unsupported result store {redact(url)}: use "
                         + ", ".join(sorted({f"{s}://" for s in SCHEMES if s not in REDIS_SCHEMES} | {"redis://"})))
    module, name = entry.split(":")
    cls = getattr(import_module(f"{__name__}.{module}"), name)
    return cls.from_url(url, **kwargs)
