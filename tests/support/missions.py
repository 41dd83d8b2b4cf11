"""Mission objects for tests: the board-packet mission, and approving one as a reviewer would."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from callwarden.policy.loader import load_missions
from callwarden.policy.mission import transition
from callwarden.policy.model import Mission

EXAMPLE: Final = Path(__file__).resolve().parents[2] / "examples" / "board-packet" / "missions"
BOARD_PACKET: Final = load_missions([EXAMPLE])[0]


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
