"""Error kinds: one small exception type per kind of failure a record can carry.

Every failure an image can meet on its way through the engine is raised as one of
these and becomes an error record with ``error_kind`` and a message; nothing else
is allowed to escape a batch.
"""

from __future__ import annotations

from typing import Any

ERROR_KINDS = (
    "not_found",
    "access_denied",
    "too_large",
    "not_an_image",
    "corrupt",
    "decompression_bomb",
    "unsupported",
    "storage_error",
    "model_error",
)

# Kinds that say "this worker could not do it" rather than "the object is bad": they can succeed
# when tried again (by `labelq retry`, or another worker), and reruns do not skip them.
# access_denied is one: a refusal can come from the worker's credentials or root, not the object.
RETRYABLE_KINDS = frozenset({"storage_error", "model_error", "access_denied"})


class LabelqError(Exception):
    """Base of every per-item failure; ``kind`` is one of ERROR_KINDS."""

    kind = "model_error"


class WorkerFault(LabelqError):
    """This worker cannot read objects at all (bad credentials, local files not enabled).

    Not a property of the object: in a worker the whole chunk goes back to the queue (another
    worker, or this one once fixed, labels it) instead of becoming per-object records.
    In ``labelq run`` it is an ``access_denied`` record like any refusal.
    """

    kind = "access_denied"


class NotFound(LabelqError):
    kind = "not_found"


class AccessDenied(LabelqError):
    kind = "access_denied"


class TooLarge(LabelqError):
    kind = "too_large"


class NotAnImage(LabelqError):
    kind = "not_an_image"


class Corrupt(LabelqError):
    kind = "corrupt"


class DecompressionBomb(LabelqError):
    kind = "decompression_bomb"


class Unsupported(LabelqError):
    kind = "unsupported"


class StorageError(LabelqError):
    kind = "storage_error"


class ModelError(LabelqError):
    kind = "model_error"


class UsageError(Exception):
    """A problem with what the user asked for (bad source, unknown model, service down).

    The CLI prints its message as one line on stderr and exits non-zero.
    """


class JobFailed(UsageError):
    """A distributed job finished with dead-lettered chunks (``Client.wait``); ``info`` is its JobInfo.

    ``labelq retry`` / ``Client.retry`` runs them again."""

    def __init__(self, info: Any) -> None:  # a labelq.jobs.JobInfo
        self.info = info
        job = getattr(info, "id", "?")
        super().__init__(f"job {job} finished with {getattr(info, 'dead_chunks', '?')} dead-lettered chunks "
                         f"({getattr(info, 'dead', '?')} records not written): retry runs them again")


class JobStalled(UsageError):
    """Nothing moved in a distributed job for ``seconds`` (no worker took a chunk or wrote a record)."""

    def __init__(self, info: Any, seconds: float) -> None:  # a labelq.jobs.JobInfo
        self.info = info
        self.seconds = seconds
        super().__init__(f"job {getattr(info, 'id', '?')}: nothing moved for {seconds:g}s: is a worker running "
                         "for its queue and models? (`labelq ping`)")


class SourceError(UsageError):
    """What a source holds cannot be listed: a manifest that is not text, a corrupt inventory part.

    Raised while listing, possibly after part of the source was enqueued; the producer marks the job
    ``failed`` with this message (``labelq status`` shows it) instead of leaving it ``listing``.
    """
