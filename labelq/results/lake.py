"""The Delta Lake record store: Parquet files per chunk, committed to a Delta table in batches.

Layout under the table root (``delta:///abs/folder`` or ``delta+s3://bucket/prefix``)::

    _delta_log/                                   the Delta log (deltalake, delta-rs)
    job={job}/model={model}/part-{chunk}.parquet  one file per chunk and model, named as by the Parquet store
                                                  (with ``~`` for its ``%``: see :func:`part_key`)
    job={job}/model={model}/compact-{uuid}.parquet  written by ``labelq compact``
    _labelq/compact-{uuid}.json                   a compaction's intent, while it finishes

Rules (why no record is lost or doubled):

* A worker writes its chunk's file **once**: put-if-absent (``os.link`` locally, ``If-None-Match: *`` on S3).
  A redelivered chunk finds the file there and writes nothing; its records are the same objects.
* Files are committed in batches (:attr:`DeltaStore.commit_files` files, or when the oldest uncommitted one is
  :attr:`commit_seconds` old, checked at a write; and at close). With a Redis (the job Redis of a worker), the batch
  is shared by every writer of the table: a Redis list of written files and a lease, so one commit takes what all
  wrote; without one, each writer process batches its own files. A commit adds the files that are in the folder, not empty, not in the table and
  not named by a compaction intent; it carries the Delta app transaction ``labelq-commit`` at the next version, so
  two committers working from the same snapshot cannot both land (the loser reloads and recomputes). A process
  killed between writing and committing leaves a file that the next :meth:`DeltaStore.heal` (``labelq compact``,
  ``export``) commits: the folder is the truth, the in-process pending list only saves a listing.
* Compaction rewrites a folder's small files into files of about ``target_bytes``, writes an intent naming what it
  removes and adds, commits remove + add with the app transaction ``labelq-compact`` (two compactions from the
  same snapshot cannot both land), then truncates the removed files to 0 bytes (a tombstone: a late redelivery's
  put-if-absent still finds it, a committer skips it) and drops the intent. Any process finishes an intent left by
  a killed compactor. Appends never conflict with a compaction (Delta blind appends).

Readers: ``iter_records(job)`` commits that job's pending files first, then reads the table (one record per
(uri, model), the newest where a retry wrote one twice); ``get_many`` reads the table (newest per uri across jobs).
deltalake's Rust runtime does not survive a fork: open the store after any fork (labelq's workers do).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import quote

from .. import keys as redis_keys
from ..errors import UsageError
from ..records import Record, arrow_schema
from .base import RevisionCounts, count_revisions
from .parquet import SUFFIX, LocalFiles, ParquetStore, UriIndex, _encode, _from_row, _Part, local_root, read_newest

logger = logging.getLogger(__name__)

SCHEMES = ("delta://", "delta+s3://")
COMMIT_APP = "labelq-commit"
COMPACT_APP = "labelq-compact"
INTENTS = "_labelq/"
STAT_COLUMNS = ("uri", "job", "model", "model_revision", "label", "status", "processed_at")
COMMIT_TRIES = 20
LEASE_S = 120  # seconds a committer holds the shared batch's lease (a commit of a few thousand files takes seconds)
SHARED_BATCH = 4  # a shared commit takes up to this many batches of a backlog
HEAL_EVERY_S = 30.0  # job_get_many commits a job's leftover chunk files at most this often (verification)
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class DeltaStore:
    """Records in a Delta table (see the module docstring)."""

    per_chunk = True

    def __init__(
        self,
        files: Any,
        table_uri: str,
        *,
        storage_options: dict[str, str] | None = None,
        commit_files: int = 500,
        commit_seconds: float = 300.0,
        url: str = "",
        redis: Any = None,
    ) -> None:
        self.files = files
        self.redis = redis
        table_id = hashlib.blake2b(table_uri.encode(), digest_size=8).hexdigest()
        self._queue = redis_keys.lake_pending(table_id)
        self._lease = redis_keys.lake_lease(table_id)
        self.table_uri = table_uri
        self.storage_options = storage_options or {}
        self.commit_files = commit_files
        self.commit_seconds = commit_seconds
        self.url = url
        self._pending: list[str] = []
        self._last_commit = time.monotonic()
        self._dataset: Any = None
        self._index: dict[str, UriIndex] = {}  # model → its files' uri ranges (get_many)
        self._healed: dict[str, float] = {}  # job → when job_get_many last committed its leftover files
        self.commits = 0  # commits this store made (bench, tests)
        self._ensure_table()

    @classmethod
    def from_url(cls, url: str, *, s3_client: Any = None, settings: Any = None, redis: Any = None, **_: Any) -> DeltaStore:
        """``delta:///abs/folder`` or ``delta+s3://bucket/prefix`` (S3: the endpoint, region and credentials of
        ``settings``, as for images; or ``s3_client`` for the data files). With ``settings``, writers share their
        commit batches through the job Redis (or ``redis``)."""
        kw: dict[str, Any] = {"redis": redis}
        if settings is not None:
            kw["commit_files"] = settings.lake_commit_files
            kw["commit_seconds"] = settings.lake_commit_seconds
            if redis is None:
                from ..redis_client import connect

                kw["redis"] = connect(settings.jobs_redis, master=settings.sentinel_master, check=False)
        if url.startswith("delta+s3://"):
            bucket, _sep, prefix = url[len("delta+s3://") :].partition("/")
            if not bucket:
                raise UsageError(f"result store {url}: name a bucket, as in delta+s3://bucket/prefix")
            # the Parquet store's S3 files, with its client (the images' endpoint, region, credential chain)
            files: Any = ParquetStore.from_url(f"parquet+s3://{bucket}/{prefix}", s3_client=s3_client, settings=settings).files
            prefix = prefix.strip("/")
            uri = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
            return cls(files, uri, storage_options=_s3_options(files.client), url=url, **kw)
        if url.startswith("delta://"):
            root = local_root(url)
            return cls(LocalFiles(root), str(root), url=url, **kw)
        raise UsageError(f"unsupported Delta result store {url}: use delta:///abs/folder or delta+s3://bucket/prefix")

    # ------------------------------------------------------------------ table

    def _ensure_table(self) -> None:
        """Create the table when the folder has none (a racing creator is fine); one clear line when it cannot."""
        try:
            from deltalake import DeltaTable
        except ImportError:
            raise UsageError(f"result store {self.url}: the Delta store needs deltalake: pip install 'labelq[lake]'") from None
        try:
            if not DeltaTable.is_deltatable(self.table_uri, storage_options=self.storage_options):
                DeltaTable.create(self.table_uri, schema=arrow_schema(), mode="ignore", storage_options=self.storage_options)
        except Exception as exc:  # noqa: BLE001  (delta-rs raises many kinds; one line for the user)
            try:
                there = DeltaTable.is_deltatable(self.table_uri, storage_options=self.storage_options)
            except Exception:  # noqa: BLE001
                there = False
            if not there:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                raise UsageError(f"result store {self.url}: cannot open or create the Delta table: {first}") from None

    def table(self) -> Any:
        from deltalake import DeltaTable

        return DeltaTable(self.table_uri, storage_options=self.storage_options)

    @staticmethod
    def active(dt: Any) -> set[str]:
        """Keys (folder-relative, as the files are named) of the files in the table's snapshot."""
        import pyarrow as pa

        return set(pa.table(dt.get_add_actions(flatten=True)).column("path").to_pylist())

    # ------------------------------------------------------------------ write

    def write(self, records: Sequence[Record], *, chunk: str | None = None) -> None:
        """One file per (job, model) among ``records`` at the chunk's key, written once; then commit when due."""
        groups: dict[tuple[str | None, str], dict[str, Record]] = {}
        for rec in records:
            groups.setdefault((rec.job, rec.model), {})[rec.uri] = rec
        name = chunk if chunk is not None else uuid.uuid4().hex
        new = []
        for (job, model), by_uri in groups.items():
            key = part_key(job, model, name)
            if self.files.put_new(key, _encode([by_uri[u] for u in sorted(by_uri)])):
                new.append(key)
        if self.redis is not None:
            self._push(new)
            return
        self._pending.extend(new)
        if len(self._pending) >= self.commit_files or (
            self._pending and time.monotonic() - self._last_commit >= self.commit_seconds
        ):
            self.commit()

    def _push(self, new: Sequence[str]) -> None:
        """Add written files to the shared batch; commit it when it is due (N files, or the oldest T seconds old)."""
        now = time.time()
        pipe = self.redis.pipeline()
        if new:
            pipe.rpush(self._queue, *(f"{now:.3f}\t{k}" for k in new))
        pipe.llen(self._queue)
        pipe.lindex(self._queue, 0)
        *_, size, first = pipe.execute()
        if not size or first is None:
            return
        first = first.decode() if isinstance(first, bytes) else first
        if size >= self.commit_files or now - float(first.split("\t", 1)[0]) >= self.commit_seconds:
            self.commit_shared()

    def commit_shared(self) -> int:
        """Commit the shared batch (up to a few batches of it) if no other writer holds the lease; files added.
        Killed between its commit and its trim, the next committer finds those files in the table and skips them."""
        token = uuid.uuid4().hex
        if not self.redis.set(self._lease, token, nx=True, ex=LEASE_S):
            return 0
        try:
            entries = self.redis.lrange(self._queue, 0, self.commit_files * SHARED_BATCH - 1)
            keys = [(e.decode() if isinstance(e, bytes) else e).split("\t", 1)[1] for e in entries]
            added = self._commit(keys) if keys else 0
            self.redis.ltrim(self._queue, len(entries), -1)
            return added
        finally:
            self.redis.eval(_RELEASE, 1, self._lease, token)

    def commit(self, keys: Sequence[str] | None = None) -> int:
        """Commit ``keys`` (default: this process's pending files) that are not in the table yet; the number added."""
        todo = list(self._pending if keys is None else keys)
        added = self._commit(todo) if todo else 0
        done = set(todo)
        self._pending = [k for k in self._pending if k not in done]
        self._last_commit = time.monotonic()
        return added

    def _commit(self, keys: Sequence[str]) -> int:
        from deltalake import CommitProperties
        from deltalake.exceptions import CommitFailedError
        from deltalake.transaction import Transaction

        for attempt in range(COMMIT_TRIES):
            dt = self.table()  # 1. the snapshot
            version = dt.transaction_version(COMMIT_APP) or 0
            held = self._intent_keys()  # 2. files a compaction took (read after the snapshot)
            active = self.active(dt)
            actions = []
            for key in dict.fromkeys(keys):  # 3. the files themselves (empty: a compaction's tombstone)
                if key in active or key in held:
                    continue
                action = self._add_action(key)
                if action is not None:
                    actions.append(action)
            if not actions:
                return 0
            try:
                dt.create_write_transaction(
                    actions, mode="append", schema=arrow_schema(),
                    commit_properties=CommitProperties(app_transactions=[Transaction(COMMIT_APP, version + 1)]),
                )
            except CommitFailedError:  # another committer landed from the same snapshot: look again
                logger.debug("commit raced (attempt %d); retrying", attempt + 1)
                time.sleep(min(0.05 * 2**attempt, 2.0))
                continue
            self.commits += 1
            self.refresh()
            logger.debug("committed %d files to %s", len(actions), self.url)
            return len(actions)
        raise RuntimeError(f"{self.url}: could not commit after {COMMIT_TRIES} tries (too many committers at once?)")

    def _add_action(self, key: str) -> Any:
        """The Delta add action of one data file (size, stats from its footer); None when it is gone or empty."""
        import pyarrow.parquet as pq
        from deltalake.transaction import AddAction

        try:
            data = self.files.get(key)
        except FileNotFoundError:
            return None
        if not data:
            return None

        meta = pq.read_metadata(io.BytesIO(data))
        return AddAction(_delta_path(key), len(data), {}, int(time.time() * 1000), True, json.dumps(_stats(meta)))

    def pending_keys(self, prefix: str = "") -> list[str]:
        """Data files in the folder (under ``prefix``, a ``job=…/`` folder or the root) that the table lacks."""
        active = self.active(self.table())
        held = self._intent_keys()
        out = []
        for key, size in self._data_files(prefix):
            if size and key not in active and key not in held:
                out.append(key)
        return out

    def heal(self, job: str | None = None) -> int:
        """Commit every data file in the folder (of ``job``, or all) that is not in the table: what a killed
        writer left, and the shared batch's tail. Returns the number of files committed."""
        self.finish_intents()
        added = 0
        if job is None and self.redis is not None:
            added += self.commit_shared()  # the shared batch first: that also trims its list
        prefix = f"job={_safe(job)}/" if job is not None else ""
        keys = self.pending_keys(prefix)
        for i in range(0, len(keys), max(self.commit_files, 1)):
            added += self._commit(keys[i : i + self.commit_files])
        return added

    def _data_files(self, prefix: str) -> Iterator[tuple[str, int]]:
        job_dirs = [prefix] if prefix else [d for d in self.files.subdirs("") if d.startswith("job=")]
        for job_dir in job_dirs:
            for model_dir in self.files.subdirs(job_dir):
                for key, size in self.files.sizes(model_dir).items():
                    if key.endswith(SUFFIX):
                        yield key, size

    # ------------------------------------------------------------------ compaction

    def _intents(self) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for key in self.files.ls(INTENTS):
            if key.endswith(".json"):
                try:
                    out.append((key, json.loads(self.files.get(key))))
                except (FileNotFoundError, ValueError):
                    continue
        return out

    def _intent_keys(self) -> set[str]:
        return {k for _, intent in self._intents() for k in intent["remove"]}

    def finish_intents(self) -> int:
        """Finish what killed compactors left: a landed compaction's removed files are truncated, a lost one's
        new files deleted. An intent whose transaction version is still ahead of the table may yet land: left."""
        intents = self._intents()
        if not intents:
            return 0
        dt = self.table()
        version = dt.transaction_version(COMPACT_APP) or 0
        active = self.active(dt)
        finished = 0
        for key, intent in intents:
            if intent["version"] > version:
                continue
            if all(k in active for k in intent["add"]):
                for k in intent["remove"]:
                    self.files.put(k, b"")
            else:
                for k in intent["add"]:
                    self.files.delete(k)
            self.files.delete(key)
            finished += 1
        return finished

    def compact(self, target_bytes: int = 128 * 1024 * 1024, *, min_files: int = 2) -> dict[str, int]:
        """Rewrite each (job, model) folder's small files into files of about ``target_bytes``.

        Returns ``{"removed": files, "added": files, "records": rows rewritten}``; all zero when there was
        nothing to do or another compaction landed first (nothing of this one stays)."""
        import pyarrow as pa
        import pyarrow.parquet as pq
        from deltalake import CommitProperties
        from deltalake.exceptions import CommitFailedError
        from deltalake.transaction import AddAction, RemoveAction, Transaction

        self.finish_intents()
        dt = self.table()
        version = dt.transaction_version(COMPACT_APP) or 0
        adds = pa.table(dt.get_add_actions(flatten=True)).select(["path", "size_bytes"]).to_pylist()
        folders: dict[str, list[tuple[str, int]]] = {}
        for row in adds:
            key = row["path"]
            if row["size_bytes"] < target_bytes // 2:
                folders.setdefault(key.rsplit("/", 1)[0], []).append((key, row["size_bytes"]))
        bins: list[tuple[str, list[str]]] = []
        for folder, items in sorted(folders.items()):
            current: list[str] = []
            size = 0
            for key, n in sorted(items):
                if current and size + n > target_bytes:
                    bins.append((folder, current))
                    current, size = [], 0
                current.append(key)
                size += n
            bins.append((folder, current))
        bins = [(f, keys) for f, keys in bins if len(keys) >= min_files]
        if not bins:
            return {"removed": 0, "added": 0, "records": 0}
        now = int(time.time() * 1000)
        actions: list[Any] = []
        new_keys: list[str] = []
        removed: list[str] = []
        rows = 0
        for folder, keys in bins:
            try:
                parts = [self.files.get(k) for k in keys]
            except FileNotFoundError:
                parts = []
            if not all(parts):  # a tombstone: another compaction took these since our snapshot
                continue
            table = pa.concat_tables(pq.read_table(io.BytesIO(data), schema=arrow_schema()) for data in parts)
            table = table.sort_by([("uri", "ascending"), ("processed_at", "ascending")])
            buf = io.BytesIO()
            pq.write_table(table, buf, compression="zstd", row_group_size=256 * 1024)
            data = buf.getvalue()
            new_key = f"{folder}/compact-{uuid.uuid4().hex}{SUFFIX}"
            self.files.put(new_key, data)
            new_keys.append(new_key)
            meta = pq.read_metadata(io.BytesIO(data))
            actions.append(AddAction(_delta_path(new_key), len(data), {}, now, False, json.dumps(_stats(meta))))
            actions.extend(RemoveAction(_delta_path(k), False, now) for k in keys)
            removed.extend(keys)
            rows += table.num_rows
        if not new_keys:
            return {"removed": 0, "added": 0, "records": 0}
        intent_key = f"{INTENTS}compact-{uuid.uuid4().hex}.json"
        self.files.put(intent_key, json.dumps({"version": version + 1, "add": new_keys, "remove": removed}).encode())
        try:
            dt.create_write_transaction(
                actions, mode="append", schema=arrow_schema(),
                commit_properties=CommitProperties(app_transactions=[Transaction(COMPACT_APP, version + 1)]),
            )
        except CommitFailedError:
            logger.info("another compaction landed first; dropping this one")
            for k in new_keys:
                self.files.delete(k)
            self.files.delete(intent_key)
            return {"removed": 0, "added": 0, "records": 0}
        for k in removed:  # tombstones: a late redelivery of these chunks writes nothing, a committer skips them
            self.files.put(k, b"")
        self.files.delete(intent_key)
        self.refresh()
        return {"removed": len(removed), "added": len(new_keys), "records": rows}

    # ------------------------------------------------------------------ read

    def dataset(self) -> Any:
        """The table as a pyarrow dataset (kept until this store commits or compacts, or :meth:`refresh`)."""
        if self._dataset is None:
            self._dataset = self.table().to_pyarrow_dataset()
        return self._dataset

    def refresh(self) -> None:
        """Forget the table snapshot the readers use: the next read loads the table again."""
        self._dataset = None
        self._index.clear()

    def _job_table(self, job: str) -> Any:
        """The job's rows, one per (uri, model): the newest where a retry of the job wrote an object twice."""
        import pyarrow.dataset as ds

        self.heal(job)
        self.refresh()
        table = self.dataset().to_table(filter=ds.field("job") == job)
        return _newest(table, ["model", "uri"]) if table.num_rows else table

    def iter_records(self, job: str) -> Iterator[Record]:
        for batch in self._job_table(job).to_batches(max_chunksize=4096):
            for row in batch.to_pylist():
                yield _from_row(row)

    def count(self, job: str) -> int:
        return int(self._job_table(job).num_rows)

    def revisions(self, job: str) -> RevisionCounts:
        return count_revisions(self.iter_records(job))

    def _model_index(self, model: str) -> UriIndex:
        """The table's files that can hold ``model``'s records and their uri ranges, from the log's statistics
        (no file is opened); kept until this store commits or compacts, or :meth:`refresh`."""
        if model not in self._index:
            import pyarrow as pa

            cols = pa.table(self.table().get_add_actions(flatten=True)).to_pydict()
            none = [None] * len(cols["path"])  # a column the log has no statistics for: every file may match
            rows = zip(cols["path"], cols.get("min.model", none), cols.get("max.model", none),
                       cols.get("min.uri", none), cols.get("max.uri", none), strict=True)
            parts = []
            for key, lo_m, hi_m, lo, hi in rows:
                if lo_m is not None and hi_m is not None and not lo_m <= model <= hi_m:
                    continue
                parts.append(_Part(key, lo if lo is not None else "", hi if hi is not None else "\U0010ffff"))
            self._index[model] = UriIndex(parts)
        return self._index[model]

    def get_many(self, model: str, uris: Sequence[str]) -> dict[str, Record]:
        """The newest record of each of these objects for ``model`` across jobs, from the table: only the
        files whose model and uri ranges (Delta statistics) overlap the group's are read."""
        wanted = sorted(set(uris))
        if not wanted:
            return {}
        keys = self._model_index(model).overlapping(wanted[0], wanted[-1])
        return read_newest(self.files, keys, wanted, model)

    def job_get_many(self, job: str, model: str, uris: Sequence[str]) -> dict[str, Record]:
        """This job's record of each of these objects for ``model`` (the job's files only). Chunk files written
        and not yet committed are committed first (at most every HEAL_EVERY_S per job), so a verification
        that relists the source sees every record the workers wrote."""
        now = time.monotonic()
        if now - self._healed.get(job, float("-inf")) > HEAL_EVERY_S:
            if self.heal(job):
                self.refresh()
            self._healed[job] = now
        wanted = sorted(set(uris))
        if not wanted:
            return {}
        prefix = f"job={_safe(job)}/"
        keys = [k for k in self._model_index(model).overlapping(wanted[0], wanted[-1]) if k.startswith(prefix)]
        return read_newest(self.files, keys, wanted, model)

    def close(self) -> None:
        """Commit what this writer left (its own files; with a Redis, the shared batch unless another writer
        is committing it now). What stays uncommitted is committed by `labelq compact` or an export."""
        try:
            if self.redis is not None:
                self.commit_shared()
            elif self._pending:
                self.commit()
        except Exception:
            logger.warning("could not commit at close; `labelq compact` will", exc_info=True)
        self._dataset = None


