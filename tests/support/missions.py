"""Mission objects for tests: the board-packet mission, and approving one as a reviewer would."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from callwarden.policy.loader import load_missions
from callwarden.policy.mission import mission_reference, transition
from callwarden.policy.model import Mission

EXAMPLE: Final = Path(__file__).resolve().parents[2] / "examples" / "board-packet" / "missions"
BOARD_PACKET: Final = load_missions([EXAMPLE])[0]
REFERENCE: Final = mission_reference(BOARD_PACKET.spec)
GOOD_HEADER: Final = f"board-packet/q3-board-packet; ref={REFERENCE}"
# `callwarden-mission` values that must each be refused as `mission-header`.
HOSTILE_HEADERS: Final = {
    "empty": "",
    "no-reference": "board-packet/q3-board-packet",
    "no-namespace": f"q3-board-packet; ref={REFERENCE}",
    "uppercase-name": f"board-packet/Q3; ref={REFERENCE}",
    "path-traversal": f"board-packet/../kube-system/x; ref={REFERENCE}",
    "three-segments": f"a/b/c; ref={REFERENCE}",
    "truncated-digest": f"{GOOD_HEADER[:-1]}",
    "long-digest": f"{GOOD_HEADER}A",
    "other-algorithm": f"board-packet/q3-board-packet; ref=sha512:{REFERENCE[7:]}",
    "padded-base64": f"board-packet/q3-board-packet; ref={REFERENCE}=",
    "standard-base64": f"board-packet/q3-board-packet; ref=sha256:{'+' * 43}",
    "repeated-header-joined": f"{GOOD_HEADER},{GOOD_HEADER}",
    "extra-parameter": f"{GOOD_HEADER}; purpose=anything",
    "leading-space": f" {GOOD_HEADER}",
    "trailing-newline": f"{GOOD_HEADER}\n",
    "nul-byte": f"board-packet/q3\x00; ref={REFERENCE}",
    "cyrillic-lookalike": f"board-p\u0430cket/q3-board-packet; ref={REFERENCE}",
    "fullwidth-semicolon": f"board-packet/q3-board-packet\uff1b ref={REFERENCE}",
    "zero-width-space": f"board-packet/q3-board\u200b-packet; ref={REFERENCE}",
    "oversized": f"board-packet/{'a' * 600}; ref={REFERENCE}",
    "lone-surrogate": f"board-packet/\udc80; ref={REFERENCE}",
    "quoted": f'"{GOOD_HEADER}"',
}


def mission_object(**spec: Any) -> dict[str, Any]:
    """The board-packet mission as a JSON object, with `spec` members replaced."""
    body = BOARD_PACKET.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"status"})
    body["spec"].update(copy.deepcopy(spec))
    return body


def make_mission(name: str = "q3-board-packet", namespace: str = "board-packet", **spec: Any) -> Mission:
    body = mission_object(**spec)
    body["metadata"] = {"name": name, "namespace": namespace}
    return Mission.model_validate(body)


def approved(mission: Mission, by: str = "carol", now: datetime | None = None) -> Mission:
    """`mission` as `callwarden missions approve` leaves it."""
    status = transition(mission, "approve", by, now or datetime.now(UTC))
    return mission.model_copy(update={"status": status})


def moved(mission: Mission, command: str, by: str = "carol") -> Mission:
    return mission.model_copy(update={"status": transition(mission, command, by, datetime.now(UTC))})
