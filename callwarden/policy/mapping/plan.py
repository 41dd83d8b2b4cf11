"""A compiled mapping: templates for subject, action, resource and context, and how one call
turns them into the AuthZEN wire body and the expanded SARC requests.

Everything a call needs is decided at compile time; `Plan.run` only resolves nodes and
builds plain dicts. AuthZEN default inheritance (an entry's entity replaces the top-level
one whole, context included) is applied here, once, so the PDP sees complete requests.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from callwarden.policy.cel import ABSENT
from callwarden.policy.mapping.values import CallInputs, Constant, MappingFault, Node, describe


def _require_string(where: str, key: str, value: Any) -> None:
    if type(value) is not str:
        raise MappingFault(
            f"field '{where}.{key}' is required and must be a string; it resolved to {describe(value)}"
        )


def _check_properties(where: str, entity: dict[str, Any]) -> None:
    if "properties" in entity and type(entity["properties"]) is not dict:
        raise MappingFault(
            f"field '{where}.properties' must be an object; it resolved to {describe(entity['properties'])}"
        )


class PepContext:
    """The context members the PEP owns (contracts: `mcp`, `agent`, `actors`, `cnf`), for one call."""

    __slots__ = ("actors", "agent", "agent_claim", "cnf", "mcp")

    def __init__(
        self,
        mcp: dict[str, str],
        agent: Any,
        agent_claim: str,
        actors: list[dict[str, str]] | None,
        cnf: Mapping[str, Any] | None = None,
    ):
        self.mcp = mcp
        self.agent = agent  # ABSENT when the token does not name an agent
        self.agent_claim = agent_claim
        self.actors = actors
        self.cnf = cnf  # the proven DPoP key (jkt, jwk, alg); None for a bearer token


class Entity:
    """An action or a resource: required string members, optional `properties`."""

    __slots__ = ("constant", "has_properties", "members", "required", "where")

    def __init__(self, where: str, members: tuple[tuple[str, Node], ...], required: tuple[str, ...]) -> None:
        self.where = where
        self.members = members
        self.required = required
        self.has_properties = any(key == "properties" for key, _ in members)
        # All literal (checked at compile time): each call gets a fresh copy, nothing to resolve.
        constants = {key: node.value for key, node in members if isinstance(node, Constant)}
        self.constant = constants if len(constants) == len(members) else None

    def build(self, inputs: CallInputs) -> dict[str, Any]:
        if self.constant is not None:
            return self.constant.copy()
        entity = {}
        for key, node in self.members:
            value = node.resolve(inputs)
            if value is not ABSENT:
                entity[key] = value
        for key in self.required:
            _require_string(self.where, key, entity.get(key, ABSENT))
        if self.has_properties:
            _check_properties(self.where, entity)
        return entity


class Subject:
    """The subject: `id` is anchored to the token's subject-identity claim.

    `id_node` is None when the mapping omits `subject.id` or sets it to exactly that claim:
    the PEP then supplies the claim itself. Otherwise the resolved id must equal it.
    """

    __slots__ = ("id_node", "id_written", "properties_node", "type_node", "where")

    def __init__(
        self,
        where: str,
        type_node: Node | None = None,
        id_node: Node | None = None,
        id_written: str = "",
        properties_node: Node | None = None,
    ) -> None:
        self.where = where
        self.type_node = type_node
        self.id_node = id_node
        self.id_written = id_written
        self.properties_node = properties_node

    def build(self, inputs: CallInputs, anchor: str, subject_claim: str) -> dict[str, Any]:
        subject_type: Any = "identity"
        if self.type_node is not None:
            subject_type = self.type_node.resolve(inputs)
            if subject_type is ABSENT:
                subject_type = "identity"
            else:
                _require_string(self.where, "type", subject_type)
        if self.id_node is not None:
            subject_id = self.id_node.resolve(inputs)
            if subject_id is not ABSENT:
                _require_string(self.where, "id", subject_id)
                if subject_id != anchor:
                    raise MappingFault(
                        f"field '{self.where}.id': expression {self.id_written!r} does not resolve to the "
                        f"token's {subject_claim!r} claim; subject.id is anchored to the token"
                    )
        subject = {"type": subject_type, "id": anchor}
        if self.properties_node is not None:
            properties = self.properties_node.resolve(inputs)
            if properties is not ABSENT:
                subject["properties"] = properties
                _check_properties(self.where, subject)
        return subject


class Context:
    """A context object: the mapping's members, then the PEP's. A mapping may set `agent`,
    but only to the token's own agent claim (anything else is agent smuggling)."""

    __slots__ = ("agent_node", "agent_written", "members", "where")

    def __init__(
        self,
        where: str,
        members: tuple[tuple[str, Node], ...] = (),
        agent_node: Node | None = None,
        agent_written: str = "",
    ) -> None:
        self.where = where
        self.members = members
        self.agent_node = agent_node
        self.agent_written = agent_written

    def build(self, inputs: CallInputs, pep: PepContext) -> dict[str, Any]:
        context = {}
        for key, node in self.members:
            value = node.resolve(inputs)
            if value is not ABSENT:
                context[key] = value
        if self.agent_node is not None:
            agent = self.agent_node.resolve(inputs)
            if agent is not ABSENT and (type(agent) is not type(pep.agent) or agent != pep.agent):
                raise MappingFault(
                    f"field '{self.where}.agent': expression {self.agent_written!r} does not resolve to the "
                    f"token's {pep.agent_claim!r} claim; context.agent is set by the PEP"
                )
        if pep.agent is not ABSENT:
            context["agent"] = pep.agent
        context["mcp"] = pep.mcp
        if pep.actors is not None:
            context["actors"] = pep.actors
        if pep.cnf is not None:
            context["cnf"] = dict(pep.cnf)
        return context


