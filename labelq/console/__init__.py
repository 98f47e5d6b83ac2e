"""``labelq console``: a web console over the stores the CLI reads (jobs, label browser, review queue).

Server-rendered pages (Starlette + Jinja2, no front-end build step); see docs/console.md.
Importing this package needs the ``console`` extra (``pip install labelq[console]``).
"""

from __future__ import annotations

from .app import create_app, serve

__all__ = ["create_app", "serve"]
