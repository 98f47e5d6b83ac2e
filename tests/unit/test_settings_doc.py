"""docs/settings.md is the complete settings reference: a row for every field of Settings, with its default."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from labelq.config import Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "settings.md"


def shown(value: Any) -> str:
    """A default as the reference writes it."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(value) if value else "(none)"
    return str(value)


def reference_rows() -> dict[str, tuple[str, str]]:
    """``LABELQ_X`` → (default, what) from the "Every setting" part of the doc."""
    text = DOC.read_text(encoding="utf-8")
    every = text[text.index("## Every setting"):]
    rows = {}
    for match in re.finditer(r"^\| `(LABELQ_[A-Z0-9_]+)` \| `([^`]*)` \| (.+) \|$", every, re.MULTILINE):
        rows[match.group(1)] = (match.group(2), match.group(3).strip())
    return rows


def test_every_settings_field_has_a_row_with_its_default_and_a_description() -> None:
    rows = reference_rows()
    fields = {f"LABELQ_{name.upper()}": field for name, field in Settings.model_fields.items()}
    missing = sorted(set(fields) - set(rows))
    assert not missing, f"add these to docs/settings.md, section 'Every setting': {missing}"
    unknown = sorted(set(rows) - set(fields))
    assert not unknown, f"docs/settings.md documents settings that do not exist: {unknown}"
    for name, field in fields.items():
        default, what = rows[name]
        assert default == shown(field.get_default(call_default_factory=True)), name
        assert len(what) > 3, name
