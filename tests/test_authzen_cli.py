"""`callwarden pdp`: the command serves the configuration, and refuses a broken one with exit 2."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx2
import pytest

from callwarden.cli import main

ROOT = Path(__file__).parent.parent
FIXTURE = ROOT / "examples" / "authzen-interop" / "certification"


def pdp_command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "callwarden.cli", "pdp", *arguments]


def test_the_pdp_command_serves_the_configuration_until_sigterm(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# PEP secrets\npep-secret\n")
    command = pdp_command(
        "--config",
        str(FIXTURE),
        "--data",
        str(FIXTURE / "data.json"),
        "--listen",
        "127.0.0.1:0",
        "--token-file",
        str(tokens),
    )
    process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True, env={**os.environ})
    try:
        assert process.stderr is not None
        banner = process.stderr.readline()
        found = re.search(r"at (http://127\.0\.0\.1:\d+)$", banner.strip())
        assert found, banner
        body = {
            "subject": {"type": "user", "id": "alice"},
            "action": {"name": "read"},
            "resource": {"type": "record", "id": "record-1"},
        }
        headers = {"Authorization": "Bearer pep-secret"}
        answer = httpx2.post(f"{found.group(1)}/access/v1/evaluation", json=body, headers=headers, timeout=10)
        assert answer.json() == {"decision": True}
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        pytest.param(("--config", "/nonexistent"), "no such file or directory", id="missing-config"),
        pytest.param(
            ("--config", str(FIXTURE), "--data", "/nonexistent.json"),
            "cannot read PIP data",
            id="missing-data",
        ),
        pytest.param(
            ("--config", str(FIXTURE), "--listen", "localhost"), "expected HOST:PORT", id="bad-listen"
        ),
        pytest.param(("--config", str(FIXTURE), "--base-url", "ftp://pdp"), "base URL", id="bad-base-url"),
        pytest.param(
            ("--config", str(FIXTURE), "--token-file", "/nonexistent"), "token file", id="missing-tokens"
        ),
    ],
)
def test_the_pdp_command_refuses_a_broken_setup_with_exit_2(
    arguments: tuple[str, ...], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    listen = () if "--listen" in arguments else ("--listen", "127.0.0.1:0")
    with pytest.raises(SystemExit) as exited:
        main(["pdp", *arguments, *listen])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
