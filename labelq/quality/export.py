"""Rows of the quality commands to a file whose format follows its suffix: ``.jsonl`` or ``.parquet``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import UsageError

SUFFIXES = (".jsonl", ".parquet")


def check_path(path: Path) -> str:
    """The format of ``path`` by its suffix; UsageError for any other."""
    fmt = path.suffix.lower()
    if fmt not in SUFFIXES:
        raise UsageError(f"{path}: write .jsonl or .parquet (by the file's suffix), not {fmt or 'no suffix'}")
    return fmt[1:]


def write_rows(rows: Sequence[dict[str, Any]], path: Path) -> int:
    """Write rows (flat dicts with the same keys) to ``path``; returns how many."""
    fmt = check_path(path)
    if fmt == "jsonl":
        with path.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        return len(rows)
    import pyarrow as pa
    import pyarrow.parquet as pq

    if rows:
        table = pa.Table.from_pylist(list(rows))
    else:
        table = pa.table({})
    pq.write_table(table, str(path))
    return len(rows)