def _newest(table: Any, keys: list[str]) -> Any:
    """One row per ``keys``: the newest by (processed_at, job)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    order = [(k, "ascending") for k in keys] + [("processed_at", "descending"), ("job", "descending")]
    table = table.take(pc.sort_indices(table, sort_keys=order))
    if table.num_rows < 2:
        return table
    first = pa.array([True] + [False] * (table.num_rows - 1))
    for k in keys:
        col = table[k]
        first = pc.or_(first, pa.concat_arrays([pa.array([True]), pc.not_equal(col.slice(1), col.slice(0, table.num_rows - 1)).combine_chunks()]))
    return table.filter(first)


def _safe(value: str | None) -> str:
    """A name as one path segment of unreserved URI characters (``%`` of quoting becomes ``~``)."""
    return quote(value or "", safe="").replace("%", "~")


def part_key(job: str | None, model: str, chunk: str) -> str:
    """The Parquet store's file name with ``~`` for ``%``: Delta log paths are URIs, which readers differ on
    decoding (delta-rs keeps ``%2F``, delta-kernel decodes it), so the names need no escaping at all."""
    return ParquetStore.part_key(job, model, chunk).replace("%", "~")


def _delta_path(key: str) -> str:
    """A data file's path in the Delta log (keys are made of unreserved characters: see :func:`part_key`)."""
    return key


