"""The remote-PDP client's AuthZEN Action Search (what filters tools/list for a remote PDP).

A real HTTP PDP on loopback (tests/support/scripted_pdp.py) answers what each test scripts; the
client follows page tokens, reads answers strictly and fails closed on anything else.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from callwarden.authzen.client import MAX_SEARCH_PAGES, RemoteAuthzenPdp, RemotePdpError
from tests.support.scripted_pdp import JSON, ScriptedPdp, scripted_pdp

REQUEST = {"subject": {"type": "identity", "id": "alice"}, "resource": {"type": "mcp_server", "id": "s"}}


@pytest.fixture
def remote() -> Iterator[ScriptedPdp]:
    with scripted_pdp(None) as scripted:
        assert scripted.metadata is not None
        scripted.metadata["search_action_endpoint"] = scripted.base_url + "/access/v1/search/action"
        yield scripted


def client(remote: ScriptedPdp) -> RemoteAuthzenPdp:
    return RemoteAuthzenPdp(remote.base_url, 1.0)


def answering(*pages: Any) -> Any:
    """Answer the n-th search with pages[n] (a dict is sent as JSON, bytes as they are)."""
    served = iter(pages)

    def answer(path: str, body: Any) -> tuple[int, bytes, str]:
        page = next(served)
        return 200, page if isinstance(page, bytes) else json.dumps(page).encode(), JSON

    return answer


def test_every_page_of_the_search_is_read_by_its_tokens(remote: ScriptedPdp) -> None:
    remote.answer = answering(
        {"results": [{"name": "a"}], "page": {"next_token": "t1"}},
        {"results": [{"name": "b"}, {"name": "a"}], "page": {"next_token": ""}},
    )
    assert client(remote).search_actions(REQUEST) == frozenset({"a", "b"})
    sent = [body for _, body in remote.evaluation_calls()]
    assert sent == [REQUEST, {**REQUEST, "page": {"token": "t1"}}]


def test_a_pdp_whose_metadata_names_no_action_search_is_never_asked(remote: ScriptedPdp) -> None:
    assert remote.metadata is not None
    del remote.metadata["search_action_endpoint"]
    assert client(remote).search_actions(REQUEST) is None
    assert remote.evaluation_calls() == []


@pytest.mark.parametrize(
    "answer",
    [
        {"page": {"next_token": ""}},
        {"results": {"name": "a"}},
        {"results": [{"name": 7}]},
        {"results": ["a"]},
        {"results": [], "page": {"next_token": 5}},
        b"not json",
        b'{"results": [], "results": [{"name": "admin"}]}',
    ],
    ids=[
        "no-results",
        "results-not-a-list",
        "name-not-a-string",
        "bare-string",
        "token-not-a-string",
        "not-json",
        "duplicate-member",
    ],
)
def test_a_malformed_search_answer_fails_closed(remote: ScriptedPdp, answer: Any) -> None:
    remote.answer = answering(answer)
    with pytest.raises(RemotePdpError):
        client(remote).search_actions(REQUEST)


def test_a_pdp_that_never_stops_paging_is_refused(remote: ScriptedPdp) -> None:
    remote.answer = lambda path, body: (200, b'{"results": [], "page": {"next_token": "again"}}', JSON)
    with pytest.raises(RemotePdpError, match="pages"):
        client(remote).search_actions(REQUEST)
    assert len(remote.evaluation_calls()) == MAX_SEARCH_PAGES
