"""labelq: label stored images with image classifiers, in bulk and in the background.

The public API is small; importing the package does nothing else (its names are imported on first
use, so ``labelq --help`` and other commands that need no settings stay fast).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import Client, Labels, label
    from .config import Settings, load_settings
    from .errors import ERROR_KINDS, JobFailed, JobStalled, LabelqError, UsageError
    from .objects import ObjectRef
    from .records import Record

__all__ = [
    "ERROR_KINDS",
    "Client",
    "JobFailed",
    "JobStalled",
    "LabelqError",
    "Labels",
    "ObjectRef",
    "Record",
    "Settings",
    "UsageError",
    "label",
    "load_settings",
]
__version__ = "0.1.0"

_HOME = {
    "label": "api",
    "Client": "api",
    "Labels": "api",
    "JobFailed": "errors",
    "JobStalled": "errors",
    "UsageError": "errors",
    "Settings": "config",
    "load_settings": "config",
    "ERROR_KINDS": "errors",
    "LabelqError": "errors",
    "Record": "records",
    "ObjectRef": "storage",
}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        value = getattr(import_module(f".{_HOME[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
