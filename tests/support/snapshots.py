"""Snapshot files under tests/snapshots/: compare, or rewrite them with CALLWARDEN_UPDATE_SNAPSHOTS=1.

    CALLWARDEN_UPDATE_SNAPSHOTS=1 .venv/bin/python -m pytest tests/test_helm_chart.py

then review the diff of tests/snapshots/ like any other change.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import yaml

SNAPSHOTS: Final = Path(__file__).resolve().parents[1] / "snapshots"
UPDATE_VARIABLE: Final = "CALLWARDEN_UPDATE_SNAPSHOTS"


def assert_snapshot(name: str, objects: Sequence[dict[str, Any]]) -> None:
    """`objects` must equal tests/snapshots/<name>.yaml (or are written there when updating)."""
    text = yaml.safe_dump_all(list(objects), sort_keys=True)
    path = SNAPSHOTS / f"{name}.yaml"
    if os.environ.get(UPDATE_VARIABLE) == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    assert path.exists(), f"no snapshot {path}: run with {UPDATE_VARIABLE}=1 to write it, then review it"
    assert text == path.read_text(), (
        f"{name} differs from {path}; if intended, rerun with {UPDATE_VARIABLE}=1"
    )