def _stats(meta: Any) -> dict[str, Any]:
    """Delta file statistics (rows, min/max and nulls of the filter columns) from a Parquet footer."""
    names = meta.schema.names
    mins: dict[str, Any] = {}
    maxs: dict[str, Any] = {}
    nulls: dict[str, int] = {}
    for col in STAT_COLUMNS:
        if col not in names:
            continue
        i = names.index(col)
        lo = hi = None
        n = 0
        ok = True
        for g in range(meta.num_row_groups):
            st = meta.row_group(g).column(i).statistics
            if st is None:
                ok = False
                break
            n += st.null_count or 0
            if st.has_min_max:
                lo = st.min if lo is None else min(lo, st.min)
                hi = st.max if hi is None else max(hi, st.max)
        if ok:
            nulls[col] = n
            if lo is not None:
                mins[col], maxs[col] = lo, hi
    return {"numRecords": meta.num_rows, "minValues": mins, "maxValues": maxs, "nullCount": nulls}


def _s3_options(client: Any) -> dict[str, str]:
    """deltalake's S3 options from a boto3 client: endpoint, region, credentials (boto3's chain)."""
    opts: dict[str, str] = {"conditional_put": "etag"}
    endpoint = client.meta.endpoint_url
    if endpoint and "amazonaws.com" not in endpoint:
        opts["AWS_ENDPOINT_URL"] = endpoint
        if endpoint.startswith("http://"):
            opts["AWS_ALLOW_HTTP"] = "true"
    if client.meta.region_name:
        opts["AWS_REGION"] = client.meta.region_name
    creds = client._request_signer._credentials
    if creds is not None:
        frozen = creds.get_frozen_credentials()
        opts["AWS_ACCESS_KEY_ID"] = frozen.access_key
        opts["AWS_SECRET_ACCESS_KEY"] = frozen.secret_key
        if frozen.token:
            opts["AWS_SESSION_TOKEN"] = frozen.token
    return opts
