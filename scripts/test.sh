#!/usr/bin/env bash
# The test command (README): installs what the tests need on a fresh machine, then
# runs every suite against the real binary:
#   1. cargo test            — unit tests and the HTTP/stdio integration tests
#   2. pytest tests/interop  — the official MCP Python SDK client (legacy, auto,
#                              2026-07-28, stdio), the official conformance suite
#                              and the MCP Inspector CLI (HTTP and stdio)
#   3. pytest tests/scripts  — the benchmark's analysis scripts: scripts/catchup.py
#                              against a constructed loadgen dump, and
#                              scripts/lib/others.py against spinning processes
# Installs go under .tools/ (git-ignored) and are reused when present.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TOOLS=$ROOT/.tools
mkdir -p "$TOOLS"

step() { printf '\n==> %s\n' "$*"; }

step "Python SDK client and pytest (.tools/venv)"
if [ ! -x "$TOOLS/venv/bin/python" ]; then
  python3 -m venv "$TOOLS/venv"
fi
"$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check -r tests/interop/requirements.txt

step "Node 22, the MCP conformance suite and the MCP Inspector (.tools/node)"
# The machine's Node may be older; the suite needs Node 22 (fs.globSync), which
# the npm registry ships as the `node` package.
# The lockfile pins the whole tree (the suite's own SDK included), so a new
# release upstream cannot change what these tests mean.
if ! cmp -s tests/interop/package-lock.json "$TOOLS/node/package-lock.json" || [ ! -x "$TOOLS/node/node_modules/.bin/node" ]; then
  mkdir -p "$TOOLS/node"
  cp tests/interop/package.json tests/interop/package-lock.json "$TOOLS/node/"
  (cd "$TOOLS/node" && npm ci --no-audit --no-fund --loglevel=error)
fi
export CONFORMANCE_NODE="$TOOLS/node/node_modules/.bin/node"
export CONFORMANCE_CLI="$TOOLS/node/node_modules/@modelcontextprotocol/conformance/dist/index.js"
export INSPECTOR_CLI="$TOOLS/node/node_modules/@modelcontextprotocol/inspector/clients/launcher/build/index.js"
"$CONFORMANCE_NODE" --version

step "cargo test"
cargo test --locked --all-targets

step "interop: Python SDK client, conformance suite, MCP Inspector"
export COREMCP_BIN="$ROOT/target/debug/coremcp"
"$TOOLS/venv/bin/python" -m pytest tests/interop -q

step "scripts: catchup.py on a constructed loadgen dump, others.py on spinning processes"
"$TOOLS/venv/bin/python" -m pytest tests/scripts -q