class Entry:
    """One element of an `evaluations` array: whatever it sets replaces the top-level default."""

    __slots__ = ("action", "context", "resource")

    def __init__(self, action: Entity | None, resource: Entity | None, context: Context | None) -> None:
        self.action = action
        self.resource = resource
        self.context = context


class Plan:
    """A compiled mapping. `entries` is None for the `evaluation` envelope.

    Compilation guarantees every evaluation has an action and a resource, from its entry
    or from the top level, so `run` never meets a missing entity.
    """

    __slots__ = ("action", "context", "entries", "resource", "subject")

    def __init__(
        self,
        subject: Subject,
        action: Entity | None,
        resource: Entity | None,
        context: Context,
        entries: tuple[Entry, ...] | None,
    ) -> None:
        self.subject = subject
        self.action = action
        self.resource = resource
        self.context = context
        self.entries = entries

    def run(
        self, inputs: CallInputs, anchor: str, subject_claim: str, pep: PepContext
    ) -> tuple[dict[str, Any], tuple[dict[str, Any], ...]]:
        subject = self.subject.build(inputs, anchor, subject_claim)
        action = None if self.action is None else self.action.build(inputs)
        resource = None if self.resource is None else self.resource.build(inputs)
        context = self.context.build(inputs, pep)
        if self.entries is None:
            single = {"subject": subject, "action": action, "resource": resource, "context": context}
            return single, (single,)
        wire: dict[str, Any] = {"subject": subject}
        if action is not None:
            wire["action"] = action
        if resource is not None:
            wire["resource"] = resource
        wire["context"] = context
        items = []
        requests = []
        for entry in self.entries:
            item: dict[str, Any] = {}
            entry_action, entry_resource, entry_context = action, resource, context
            if entry.action is not None:
                entry_action = item["action"] = entry.action.build(inputs)
            if entry.resource is not None:
                entry_resource = item["resource"] = entry.resource.build(inputs)
            if entry.context is not None:
                entry_context = item["context"] = entry.context.build(inputs, pep)
            items.append(item)
            requests.append(
                {
                    "subject": subject,
                    "action": entry_action,
                    "resource": entry_resource,
                    "context": entry_context,
                }
            )
        wire["evaluations"] = items
        return wire, tuple(requests)
