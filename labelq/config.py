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

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from .errors import UsageError
from .urls import check_broker_url, check_endpoint_url, check_redis_url, is_redis_url
from .urls import redact as redact  # re-exported: labelq.config.redact is used across the package

DEFAULT_MODEL = "Falconsai/nsfw_image_detection"
DEFAULT_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".tif", ".tiff", ".bmp")
# Pillow formats decoded by default; anything else Pillow recognises is `unsupported`.
DEFAULT_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "TIFF", "BMP")

Dtype = Literal["auto", "float32", "bfloat16", "float16"]


def _split_list(value: Any) -> Any:
    """Accept ``a,b,c`` (env style) as well as a real list."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """One typed settings object; see docs/configuration in the README."""

    model_config = SettingsConfigDict(
        env_prefix="LABELQ_", env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True,
        hide_input_in_errors=True,  # a rejected URL may hold a password: never print it in a ValidationError
    )

    # --- services
    broker_url: str = Field("redis://localhost:6379/0", description="Celery broker (redis://, rediss://, amqp://)")
    results_url: str | None = Field(
        None, description="Result store for distributed jobs: redis://, postgresql://, sqlite://, parquet:///abs/folder, "
        "parquet+s3://bucket/prefix; default: the broker's Redis"
    )
    redis_url: str | None = Field(
        None, description="Redis for job state; default: results_url or broker_url when they are Redis"
    )
    db_url: str = Field("sqlite:///labelq.db", description="SQL result table of `labelq run`")
    result_ttl: int = Field(30 * 24 * 3600, ge=0, description="seconds Redis keeps records and job state; 0 keeps them forever")

    # --- models and inference
    models: Annotated[list[str], NoDecode] = Field(default_factory=lambda: [DEFAULT_MODEL])
    device: str = Field("auto", description="auto (cuda > mps > cpu), cpu, cuda, cuda:N, mps")
    dtype: Dtype = Field("auto", description="auto: bf16/fp16 on GPU, fp32 on CPU")
    batch_size: int = Field(32, ge=1, le=4096, description="images per forward pass")
    top_k: int = Field(5, ge=1, le=100, description="labels kept per record")
    compile: bool = Field(False, description="torch.compile the model (slow start, faster steady state)")
    channels_last: bool = Field(True, description="channels_last memory format for convolutional models")

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
    visibility_timeout: int = Field(3600, ge=10, description="seconds before an unacknowledged chunk is redelivered (Redis broker)")
    queue: str = Field("labelq", description="Celery queue of bulk chunks")
    max_queued_chunks: int = Field(
        100, ge=0, description="chunks waiting in the broker, all jobs together; producers pause past it (0 = no bound)"
    )
    chunk_attempts: int = Field(
        5, ge=1, le=100, description="attempts of a chunk that fails as a whole (model load, store down) before it is dead-lettered"
    )
    chunk_retry_delay: float = Field(2.0, ge=0, description="seconds before a failed chunk's 2nd attempt; doubles each attempt (cap 5 min)")
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

    @field_validator("console_viewers", mode="before")
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
        if value.split("://", 1)[0] not in ("redis", "rediss", "amqp", "amqps", "pyamqp", "memory"):
            got = value.split("://", 1)[0] + "://" if "://" in value else "a URL without a scheme"
            raise ValueError(f"use redis://, rediss:// or amqp://, not {got}")
        return check_broker_url(value)

    @field_validator("redis_url", "results_url")
    @classmethod
    def _redis_urls(cls, value: str | None) -> str | None:
        """Redis URLs as redis-py accepts them (SQL URLs are SQLAlchemy's to check)."""
        if is_redis_url(value):
            return check_redis_url(value)
        return value

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
        cores = cpu_cores()
        if self.decode_threads == 0:
            self.decode_threads = cores
        if self.torch_threads == 0:
            self.torch_threads = max(1, cores // 2)
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
    def results(self) -> str:
        """The distributed result store's URL (the job Redis unless set)."""
        return self.results_url or self.jobs_redis


def cpu_cores() -> int:
    """Cores this process may run on (the affinity mask, which containers and taskset narrow)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def load_settings(**overrides: Any) -> Settings:
    """Build settings from env/.env plus explicit overrides (CLI flags).

    Validation errors become one :class:`UsageError` naming the knob and what to fix.
    """
    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**clean)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "settings"
            problems.append(f"LABELQ_{field.upper()}: {err['msg'].removeprefix('Value error, ')}")
        raise UsageError("invalid settings: " + "; ".join(problems)) from None

