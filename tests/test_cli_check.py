"""`callwarden check`: the board-packet cases through the real CLI, and every kind of input error."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import pytest

from callwarden.cli import main

EXAMPLE: Final = Path(__file__).resolve().parents[1] / "examples" / "board-packet"
CASES: Final[list[dict[str, Any]]] = json.loads((EXAMPLE / "cases.json").read_text())["cases"]
CALLWARDEN: Final = str(Path(sys.executable).parent / "callwarden")
ANALYST: Final = str(EXAMPLE / "claims" / "analyst.json")
Q3_EXAMPLE_CORP: Final = str(EXAMPLE / "requests" / "query-q3-example-corp.json")


def check(capsys: pytest.CaptureFixture[str], *args: str, config: str = str(EXAMPLE)) -> tuple[int, str, str]:
    """Run `callwarden check` in this process: (exit code, stdout, stderr)."""
    try:
        code = main(["check", "--config", config, *args])
    except SystemExit as exit:
        code = int(exit.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def reports() -> dict[str, tuple[int, dict[str, Any]]]:
    """Each case through `callwarden check` once: (exit code, the JSON report)."""
    decided = {}
    for case in CASES:
        args = ["--server", case["server"], "--claims", str(EXAMPLE / case["claims"])]
        with contextlib.redirect_stdout(io.StringIO()) as out:
            code = main(
                ["check", "--config", str(EXAMPLE), *args, "--request", str(EXAMPLE / case["request"])]
            )
        decided[case["name"]] = (code, json.loads(out.getvalue()))
    return decided


def _request_file(tmp_path: Path, body: str | bytes) -> str:
    path = tmp_path / "request.json"
    path.write_bytes(body.encode() if isinstance(body, str) else body)
    return str(path)


# --- the scenario's cases ----------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_case_exits_0_on_allow_and_1_on_deny(
    reports: dict[str, tuple[int, dict[str, Any]]], case: dict[str, Any]
) -> None:
    code, report = reports[case["name"]]
    assert (code, report["decision"]) == ((0, True) if case["decision"] == "allow" else (1, False))


@pytest.mark.parametrize(
    "case", [c for c in CASES if "rule" in c], ids=[c["name"] for c in CASES if "rule" in c]
)
def test_case_names_the_deciding_rule(
    reports: dict[str, tuple[int, dict[str, Any]]], case: dict[str, Any]
) -> None:
    _, report = reports[case["name"]]
    assert case["rule"] in report["reasons"]


@pytest.mark.parametrize("case", CASES, ids=[case["name"] for case in CASES])
def test_case_reports_the_sarc_requests_it_decided(
    reports: dict[str, tuple[int, dict[str, Any]]], case: dict[str, Any]
) -> None:
    _, report = reports[case["name"]]
    claims = json.loads((EXAMPLE / case["claims"]).read_text())
    request = json.loads((EXAMPLE / case["request"]).read_text())
    assert report["requests"], "every case of the scenario reaches the PDP"
    for sarc in report["requests"]:
        assert set(sarc) == {"subject", "action", "resource", "context"}
        assert sarc["subject"]["id"] == claims["sub"]
        assert sarc["context"]["agent"] == claims["client_id"]
        assert sarc["context"]["mcp"]["server"] == case["server"]
        assert sarc["context"]["mcp"]["method"] == request["method"]


def test_the_allowed_q3_read_reports_exactly_its_sarc_request(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = check(capsys, "--server", "finance", "--claims", ANALYST, "--request", Q3_EXAMPLE_CORP)
    assert json.loads(out)["requests"] == [
        {
            "subject": {"type": "identity", "id": "alice", "properties": {"roles": ["analyst"]}},
            "action": {"name": "read"},
            "resource": {"type": "financials", "id": "example-corp", "properties": {"period": "2026-Q3"}},
            "context": {
                "agent": "board-agent",
                "mcp": {"server": "board-packet/finance", "method": "tools/call", "tool": "query_financials"},
            },
        }
    ]


# --- decisions outside the scenario ------------------------------------------------------


def test_a_mapping_error_is_32602_naming_tool_field_and_expression(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    body = (
        '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"query_financials","arguments":{}}}'
    )
    code, out, _ = check(
        capsys, "--server", "finance", "--claims", ANALYST, "--request", _request_file(tmp_path, body)
    )
    error = json.loads(out)["jsonrpc_error"]
    assert (code, error["code"]) == (1, -32602)
    assert "query_financials" in error["message"] and "$params.arguments." in error["message"]


def test_an_unknown_method_is_denied_32001(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    body = '{"jsonrpc":"2.0","id":1,"method":"tools/delete","params":{"name":"query_financials"}}'
    code, out, _ = check(
        capsys, "--server", "finance", "--claims", ANALYST, "--request", _request_file(tmp_path, body)
    )
    report = json.loads(out)
    assert (code, report["jsonrpc_error"]["code"], report["reasons"]) == (1, -32001, ["unknown-method"])


def test_positional_params_are_denied_as_on_the_data_path(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    body = '{"jsonrpc":"2.0","id":1,"method":"tools/list","params":[]}'
    code, out, _ = check(
        capsys, "--server", "finance", "--claims", ANALYST, "--request", _request_file(tmp_path, body)
    )
    assert (code, json.loads(out)["reasons"]) == (1, ["positional-params"])


def test_a_body_the_strict_parse_refuses_is_denied_with_its_reason(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    body = '{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call"}'
    code, out, _ = check(
        capsys, "--server", "finance", "--claims", ANALYST, "--request", _request_file(tmp_path, body)
    )
    report = json.loads(out)
    assert (code, report["jsonrpc_error"]["code"], report["reasons"]) == (
        1,
        -32700,
        ["body:duplicate-member"],
    )


def test_a_batch_with_one_denied_call_is_denied(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ping = '{"jsonrpc":"2.0","id":1,"method":"ping"}'
    denied = (EXAMPLE / "requests" / "query-q3-other-corp.json").read_text()
    code, out, _ = check(
        capsys,
        "--server",
        "finance",
        "--claims",
        ANALYST,
        "--request",
        _request_file(tmp_path, f"[{ping},{denied}]"),
    )
    assert (code, json.loads(out)["reasons"]) == (1, ["board-packet/finance-guardrails/only-example-corp"])


# --- input errors: exit 2 with a message naming the problem -------------------------------


def test_a_missing_claims_file_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = str(tmp_path / "nobody.json")
    code, out, err = check(capsys, "--server", "finance", "--claims", missing, "--request", Q3_EXAMPLE_CORP)
    assert (code, out) == (2, "")
    assert f"cannot read claims file {missing}" in err


def test_a_missing_request_file_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = str(tmp_path / "nothing.json")
    code, _, err = check(capsys, "--server", "finance", "--claims", ANALYST, "--request", missing)
    assert code == 2
    assert f"cannot read request file {missing}" in err


def test_a_missing_config_path_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = str(tmp_path / "no-config")
    code, _, err = check(
        capsys, "--server", "finance", "--claims", ANALYST, "--request", Q3_EXAMPLE_CORP, config=missing
    )
    assert code == 2
    assert f"{missing}: no such file or directory" in err


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("[1, 2]", "must hold a JSON object, not list"),
        ('"alice"', "must hold a JSON object, not str"),
        ("{", "is not JSON"),
    ],
    ids=["array", "string", "not-json"],
)
def test_claims_that_are_not_an_object_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str, problem: str
) -> None:
    claims = tmp_path / "claims.json"
    claims.write_text(content)
    code, _, err = check(capsys, "--server", "finance", "--claims", str(claims), "--request", Q3_EXAMPLE_CORP)
    assert code == 2
    assert f"claims file {claims} {problem}" in err


def test_an_unknown_server_exits_2_listing_the_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = check(capsys, "--server", "payroll", "--claims", ANALYST, "--request", Q3_EXAMPLE_CORP)
    assert code == 2
    assert "no McpServer named 'payroll'" in err
    assert "board-packet/documents, board-packet/finance, board-packet/workflow" in err


def test_a_config_dir_with_a_bad_cel_expression_exits_2_naming_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "servers.yaml").write_text((EXAMPLE / "servers.yaml").read_text())
    policies = (EXAMPLE / "policies.yaml").read_text()
    broken = policies.replace('resource.id == "board-packet"', "resource.id == ")
    assert broken != policies
    (tmp_path / "policies.yaml").write_text(broken)
    code, _, err = check(
        capsys, "--server", "finance", "--claims", ANALYST, "--request", Q3_EXAMPLE_CORP, config=str(tmp_path)
    )
    assert code == 2
    assert "rule 'draft-board-packet'" in err
    assert "resource.id == '" in err  # the expression itself, as written


def test_a_bad_mapping_expression_warns_naming_it_and_fails_that_tool_closed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    servers = (EXAMPLE / "servers.yaml").read_text()
    broken = servers.replace('id: "$params.arguments.entity"', 'id: "$params.arguments.entity +"')
    assert broken != servers
    (tmp_path / "servers.yaml").write_text(broken)
    (tmp_path / "policies.yaml").write_text((EXAMPLE / "policies.yaml").read_text())
    code, out, err = check(
        capsys, "--server", "finance", "--claims", ANALYST, "--request", Q3_EXAMPLE_CORP, config=str(tmp_path)
    )
    assert "params.arguments.entity +" in err
    assert (code, json.loads(out)["jsonrpc_error"]["code"]) == (1, -32602)


# --- the installed entry point -----------------------------------------------------------


@pytest.mark.parametrize(
    ("request_file", "exit_code"),
    [("requests/query-q3-other-corp.json", 1), ("requests/none.json", 2)],
    ids=["deny", "input-error"],
)
def test_the_callwarden_command_exits_with_the_decision(request_file: str, exit_code: int) -> None:
    # In-process runs above cover every decision; this proves the installed entry point's exit codes.
    command = [CALLWARDEN, "check", "--config", ".", "--server", "finance", "--claims", "claims/analyst.json"]
    done = subprocess.run(
        [*command, "--request", request_file],
        cwd=EXAMPLE,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == exit_code, done.stderr
