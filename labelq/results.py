"""Result stores: where records land, how reruns know what is done, and export.

* :class:`SQLStore`: the result table (SQLite by default, PostgreSQL by URL),
  upserted by (uri, model) with the etag.
* The Redis store of distributed jobs lives in :mod:`labelq.redis_store`; both
  answer the same calls (``write``, ``done``, ``iter_records``), and
  :func:`open_store` picks one by URL.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import Any, Protocol

from .errors import RETRYABLE_KINDS, UsageError
from .records import FIELDS, Record
from .storage import ObjectRef

logger = logging.getLogger(__name__)

TABLE = "labelq_results"


class ResultStore(Protocol):
    def write(self, records: Sequence[Record]) -> None: ...

    def done(self, refs: Sequence[ObjectRef], models: Sequence[str]) -> set[str]: ...

    def iter_records(self, job: str | None = None) -> Iterator[Record]: ...


def is_final(etag: str | None, status: str, error_kind: str | None, want_etag: str | None) -> bool:
    """A stored record settles an object when its etag matches and it is not a retryable error.

    An object listed without an etag (an s3:// line of a manifest) is never settled: there is
    no way to know it did not change without asking the store.
    """
    return want_etag is not None and etag == want_etag and (status == "ok" or error_kind not in RETRYABLE_KINDS)


def skip_done(
    refs: Iterable[ObjectRef], store: ResultStore, models: Sequence[str], *, chunk: int = 500
) -> Iterator[ObjectRef]:
    """Lazily drop refs whose every model already has a final record with the same etag."""
    it = iter(refs)
    while group := list(islice(it, chunk)):
        finished = store.done(group, models)
        for ref in group:
            if ref.uri not in finished:
                yield ref


class SQLStore:
    """The SQL result table through SQLAlchemy Core."""

    def __init__(self, url: str) -> None:
        import sqlalchemy as sa

        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://") :]
        elif url.startswith("postgres://"):
            url = "postgresql+psycopg://" + url[len("postgres://") :]
        try:
            self.engine = sa.create_engine(url, future=True, pool_pre_ping=True)
        except Exception as exc:  # noqa: BLE001 - bad URL, missing driver
            raise UsageError(f"cannot use result database {_safe(url)}: {exc}") from None
        self.dialect = self.engine.dialect.name
        meta = sa.MetaData()
        self.table = sa.Table(
            TABLE,
            meta,
            sa.Column("uri", sa.Text, primary_key=True),
            sa.Column("model", sa.Text, primary_key=True),
            sa.Column("etag", sa.Text),
            sa.Column("label", sa.Text),
            sa.Column("score", sa.Float),
            sa.Column("top_k", sa.Text),
            sa.Column("status", sa.String(8), nullable=False),
            sa.Column("error_kind", sa.String(32)),
            sa.Column("error", sa.Text),
            sa.Column("job", sa.Text),
            sa.Column("worker", sa.Text),
            sa.Column("processed_at", sa.String(32)),
            sa.Index(f"{TABLE}_job", "job"),
        )
        try:
            meta.create_all(self.engine)
        except sa.exc.OperationalError as exc:
            raise UsageError(f"cannot reach result database {_safe(url)}: {str(exc.orig).strip().splitlines()[0]}") from None

    def write(self, records: Sequence[Record]) -> None:
        """Upsert a batch of records in one transaction."""
        if not records:
            return
        rows = [_row(r) for r in records]
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        elif self.dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
        else:
            raise UsageError(f"result database {self.dialect} is not supported (use sqlite or postgresql)")
        stmt = insert(self.table)
        stmt = stmt.on_conflict_do_update(
            index_elements=["uri", "model"],
            set_={name: stmt.excluded[name] for name in FIELDS if name not in ("uri", "model")},
        )
        with self.engine.begin() as conn:
            conn.execute(stmt, rows)

    def done(self, refs: Sequence[ObjectRef], models: Sequence[str]) -> set[str]:
        """URIs among ``refs`` for which every model has a final record with the same etag."""
        import sqlalchemy as sa

        want = {ref.uri: ref.etag for ref in refs}
        t = self.table
        query = sa.select(t.c.uri, t.c.model, t.c.etag, t.c.status, t.c.error_kind).where(
            t.c.uri.in_(list(want)), t.c.model.in_(list(models))
        )
        settled: dict[str, set[str]] = {}
        with self.engine.connect() as conn:
            for uri, model, etag, status, kind in conn.execute(query):
                if is_final(etag, status, kind, want[uri]):
                    settled.setdefault(uri, set()).add(model)
        need = set(models)
        return {uri for uri, have in settled.items() if have >= need}

    def iter_records(self, job: str | None = None) -> Iterator[Record]:
        """Stream stored records (server-side cursor on PostgreSQL), ordered by uri and model."""
        import sqlalchemy as sa

        t = self.table
        query = sa.select(*[t.c[name] for name in FIELDS]).order_by(t.c.uri, t.c.model)
        if job is not None:
            query = query.where(t.c.job == job)
        with self.engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=2000).execute(query)
            for row in result:
                yield Record.from_dict(dict(row._mapping))

    def get_many(self, model: str, uris: Sequence[str]) -> dict[str, Record]:
        """Stored records of one model for these URIs."""
        import sqlalchemy as sa

        t = self.table
        query = sa.select(*[t.c[name] for name in FIELDS]).where(t.c.model == model, t.c.uri.in_(list(uris)))
        with self.engine.connect() as conn:
            return {row.uri: Record.from_dict(dict(row._mapping)) for row in conn.execute(query)}

    def count(self, job: str | None = None) -> int:
        import sqlalchemy as sa

        query = sa.select(sa.func.count()).select_from(self.table)
        if job is not None:
            query = query.where(self.table.c.job == job)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def close(self) -> None:
        self.engine.dispose()


def _row(rec: Record) -> dict[str, Any]:
    row = rec.to_dict()
    row["top_k"] = json.dumps(row["top_k"], separators=(",", ":"))
    return row


def _safe(url: str) -> str:
    from .config import redact

    return redact(url)


def open_store(url: str, **kwargs: Any) -> Any:
    """A result store by URL: redis:// / rediss:// or an SQLAlchemy URL (sqlite://, postgresql://)."""
    if url.startswith(("redis://", "rediss://", "unix://")):
        from .redis_store import RedisStore

        return RedisStore.from_url(url, **kwargs)
    if url.startswith(("sqlite:", "postgresql", "postgres:")):
        return SQLStore(url)
    raise UsageError(f"unsupported result store {_safe(url)}: use redis://, sqlite:/// or postgresql://")
