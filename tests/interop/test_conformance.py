"""The official MCP conformance suite (@modelcontextprotocol/conformance) against coremcp.

The scenarios here are the ones any tool server can pass; the tools-call-* ones
(and json-schema-2020-12) need the suite's own fixture tools (test_simple_text …),
which a production server does not ship, and the logging, completion, resources and
prompts ones need capabilities coremcp does not declare. server-sse-polling checks
nothing against a server that answers POSTs with JSON (0/0). scripts/test.sh installs Node 22 and the suite and sets
CONFORMANCE_NODE / CONFORMANCE_CLI.
"""

import os
import subprocess

import pytest

SCENARIOS = [
    "server-initialize",
    "ping",
    "tools-list",
    "dns-rebinding-protection",
    "server-sse-multiple-streams",
]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario(server, scenario):
    node = os.environ.get("CONFORMANCE_NODE")
    cli = os.environ.get("CONFORMANCE_CLI")
    if not node or not cli:
        pytest.fail("CONFORMANCE_NODE and CONFORMANCE_CLI are unset: run the tests through scripts/test.sh")
    proc = subprocess.run(
        [node, cli, "server", "--url", server.url, "--scenario", scenario],
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, report
    assert "0 failed" in report, report
    assert "FAILURE" not in report, report
