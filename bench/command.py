"""The command line shared by the in-process bench scripts (stages.py, profile_check.py, scale.py):
`[--json PATH] [--smoke]`, run the measurement, write its results as JSON."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


def run_command(
    doc: str | None, measure: Callable[[bool], dict[str, Any]], smoke_help: str, *, echo: bool = True
) -> None:
    """Parse the arguments, run `measure(smoke)`, write the results to --json and, with `echo`, stdout."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="write the results here as JSON")
    parser.add_argument("--smoke", action="store_true", help=smoke_help)
    args = parser.parse_args()
    results = measure(args.smoke)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    if echo:
        print(json.dumps(results, indent=2))
