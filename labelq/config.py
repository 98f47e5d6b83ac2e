"""Settings: every knob labelq has, read once at the edge and passed down.

Environment variables take the ``LABELQ_`` prefix (``LABELQ_BATCH_SIZE=64``) and a
``.env`` file in the working directory is read too. Nothing below the CLI and the
Celery entry point reads ``os.environ``; they build one :class:`Settings` and hand
it on. Units are in the field names or descriptions (seconds, bytes, pixels).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .errors import UsageError
from .urls import check_broker_url, check_endpoint_url, check_redis_url, is_redis_url, is_sentinel_url
from .urls import redact as redact  # re-exported: labelq.config.redact is used across the package

DEFAULT_MODEL = "Falconsai/nsfw_image_detection"
DEFAULT_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".tif", ".tiff", ".bmp")
# Pillow formats decoded by default; anything else Pillow recognises is `unsupported`.
DEFAULT_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "TIFF", "BMP")

Dtype = Literal["auto", "float32", "bfloat16", "float16"]
# What runs the forward pass (labelq.runtimes: one module each, looked up by this name).
RuntimeName = Literal["torch", "onnx", "onnx-int8", "openvino"]


def _split_list(value: Any) -> Any:
    """Accept ``a,b,c`` (env style) as well as a real list."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """One typed settings object; every field is documented in docs/settings.md (a unit test checks)."""

    model_config = SettingsConfigDict(
        env_prefix="LABELQ_", env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True,
        hide_input_in_errors=True,  # a rejected URL may hold a password: never print it in a ValidationError
    )

    # --- services
    broker_url: str = Field(
        "redis://localhost:6379/0", description="Celery broker (redis://, rediss://, sentinel://h1:26379;sentinel://h2:26379, amqp://)"
    )
    results_url: str | None = Field(
        None, description="Result store for distributed jobs: redis://, postgresql://, sqlite://, parquet:///abs/folder, "
        "parquet+s3://bucket/prefix, delta:///abs/folder, delta+s3://bucket/prefix; default: the broker's Redis"
    )
    redis_url: str | None = Field(
        None, description="Redis for job state; default: results_url or broker_url when they are Redis"
    )
    sentinel_master: str | None = Field(
        None, validate_default=True, description="name of the Redis master the sentinels of a sentinel:// URL watch"
    )
    amqp_quorum: bool = Field(False, description="RabbitMQ: declare labelq's queues as quorum queues (replicated)")
    db_url: str = Field("sqlite:///labelq.db", description="SQL result table of `labelq run`")
    result_ttl: int = Field(30 * 24 * 3600, ge=0, description="seconds Redis keeps records and job state; 0 keeps them forever")

    lake_commit_files: int = Field(
        500, ge=1, le=100_000, description="Delta store: chunk files per commit (the batch is shared by all writers through the job Redis)"
    )
    lake_commit_seconds: float = Field(
        300.0, gt=0, description="Delta store: ... or commit once the oldest uncommitted file is this many seconds old (checked at a write)"
    )
    lake_target_mb: int = Field(128, ge=1, le=65536, description="Delta store: `labelq compact` rewrites small files into files of this many MB")

    # --- models and inference
    models: Annotated[list[str], NoDecode] = Field(default_factory=lambda: [DEFAULT_MODEL])
    device: str = Field("auto", description="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps")
    dtype: Dtype = Field("auto", description="auto: bf16/fp16 on GPU, fp32 on CPU")
    batch_size: int = Field(32, ge=1, le=4096, description="images per forward pass")
    top_k: int = Field(5, ge=1, le=100, description="labels kept per record")
    compile: bool = Field(False, description="torch.compile the model (slow start, faster steady state)")
    channels_last: bool = Field(True, description="channels_last memory format for convolutional models")
    runtime: RuntimeName = Field(
        "torch", description="what runs the forward pass: torch (any device), onnx or openvino (CPU; exported once per "
        "model revision, cached beside the model), onnx-int8 (int8 after a parity gate, else fp32)"
    )
    int8: bool = Field(False, description="short for LABELQ_RUNTIME=onnx-int8")
    int8_calibration: Path | None = Field(
        None, description="folder of typical images (the first 64 by name) the int8 parity gate compares int8 to fp32 "
        "on; unset: int8 is not used"
    )
    int8_min_agreement: float = Field(0.995, ge=0, le=1, description="int8 gate: share of top-1 labels equal to fp32's")
    int8_max_mean_delta: float = Field(0.01, ge=0, le=1, description="int8 gate: mean |int8 - fp32| of the top-1 score")
    cache_dir: Path = Field(
        default_factory=lambda: Path.home() / ".cache" / "labelq",
        description="labelq's cache folder: model exports go here when the model's own folder cannot be written",
    )

    # --- pipeline
    fetch_threads: int = Field(16, ge=1, le=512, description="concurrent object fetches")
    decode_threads: int = Field(0, ge=0, le=512, description="decode threads; 0 = number of CPU cores")
    decode_processes: int = Field(
        0, ge=0, le=512, description="decode in this many processes, pixels back via shared memory (GPU hosts: ~cores); 0 = threads"
    )
    gpu_decode: bool = Field(False, description="decode JPEGs on the CUDA device (nvJPEG); other formats and failures: CPU")
    torch_threads: int = Field(
        0, ge=0, le=512, description="intra-op threads of a model on the CPU; 0 = half the cores (decode needs the rest)"
    )
    prefetch_batches: int = Field(2, ge=1, le=64, description="batches fetched/decoded ahead of inference")
    fast_decode: bool = Field(True, description="JPEG draft (DCT-domain) downscale + resize in Pillow to the model's geometry")

    # --- input limits
    max_bytes: int = Field(50 * 1024 * 1024, ge=1, description="largest object fetched, bytes")
    max_pixels: int = Field(100_000_000, ge=1, description="largest image decoded, pixels; over 2x is a decompression bomb")
    suffixes: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(DEFAULT_SUFFIXES))
    formats: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(DEFAULT_FORMATS))

    # --- storage
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, moto); default AWS")
    s3_region: str | None = None
    gcs_project: str | None = Field(None, description="Google Cloud project of gs:// buckets (default: the credentials')")
    azure_account_url: str | None = Field(
        None, description="Azure Blob account URL (https://ACCOUNT.blob.core.windows.net) of az:// containers; "
        "default: AZURE_STORAGE_CONNECTION_STRING, as the Azure SDK reads it")
    http_allow_private: bool = Field(
        False, description="let http(s):// URL lists reach private, loopback and link-local addresses (refused by default)")
    http_max_redirects: int = Field(5, ge=0, le=20, description="redirects followed per http(s):// object")
    http_per_host: int = Field(8, ge=1, le=256, description="concurrent requests to one host of an http(s):// URL list")
    http_timeout: float = Field(30.0, gt=0, description="seconds to connect to, then between bytes from, an http(s):// host")
    s3_max_attempts: int = Field(5, ge=1, le=20, description="attempts per S3 call (botocore standard retries)")
    s3_connect_timeout: float = Field(5.0, gt=0, description="seconds")
    s3_read_timeout: float = Field(30.0, gt=0, description="seconds")
    s3_client: Literal["boto3", "obstore"] = Field(
        "boto3", description="client for object GETs: obstore (pip install 'labelq[obstore]') spends ~3x less CPU per "
        "GET; credentials still come from boto3's chain, listing stays on boto3"
    )
    local_root: Path | None = Field(None, description="folder a worker may read file:// URIs from; unset refuses them")
    list_workers: int = Field(
        8, ge=1, le=256, description="concurrent ListObjectsV2 streams of a bucket listing (prefix fan-out); 1 = one stream"
    )

    # --- distributed
    chunk_size: int = Field(256, ge=1, le=100_000, description="object refs per Celery task (256: <= 0.1 Redis round trips per image)")
    chunks_in_flight: int = Field(
        2, ge=1, le=64, description="bulk chunks a worker process works on at once (task threads sharing one engine); "
        "2 decodes the next chunk while the current one infers; 1 = solo pool, one at a time"
    )
    chunk_slots: int | None = Field(
        None, ge=0, le=100_000, description="chunks the workers work on at once, all together (workers x "
        "chunks_in_flight; unset: chunks_in_flight, one worker): a job's first chunks ramp up and its last "
        "slots x chunk_size objects are cut into this many equal chunks; 0 = fixed chunks of chunk_size"
    )
    visibility_timeout: int = Field(3600, ge=10, description="seconds before an unacknowledged chunk is redelivered (Redis broker)")
    queue: str = Field("labelq", description="Celery queue of bulk chunks")
    max_queued_chunks: int = Field(
        100, ge=0, description="chunks waiting in the broker, all jobs together; producers pause past it (0 = no bound)"
    )
    chunk_attempts: int = Field(
        5, ge=1, le=100, description="attempts of a chunk that fails as a whole (model load, store down) before it is dead-lettered"
    )
    chunk_retry_delay: float = Field(2.0, ge=0, description="seconds before a failed chunk's 2nd attempt; doubles each attempt (cap 5 min)")
    chunk_deadline: float = Field(
        300.0, ge=1, description="seconds a chunk in flight may go unseen (not waiting in the broker's queue, not held by "
        "a live worker) before the heal publishes it again"
    )
    heal_interval: float = Field(
        10.0, ge=0, description="seconds between a worker's heal rounds (deadlines of chunks in hand pushed on, lost "
        "chunks published again, complete jobs verified against the records); 0 = off"
    )
    stall_timeout: float = Field(
        300.0, gt=0, description="seconds `--wait` waits with no chunk started or record written before it gives up"
    )
    # --- riding out faults (issue 19: outages, dead device processes, listeners, the moderation outbox)
    outage_wait: float = Field(
        600.0, ge=0, description="seconds a worker or `labelq listen` waits for Redis/the broker to come back (writes "
        "retried with backoff) before it gives up: the chunk goes back to the broker, `listen` exits non-zero"
    )
    worker_restarts: int = Field(
        3, ge=0, le=1000, description="`labelq worker` restarts a device process that died; this many quick deaths in a "
        "row (each within worker_min_uptime of its start) stop it, non-zero, with the child's reason"
    )
    worker_min_uptime: float = Field(30.0, gt=0, description="seconds a device process must live to count as started")
    outbox_timeout: float = Field(
        5.0, gt=0, le=300, description="seconds one webhook POST of the moderation outbox may take (attempts: the "
        "policy's webhook_attempts, then a dead letter)"
    )

    # --- background moderation
    live_queue: str = Field("labelq.live", description="Celery queue of single new uploads (dynamic batching)")
    max_batch_size: int = Field(16, ge=1, le=1024, description="live: flush a batch at this many images")
    batch_timeout: float = Field(0.05, gt=0, le=10, description="live: seconds the first image of a batch may wait")
    policy: Path | None = Field(None, description="moderation policy file (TOML) applied as live records are written")
    policy_reload: float = Field(
        5.0, gt=0, le=3600, description="seconds between a worker's looks at the policy file: a changed file (mtime or "
        "size) is reloaded without a restart; one that no longer parses keeps the old policy"
    )
    events_key: str = Field("labelq:minio-events", description="Redis list MinIO publishes bucket events to")
    sqs_queue_url: str | None = Field(None, description="SQS queue of AWS S3 event notifications")
    sqs_endpoint_url: str | None = Field(None, description="SQS endpoint (moto, LocalStack); default AWS")
    metrics_port: int | None = Field(None, ge=1, le=65535, description="a worker's Prometheus endpoint")
    log_level: str = "INFO"
    # --- console (`labelq console`; docs/console.md)
    console_host: str = Field("127.0.0.1", description="address the console listens on")
    console_port: int = Field(8080, ge=1, le=65535, description="console HTTP port")
    console_users: str | None = Field(None, repr=False, description="who may sign in: name:password,name:password")
    console_token: str | None = Field(None, repr=False, description="bearer token (also the password of user 'token')")
    console_viewers: Annotated[list[str], NoDecode] = Field(default_factory=list, description="users who may only look")
    console_read_only: bool = Field(False, description="nobody may change anything through the console")
    console_auth_header: str | None = Field(None, description="header an SSO proxy sets to the user's name (trusted)")
    console_secret: str | None = Field(None, repr=False, description="signs sessions and thumbnail URLs; default random")
    console_secure_cookies: bool = Field(False, description="session cookie only over HTTPS (set behind TLS)")
    console_thumb_px: int = Field(256, ge=32, le=1024, description="longest side of a thumbnail, pixels")
    console_thumb_dir: Path | None = Field(None, description="thumbnail cache folder; default a temporary one")
    console_thumb_cache_mb: int = Field(256, ge=1, description="thumbnail cache size, megabytes")
    console_roles: str | None = Field(None, description="roles of users: name:role,… (viewer, reviewer, admin)")
    console_users_file: Path | None = Field(None, description="TOML file of [users.NAME] password and role")
    console_reasons: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["policy-correct", "false-positive", "borderline", "wrong-label", "other"],
        description="reason codes a reviewer picks from (comma-separated); kept in the audit and the export")
    console_blur: bool = Field(False, description="review previews blurred until hovered (each reviewer can toggle)")
    console_claim_seconds: float = Field(300.0, gt=0, description="seconds an opened review item stays the opener's")
    console_undo_seconds: float = Field(600.0, ge=0, description="seconds a reviewer may undo their own decision")

    @field_validator("console_viewers", "console_reasons", mode="before")
    @classmethod
    def _console_viewers(cls, value: Any) -> Any:
        return _split_list(value)


    @field_validator("models", "suffixes", "formats", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("suffixes")
    @classmethod
    def _suffixes(cls, value: list[str]) -> list[str]:
        return [s.lower() if s.startswith(".") else "." + s.lower() for s in value]

    @field_validator("formats")
    @classmethod
    def _formats(cls, value: list[str]) -> list[str]:
        return [f.upper() for f in value]

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        v = value.strip().lower()
        if v in ("auto", "cpu", "cuda", "mps") or (v.startswith("cuda:") and v[5:].isdigit()):
            return v
        raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, not {value!r}")

    @field_validator("broker_url")
    @classmethod
    def _broker(cls, value: str) -> str:
        if value.split("://", 1)[0] not in ("redis", "rediss", "sentinel", "amqp", "amqps", "pyamqp", "memory"):
            got = value.split("://", 1)[0] + "://" if "://" in value else "a URL without a scheme"
            raise ValueError(f"use redis://, rediss://, sentinel:// or amqp://, not {got}")
        return check_broker_url(value)

    @field_validator("redis_url", "results_url")
    @classmethod
    def _redis_urls(cls, value: str | None) -> str | None:
        """Redis URLs as redis-py accepts them (SQL URLs are SQLAlchemy's to check)."""
        if is_redis_url(value):
            return check_redis_url(value)
        return value

    @field_validator("sentinel_master")
    @classmethod
    def _sentinel_master(cls, value: str | None, info: ValidationInfo) -> str | None:
        """A sentinel:// URL is useless without the name of the master its sentinels watch."""
        named = [f"LABELQ_{k.upper()}" for k in ("broker_url", "redis_url", "results_url") if is_sentinel_url(info.data.get(k))]
        if named and not (value or "").strip():
            raise ValueError(f"{' and '.join(named)} {'names' if len(named) == 1 else 'name'} Redis Sentinels: set the name of the master they watch, "
                             "e.g. LABELQ_SENTINEL_MASTER=mymaster")
        return value.strip() if value else value

    @field_validator("s3_endpoint_url", "sqs_endpoint_url")
    @classmethod
    def _endpoints(cls, value: str | None) -> str | None:
        return check_endpoint_url(value) if value else value

    @field_validator("models")
    @classmethod
    def _models(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one model is needed, e.g. LABELQ_MODELS=Falconsai/nsfw_image_detection")
        return value

    @model_validator(mode="after")
    def _derived(self) -> Settings:
        if self.int8:
            if self.runtime not in ("torch", "onnx", "onnx-int8") or (
                    self.runtime == "torch" and "runtime" in self.model_fields_set):
                raise ValueError(f"LABELQ_INT8 runs ONNX Runtime's int8, not {self.runtime}: leave LABELQ_RUNTIME "
                                 "unset or set it to onnx")
            self.runtime = "onnx-int8"
        cores = cpu_cores()
        if self.decode_threads == 0:
            self.decode_threads = cores
        if self.torch_threads == 0:
            self.torch_threads = max(1, cores // 2)
        if self.heal_interval and self.chunk_deadline < 3 * self.heal_interval:
            raise ValueError(f"LABELQ_CHUNK_DEADLINE ({self.chunk_deadline:g}s) must be at least 3 x "
                             f"LABELQ_HEAL_INTERVAL ({self.heal_interval:g}s): workers push the deadlines of the "
                             "chunks they hold on once a heal interval")
        return self

    @property
    def jobs_redis(self) -> str:
        """The Redis that holds job state (and records, unless results_url names SQL).

        UsageError when none of redis_url, results_url, broker_url is a Redis URL (RabbitMQ broker, SQL records).
        """
        for url in (self.redis_url, self.results_url, self.broker_url):
            if is_redis_url(url):
                return url
        # Never a silent default: with RabbitMQ and SQL records, "whatever answers on localhost" is not job state.
        raise UsageError(
            f"job state needs Redis and none is named (the broker is {redact(self.broker_url)}, records go to "
            f"{redact(self.results_url) if self.results_url else 'the job Redis'}): set LABELQ_REDIS_URL=redis://HOST:6379/0"
        )

    @property
    def slots(self) -> int:
        """Chunks the workers work on at once, as the producer plans a job's chunks (0: fixed chunks)."""
        return self.chunks_in_flight if self.chunk_slots is None else self.chunk_slots

    @property
    def results(self) -> str:
        """The distributed result store's URL (the job Redis unless set)."""
        return self.results_url or self.jobs_redis


def cpu_cores() -> int:
    """Cores this process may run on (the affinity mask, which containers and taskset narrow)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def load_settings(*, flags: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Build settings from env/.env plus explicit overrides (CLI flags).

    Validation errors become one :class:`UsageError` naming the knob and what to fix: the flag the
    user typed (``flags``: field → ``--batch-size``) when an override came from one, else the
    ``LABELQ_`` variable.
    """
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**clean)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            name = (flags or {}).get(field) if field in clean else None
            problems.append(f"{name or 'LABELQ_' + field.upper()}: {msg}" if field else msg)  # a rule across settings names them
        raise UsageError("invalid settings: " + "; ".join(problems)) from None
