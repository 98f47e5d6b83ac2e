"""labelq: label stored images with image classifiers, in bulk and in the background.

The public API is small; importing the package does nothing else.
"""

from .config import Settings, load_settings
from .errors import ERROR_KINDS, LabelqError
from .records import Record
from .storage import ObjectRef

__all__ = ["ERROR_KINDS", "LabelqError", "ObjectRef", "Record", "Settings", "load_settings"]
__version__ = "0.1.0"
