"""Reading a static PIP data file (`callwarden pdp --data FILE`).

The file is JSON in the shape `policy.pip.StaticInformation` documents, read as strictly as a
request body (no duplicate or case-folded duplicate members, bounded size and depth): the data
decides who may do what, so it must mean the same to every reader.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from callwarden.policy.pip import InformationError, StaticInformation
from callwarden.policy.strictjson import JsonRejected, loads

MAX_DATA_BYTES: Final = 16 * 1024 * 1024
MAX_DATA_DEPTH: Final = 64


class DataFileError(Exception):
    """The PIP data file cannot be used; the message names the file and the fault."""


def load_information(path: str | Path) -> StaticInformation:
    """The PIP held in the JSON file at `path`; raises DataFileError."""
    try:
        with Path(path).open("rb") as stream:
            raw = stream.read(MAX_DATA_BYTES + 1)
    except OSError as error:
        raise DataFileError(f"cannot read PIP data file {path}: {error.strerror}") from error
    if len(raw) > MAX_DATA_BYTES:
        raise DataFileError(f"PIP data file {path} is larger than {MAX_DATA_BYTES} bytes")
    try:
        return StaticInformation.from_json(loads(raw, max_depth=MAX_DATA_DEPTH))
    except JsonRejected as error:
        raise DataFileError(f"PIP data file {path} is not strict JSON: {error.message}") from error
    except InformationError as error:
        raise DataFileError(f"PIP data file {path}: {error}") from error
