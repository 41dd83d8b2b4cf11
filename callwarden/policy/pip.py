"""Policy information point (PIP): what the PDP knows about subjects and resources by itself.

Request-supplied `properties` are assertions of the calling PEP, and a PEP passes on whatever
its own caller said. So before any rule runs, the PDP merges in the attributes its PIP holds
for the request's subject and resource, and **the PIP wins** for every attribute it defines:
a request claiming `{"role": "admin"}` for a subject the PIP records as an editor is decided
as an editor. Attributes the PIP does not define for that entity (a todo's `ownerID`, which
only the calling application knows) are kept from the request, so entities the PIP has never
heard of are still decided on what the request says about them. The merge is per attribute
name (top-level members of `properties`), never deep: a PIP value replaces the whole value.

The PIP also lists the entities it knows, in a stable order: the Search APIs evaluate each
known subject or resource of the searched type, and each known action name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal, Protocol

__all__ = [
    "ENTITY_KINDS",
    "EntityKind",
    "InformationError",
    "InformationSource",
    "StaticInformation",
    "enrich",
]

EntityKind = Literal["subject", "resource"]
ENTITY_KINDS: Final[tuple[EntityKind, ...]] = ("subject", "resource")
_SECTIONS: Final[Mapping[str, EntityKind]] = {"subjects": "subject", "resources": "resource"}
_EMPTY: Final[Mapping[str, Any]] = {}


class InformationSource(Protocol):
    """Attributes and inventories of entities; implementations must be safe to share between threads."""

    def attributes(self, kind: EntityKind, type: str, id: str) -> Mapping[str, Any]:
        """The attributes of one entity; empty when the entity is unknown."""

    def entity_ids(self, kind: EntityKind, type: str) -> Sequence[str]:
        """The ids of every known entity of `type`, in a stable order; empty for an unknown type."""

    def action_names(self) -> Sequence[str]:
        """Every known action name, in a stable order."""


class InformationError(ValueError):
    """PIP data that cannot be used; `path` locates the fault (`subjects.user.alice`)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


class StaticInformation:
    """A PIP over fixed data, in this JSON shape (every member optional)::

        {"subjects":  {"<type>": {"<id>": {<attributes>}, ...}, ...},
         "resources": {"<type>": {"<id>": {<attributes>}, ...}, ...},
         "actions":   ["<name>", ...]}

    Entities are listed in document order. The data is copied once and never mutated.
    """

    def __init__(
        self,
        entities: Mapping[EntityKind, Mapping[str, Mapping[str, Mapping[str, Any]]]],
        actions: Sequence[str] = (),
    ) -> None:
        self._entities: dict[EntityKind, dict[str, dict[str, Mapping[str, Any]]]] = {
            kind: {type_: dict(by_id) for type_, by_id in entities.get(kind, {}).items()}
            for kind in ENTITY_KINDS
        }
        self._ids: dict[EntityKind, dict[str, tuple[str, ...]]] = {
            kind: {type_: tuple(by_id) for type_, by_id in types.items()}
            for kind, types in self._entities.items()
        }
        self._actions = tuple(actions)

    @classmethod
    def from_json(cls, data: object) -> StaticInformation:
        """Validate parsed JSON data; raises InformationError naming the first fault."""
        if not isinstance(data, dict):
            raise InformationError("", "PIP data must be a JSON object")
        unknown = sorted(set(data) - {*_SECTIONS, "actions"})
        if unknown:
            raise InformationError(unknown[0], "unknown member (expected subjects, resources or actions)")
        entities: dict[EntityKind, dict[str, dict[str, dict[str, Any]]]] = {}
        for section, kind in _SECTIONS.items():
            entities[kind] = _types(section, data.get(section, {}))
        return cls(entities, _actions(data.get("actions", [])))

    def attributes(self, kind: EntityKind, type: str, id: str) -> Mapping[str, Any]:
        by_id = self._entities[kind].get(type)
        return _EMPTY if by_id is None else by_id.get(id, _EMPTY)

    def entity_ids(self, kind: EntityKind, type: str) -> Sequence[str]:
        return self._ids[kind].get(type, ())

    def action_names(self) -> Sequence[str]:
        return self._actions


def _types(section: str, value: object) -> dict[str, dict[str, dict[str, Any]]]:
    if not isinstance(value, dict):
        raise InformationError(section, "must be an object of entity types")
    types: dict[str, dict[str, dict[str, Any]]] = {}
    for type_, by_id in value.items():
        if not isinstance(by_id, dict):
            raise InformationError(f"{section}.{type_}", "must be an object of entity ids")
        for id_, attributes in by_id.items():
            if not isinstance(attributes, dict):
                raise InformationError(f"{section}.{type_}.{id_}", "attributes must be an object")
        types[type_] = by_id
    return types


def _actions(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(name, str) for name in value):
        raise InformationError("actions", "must be an array of action names")
    if len(set(value)) != len(value):
        raise InformationError("actions", "lists an action name twice")
    return tuple(value)


def enrich(request: Mapping[str, Any], source: InformationSource) -> Mapping[str, Any]:
    """`request` with the PIP's attributes merged into subject and resource properties (PIP wins).

    `request` must have passed the shape checks of `policy.evaluation`; it is not modified, and
    returned as is when the PIP knows neither entity.
    """
    enriched: dict[str, Any] | None = None
    for kind in ENTITY_KINDS:
        entity = request[kind]
        attributes = source.attributes(kind, entity["type"], entity["id"])
        if attributes:
            if enriched is None:
                enriched = dict(request)
            enriched[kind] = {**entity, "properties": {**entity.get("properties", _EMPTY), **attributes}}
    return request if enriched is None else enriched
