"""The SQL record table (SQLite for ``labelq run``, PostgreSQL at scale).

One row per (job, uri, model): a job's export is exactly what it wrote, however later jobs
relabel the same objects; the skip check reads the newest row of an object across jobs
through the ``(uri, model, etag)`` index. A record without a job is stored under job ``''``.

Every error that leaves this module is a one-line UsageError whose text went through
:func:`labelq.urls.scrub`: the driver's messages may quote the URL, its host, or a piece of a
password that a parser split at an unencoded ``@``, and they end up in ``status``, ``ping`` and
worker logs.

PostgreSQL batches go in by COPY into a per-connection temporary table, then one
``INSERT ... SELECT ... ON CONFLICT DO UPDATE`` (``docs/benchmarks.md``, "Durable sinks":
faster than multi-row ``INSERT ... VALUES ... ON CONFLICT``); SQLite keeps a plain upsert.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import quote, unquote

from ..config import redact
from ..errors import UsageError
from ..records import FIELDS, Record
from ..urls import scrub
from .base import RevisionCounts

logger = logging.getLogger(__name__)

TABLE = "labelq_records"
LEGACY_TABLE = "labelq_results"  # before per-job rows: one row per (uri, model); SQLite copies it over once
STAGE = "labelq_records_stage"  # PostgreSQL: per-connection temporary table the COPY fills
KEY = ("job", "uri", "model")
PG_METHODS = ("copy", "values", "executemany")  # how PostgreSQL batches are written; bench/sinks.py measures them
_IN_SLICE = 900  # URIs per IN (...) of get_many: under SQLite's variable limit
_VALUES_ROWS = 1000  # rows per multi-row INSERT (13 columns: 13 000 parameters, under PostgreSQL's 65 535)


class SQLStore:
    """The SQL record table through SQLAlchemy Core."""

    per_chunk = False

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> SQLStore:
        return cls(url, **kwargs)

    def __init__(self, url: str, *, pg_method: str = "copy", **_: Any) -> None:
        import sqlalchemy as sa

        if pg_method not in PG_METHODS:
            raise ValueError(f"pg_method must be one of {PG_METHODS}, not {pg_method!r}")
        self.pg_method = pg_method
        self._urls: tuple[str, ...] = (url,)  # what error texts are scrubbed of
        url = _encode_userinfo(url)
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://") :]
        elif url.startswith("postgres://"):
            url = "postgresql+psycopg://" + url[len("postgres://") :]
        self._urls = (*self._urls, url)
        try:
            self.engine = sa.create_engine(url, future=True, pool_pre_ping=True)
        except Exception as exc:  # noqa: BLE001 - bad URL, missing driver
            raise UsageError(self._scrub(f"cannot use result database {redact(url)}: {exc}")) from None
        self.dialect = self.engine.dialect.name
        if self.dialect not in ("postgresql", "sqlite"):
            raise UsageError(f"result database {self.dialect} is not supported (use sqlite or postgresql)")
        meta = sa.MetaData()
        self.table = sa.Table(
            TABLE,
            meta,
            sa.Column("job", sa.Text, primary_key=True),  # '' when a record has no job; never NULL
            sa.Column("uri", sa.Text, primary_key=True),
            sa.Column("model", sa.Text, primary_key=True),
            sa.Column("model_revision", sa.Text),
            sa.Column("etag", sa.Text),
            sa.Column("label", sa.Text),
            sa.Column("score", sa.Float),
            sa.Column("top_k", sa.Text),
            sa.Column("status", sa.String(8), nullable=False),
            sa.Column("error_kind", sa.String(32)),
            sa.Column("error", sa.Text),
            sa.Column("worker", sa.Text),
            sa.Column("processed_at", sa.String(32)),
            sa.Index(f"{TABLE}_skip", "uri", "model", "etag"),
        )
        self._columns = [c.name for c in self.table.columns]
        for attempt in (1, 2):
            try:
                had_table = sa.inspect(self.engine).has_table(TABLE)
                meta.create_all(self.engine)
                if not had_table and self.dialect == "sqlite":
                    self._copy_legacy()
                break
            except sa.exc.OperationalError as exc:
                first = (str(exc.orig).strip().splitlines() or [type(exc.orig).__name__])[0]
                raise UsageError(self._scrub(f"cannot reach result database {redact(url)}: {first}")) from None
            except (sa.exc.IntegrityError, sa.exc.ProgrammingError) as exc:
                if attempt == 2 or exc.connection_invalidated or "connection option" in str(exc) or \
                        "bad value for" in str(exc):  # a bad ?option= of the URL, not a race
                    raise UsageError(self._error("cannot use result database", exc)) from None
                # two workers created the table at once: the second look finds it
            except sa.exc.SQLAlchemyError as exc:
                raise UsageError(self._error("cannot use result database", exc)) from None

    def _scrub(self, text: str) -> str:
        return scrub(text, *self._urls)

    def _error(self, doing: str, exc: BaseException) -> str:
        """One scrubbed line: what failed, and the driver's first line (SQLAlchemy adds the SQL and its
        parameters, which are records, not what an operator needs)."""
        orig = getattr(exc, "orig", None) or exc
        first = (str(orig).strip().splitlines() or [""])[0]
        return self._scrub(f"{doing} {redact(self._urls[-1])}: {type(orig).__name__}: {first}")

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Driver and SQLAlchemy errors out of a call → one scrubbed UsageError line."""
        import sqlalchemy as sa

        try:
            yield
        except (sa.exc.SQLAlchemyError, OSError) as exc:
            raise UsageError(self._error(doing, exc)) from None

    def _copy_legacy(self) -> None:
        """A ``labelq run`` database from before per-job rows: copy its records in, so a rerun still skips them.

        PostgreSQL tables can be large: there the copy is left to the operator (docs/deploy.md has the SQL).
        """
        import sqlalchemy as sa

        if not sa.inspect(self.engine).has_table(LEGACY_TABLE):
            return
        old = {c["name"] for c in sa.inspect(self.engine).get_columns(LEGACY_TABLE)}
        cols = [c for c in self._columns if c in old]
        picks = ", ".join("COALESCE(job, '')" if c == "job" else c for c in cols)
        with self.engine.begin() as conn:
            n = conn.execute(sa.text(f"INSERT INTO {TABLE} ({', '.join(cols)}) SELECT {picks} FROM {LEGACY_TABLE}"))
        logger.info("copied %d records from %s into %s", n.rowcount, LEGACY_TABLE, TABLE)

    # ------------------------------------------------------------------ write

    def write(self, records: Sequence[Record], *, chunk: str | None = None) -> None:
        """Upsert a batch of records by (job, uri, model) in one transaction."""
        if not records:
            return
        latest: dict[tuple[str, str, str], dict[str, Any]] = {}
        for rec in records:  # one row per key: ON CONFLICT may not touch a row twice in one statement
            row = _row(rec)
            latest[(row["job"], row["uri"], row["model"])] = row
        rows = list(latest.values())
        with self._errors("cannot write records to"):
            if self.dialect == "sqlite":
                self._write_executemany(rows)
            elif self.pg_method == "copy":
                self._write_copy(rows)
            elif self.pg_method == "values":
                self._write_values(rows)
            else:
                self._write_executemany(rows)

    def _upsert(self, stmt: Any) -> Any:
        return stmt.on_conflict_do_update(
            index_elements=list(KEY), set_={name: stmt.excluded[name] for name in self._columns if name not in KEY}
        )

    def _insert(self) -> Any:
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
        return insert(self.table)

    def _write_executemany(self, rows: list[dict[str, Any]]) -> None:
        with self.engine.begin() as conn:
            conn.execute(self._upsert(self._insert()), rows)

    def _write_values(self, rows: list[dict[str, Any]]) -> None:
        """Multi-row ``INSERT ... VALUES (...), (...) ... ON CONFLICT DO UPDATE``, straight through psycopg
        (SQLAlchemy would compile a fresh 13 000-parameter statement per batch)."""
        cols = ", ".join(self._columns)
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in self._columns if c not in KEY)
        one = "(" + ", ".join(["%s"] * len(self._columns)) + ")"
        with self.engine.begin() as conn, conn.connection.driver_connection.cursor() as cur:  # type: ignore[union-attr]
            for start in range(0, len(rows), _VALUES_ROWS):
                part = rows[start : start + _VALUES_ROWS]
                sql = (f"INSERT INTO {TABLE} ({cols}) VALUES {', '.join([one] * len(part))} "
                       f"ON CONFLICT ({', '.join(KEY)}) DO UPDATE SET {updates}")
                cur.execute(sql, [row[c] for row in part for c in self._columns])

    def _write_copy(self, rows: list[dict[str, Any]]) -> None:
        cols = ", ".join(self._columns)
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in self._columns if c not in KEY)
        with self.engine.begin() as conn:
            fairy = conn.connection  # the pooled DBAPI connection: the temp table lives as long as it does
            with fairy.driver_connection.cursor() as cur:  # type: ignore[union-attr]
                try:
                    if not fairy.info.get(STAGE):
                        cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {STAGE} (LIKE {TABLE} INCLUDING DEFAULTS) "
                                    "ON COMMIT DELETE ROWS")
                        fairy.info[STAGE] = True
                    with cur.copy(f"COPY {STAGE} ({cols}) FROM STDIN") as copy:
                        for row in rows:
                            copy.write_row([row[c] for c in self._columns])
                    cur.execute(f"INSERT INTO {TABLE} ({cols}) SELECT {cols} FROM {STAGE} "
                                f"ON CONFLICT ({', '.join(KEY)}) DO UPDATE SET {updates}")
                except BaseException:
                    fairy.info.pop(STAGE, None)  # a rolled-back transaction takes a just-created table with it
                    raise

    # ------------------------------------------------------------------ read

    def get_many(self, model: str, uris: Sequence[str]) -> dict[str, Record]:
        """The newest record (by processed_at) of each of these objects for ``model``, across jobs."""
        import sqlalchemy as sa

        t = self.table
        best: dict[str, Any] = {}
        uris = list(dict.fromkeys(uris))
        with self._errors("cannot read records from"), self.engine.connect() as conn:
            for start in range(0, len(uris), _IN_SLICE):
                query = sa.select(t).where(t.c.uri.in_(uris[start : start + _IN_SLICE]), t.c.model == model)
                for row in conn.execute(query):
                    have = best.get(row.uri)
                    if have is None or (row.processed_at or "", row.job) > (have.processed_at or "", have.job):
                        best[row.uri] = row
        return {uri: _record(row) for uri, row in best.items()}

    def job_get_many(self, job: str, model: str, uris: Sequence[str]) -> dict[str, Record]:
        """This job's record of each of these objects for ``model`` (primary-key lookups, 900 a query)."""
        import sqlalchemy as sa

        t = self.table
        out: dict[str, Record] = {}
        uris = list(dict.fromkeys(uris))
        with self.engine.connect() as conn:
            for start in range(0, len(uris), _IN_SLICE):
                query = sa.select(t).where(t.c.job == job, t.c.model == model,
                                           t.c.uri.in_(uris[start : start + _IN_SLICE]))
                for row in conn.execute(query):
                    out[row.uri] = _record(row)
        return out

    def iter_records(self, job: str | None = None) -> Iterator[Record]:
        """A job's records (``None``: every row), ordered by uri and model, streamed (server-side cursor)."""
        import sqlalchemy as sa

        t = self.table
        query = sa.select(t)
        if job is not None:
            query = query.where(t.c.job == job).order_by(t.c.uri, t.c.model)
        else:
            query = query.order_by(t.c.uri, t.c.model, t.c.job)
        with self._errors("cannot read records from"), self.engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=2000).execute(query)
            for row in result:
                yield _record(row)

    def scan_page(self, job: str, model: str, after: str | None, limit: int,
                  keep: Callable[[Record], bool]) -> tuple[list[Record], str | None]:
        """Records ``keep`` accepts of the job for ``model`` with a uri after ``after``, in uri order (the
        primary key's order): batches from the cursor on until ``limit`` are found; the next page's cursor."""
        import sqlalchemy as sa

        t = self.table
        found: list[Record] = []
        last = after
        batch = max(limit, 200)
        with self._errors("cannot read records from"), self.engine.connect() as conn:
            while True:
                query = sa.select(t).where(t.c.job == job, t.c.model == model)
                if last is not None:
                    query = query.where(t.c.uri > last)
                rows = conn.execute(query.order_by(t.c.uri).limit(batch)).fetchall()
                for row in rows:
                    rec = _record(row)
                    last = rec.uri
                    if keep(rec):
                        found.append(rec)
                        if len(found) == limit:
                            return found, last
                if len(rows) < batch:
                    return found, None

    def count(self, job: str | None = None) -> int:
        """Rows of a job (``None``: all rows)."""
        import sqlalchemy as sa

        query = sa.select(sa.func.count()).select_from(self.table)
        if job is not None:
            query = query.where(self.table.c.job == job)
        with self._errors("cannot count records in"), self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def revisions(self, job: str) -> RevisionCounts:
        """model → {model_revision → rows} of a job: one GROUP BY on the primary key's prefix."""
        import sqlalchemy as sa

        t = self.table
        query = (sa.select(t.c.model, t.c.model_revision, sa.func.count()).where(t.c.job == job)
                 .group_by(t.c.model, t.c.model_revision).order_by(t.c.model, t.c.model_revision))
        out: RevisionCounts = {}
        with self._errors("cannot read records from"), self.engine.connect() as conn:
            for model, rev, n in conn.execute(query):
                out.setdefault(model, {})[rev] = int(n)
        return out

    def jobs(self, limit: int = 20) -> list[dict[str, Any]]:
        """The table's newest jobs (by their last record): job, objects, records, ok, error, models, first, last."""
        import sqlalchemy as sa

        t = self.table
        ok = sa.func.sum(sa.case((t.c.status == "ok", 1), else_=0))
        query = (sa.select(t.c.job, sa.func.count(sa.distinct(t.c.uri)), sa.func.count(), ok,
                           sa.func.min(t.c.processed_at), sa.func.max(t.c.processed_at))
                 .group_by(t.c.job).order_by(sa.func.max(t.c.processed_at).desc()).limit(limit))
        with self.engine.connect() as conn:
            rows = [{"job": job, "objects": int(objects), "records": int(n), "ok": int(k or 0), "error": int(n) - int(k or 0),
                     "first": first, "last": last, "models": []}
                    for job, objects, n, k, first, last in conn.execute(query)]
            if rows:
                by_job = {row["job"]: row for row in rows}
                pairs = sa.select(t.c.job, t.c.model).where(t.c.job.in_(list(by_job))).distinct().order_by(t.c.model)
                for job, model in conn.execute(pairs):
                    by_job[job]["models"].append(model)
        return rows

    def tally(self, job: str) -> dict[str, Any] | None:
        """One job's counts (None when it has no rows): objects, records by status, ok records by (model, label),
        error records by kind, first and last written."""
        import sqlalchemy as sa

        t = self.table
        where = t.c.job == job
        with self.engine.connect() as conn:
            objects, first, last = conn.execute(
                sa.select(sa.func.count(sa.distinct(t.c.uri)), sa.func.min(t.c.processed_at), sa.func.max(t.c.processed_at))
                .where(where)).one()
            if not objects:
                return None
            labels: dict[str, dict[str, int]] = {}
            errors: dict[str, int] = {}
            status: dict[str, int] = {}
            query = (sa.select(t.c.model, t.c.status, t.c.label, t.c.error_kind, sa.func.count()).where(where)
                     .group_by(t.c.model, t.c.status, t.c.label, t.c.error_kind))
            for model, state, label, kind, n in conn.execute(query):
                status[state] = status.get(state, 0) + int(n)
                if state == "ok":
                    labels.setdefault(model, {})[label or ""] = int(n)
                else:
                    errors[kind or "model_error"] = errors.get(kind or "model_error", 0) + int(n)
        return {"job": job, "objects": int(objects), "status": status, "labels": labels, "errors": errors,
                "first": first, "last": last}

    def close(self) -> None:
        self.engine.dispose()


def _encode_userinfo(url: str) -> str:
    """Percent-encode a user name and password that hold an unencoded ``@``.

    SQLAlchemy ends the userinfo at the first ``@`` and takes the rest of the password for the host
    (connecting elsewhere, and printing it in its error); the last ``@`` is where it really ends, as
    for every other URL labelq reads.
    """
    scheme, _, rest = url.partition("://")
    userinfo, at, tail = rest.rpartition("@")
    if scheme.split("+")[0] not in ("postgresql", "postgres") or not at or "@" not in userinfo:
        return url
    user, colon, password = userinfo.partition(":")
    encoded = quote(unquote(user), safe="") + (":" + quote(unquote(password), safe="") if colon else "")
    return f"{scheme}://{encoded}@{tail}"


def _row(rec: Record) -> dict[str, Any]:
    row = rec.to_dict()
    row["top_k"] = json.dumps(row["top_k"], separators=(",", ":"))
    row["job"] = row["job"] or ""
    return row


def _record(row: Any) -> Record:
    data = {name: getattr(row, name) for name in FIELDS}
    data["job"] = data["job"] or None
    return Record.from_dict(data)
