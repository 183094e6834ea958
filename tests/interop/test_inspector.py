"""The MCP Inspector's CLI (@modelcontextprotocol/inspector) against coremcp, over HTTP and stdio."""

import json
import os
import subprocess

import pytest

from conftest import coremcp_bin


def inspector(*args):
    node = os.environ.get("CONFORMANCE_NODE")
    cli = os.environ.get("INSPECTOR_CLI")
    if not node or not cli:
        pytest.fail("CONFORMANCE_NODE and INSPECTOR_CLI are unset: run the tests through scripts/test.sh")
    proc = subprocess.run([node, cli, "--cli", *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def test_http_list_and_call(server):
    listed = inspector(server.url, "--transport", "http", "--method", "tools/list")
    assert "search_code" in [t["name"] for t in listed["tools"]]
    result = inspector(
        server.url, "--transport", "http", "--method", "tools/call",
        "--tool-name", "read_file", "--tool-arg", "path=src/main.rs",
    )
    assert result["isError"] is False
    assert "hello from coremcp" in result["content"][0]["text"]


def test_stdio_list_and_call(fixture_dir):
    base = [coremcp_bin(), "stdio", "--root", str(fixture_dir)]
    listed = inspector(*base, "--method", "tools/list")
    assert len(listed["tools"]) == 6
    result = inspector(*base, "--method", "tools/call", "--tool-name", "list_directory", "--tool-arg", "path=.")
    assert result["isError"] is False
    names = [e["name"] for e in result["structuredContent"]["entries"]]
    assert "src" in names and "README.md" in names
