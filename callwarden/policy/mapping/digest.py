"""The pin of a declared mapping: SHA-256 of its canonical JSON.

One definition for the two places that compare declared mappings with what the platform accepted:
the operator's discovery (`operator/pinning.py`) and the gateway's view of passing `tools/list`
responses (`extauthz/tools_list.py`). They must hash alike or drift would be reported wrongly.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Final

# Where a Tool object of tools/list declares its mapping (D1, then the current binding).
DECLARED_KEYS: Final = ("x-coaz-mapping", "x-authzen-mapping")


def mapping_sha256(value: Any) -> str:
    """SHA-256 (hex) of a mapping's canonical JSON: sorted keys, no spaces, UTF-8. The hash an
    McpServer's `acceptedMappingHash` pins and status.tools reports."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def declared_mapping(schema: Mapping[str, Any]) -> Any | None:
    """The mapping an inputSchema declares, or None when it declares none or both forms."""
    keys = [key for key in DECLARED_KEYS if key in schema]
    return schema[keys[0]] if len(keys) == 1 else None
