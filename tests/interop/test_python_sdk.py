"""The official MCP Python SDK client against coremcp, in every mode it has."""

import asyncio

import pytest
from mcp import Client, StdioServerParameters

from conftest import coremcp_bin

# What each mode must end up speaking with a dual-era server: "auto" prefers the
# stateless revision when the server offers it.
MODES = {"legacy": "2025-11-25", "auto": "2026-07-28", "2026-07-28": "2026-07-28"}
TOOLS = {"read_file", "read_multiple_files", "list_directory", "search_code", "query_db", "db_schema"}


async def exercise(client):
    tools = await client.list_tools()
    names = {t.name for t in tools.tools}
    assert TOOLS <= names, names

    r = await client.call_tool("read_file", {"path": "src/main.rs"})
    assert not r.is_error, r.content
    assert "hello from coremcp" in r.content[0].text

    r = await client.call_tool("query_db", {"sql": "SELECT id, name, price FROM items WHERE id = ?", "params": [7]})
    assert not r.is_error, r.content
    assert r.structured_content["rows"] == [[7, "item-7", 10.5]] or r.structured_content["rows"] == [
        {"id": 7, "name": "item-7", "price": 10.5}
    ], r.structured_content

    r = await client.call_tool("search_code", {"query": "hello from"})
    assert not r.is_error, r.content
    assert "src/main.rs:2" in r.content[0].text

    # A model's mistake is a result it can read, not a protocol error.
    r = await client.call_tool("read_file", {"path": "../../etc/passwd"})
    assert r.is_error
    r = await client.call_tool("read_file", {})
    assert r.is_error and "path" in r.content[0].text


@pytest.mark.parametrize("mode", list(MODES))
def test_http_modes(server, mode):
    async def run():
        async with Client(server.url, mode=mode) as client:
            assert client.protocol_version == MODES[mode]
            if mode != "2026-07-28":
                # A pinned 2026-07-28 client skips server/discover, so it never
                # sees the serverInfo stamp; the other modes must.
                assert client.server_info.name == "coremcp"
            await exercise(client)

    asyncio.run(run())


def test_stdio(fixture_dir):
    params = StdioServerParameters(
        command=coremcp_bin(),
        args=["stdio", "--root", str(fixture_dir), "--db", str(fixture_dir / "shop.db")],
    )

    async def run():
        async with Client(params) as client:
            assert client.server_info.name == "coremcp"
            await exercise(client)

    asyncio.run(run())


@pytest.mark.parametrize("mode", list(MODES))
def test_progress_reaches_the_client(server, mode):
    seen = []

    async def on_progress(progress, total, message):
        seen.append((progress, total))

    async def run():
        async with Client(server.url, mode=mode) as client:
            r = await client.call_tool("search_code", {"query": "hello"}, progress_callback=on_progress)
            assert not r.is_error, r.content

    asyncio.run(run())
    assert seen, "no notifications/progress reached the client"
    assert seen[-1][0] == seen[-1][1], seen
