#!/usr/bin/env bash
# Profile-guided build of coremcp, trained on the load benchmark's workloads.
#
#   scripts/pgo.sh        → target/pgo/release/coremcp (path printed on stdout)
#
# Why: the request path is a few thousand instructions spread over serde,
# httparse, glommio and coremcp; laid out by a real profile, the hot code sits
# together and the cold error paths move out of the way. Measured on the 2-vCPU
# VM in the README: 15–25 % less user CPU per request than `cargo build
# --release` (docs/performance.md, tuning item 27).
#
# Steps: build an instrumented binary (target/pgo-gen), run it pinned on
# loopback under each workload of scripts/lib/workloads.sh (wrk), then under a
# session-ful client (2025-11-25: initialize, tools/call with Mcp-Session-Id)
# and a handful of other requests so those paths are not laid out as cold;
# stop it with SIGTERM (the profile is written at exit), merge the profile and
# build with it (target/pgo). Needs llvm-profdata from rustup's llvm-tools
# component, and installs it if it is missing.
#
# Environment (defaults in brackets):
#   PGO_PORT [7412]            port on 127.0.0.1; refuses to run if it is taken
#   PGO_SECONDS [3]            seconds of wrk per workload
#   PGO_SERVER_CPU [1]         CPU of the server being trained
#   PGO_LOAD_CPU [0]           CPU of wrk
#   PGO_FIXTURE [target/bench-fixture]
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)
# shellcheck source=scripts/lib/workloads.sh
. scripts/lib/workloads.sh
# shellcheck source=scripts/lib/common.sh
. scripts/lib/common.sh
SCRIPT=pgo.sh
PORT=${PGO_PORT:-7412}
SECS=${PGO_SECONDS:-3}
SERVER_CPU=${PGO_SERVER_CPU:-1}
LOAD_CPU=${PGO_LOAD_CPU:-0}
FIXTURE=${PGO_FIXTURE:-$REPO/target/bench-fixture}
URL="http://127.0.0.1:$PORT/mcp"
WORK=$(mktemp -d /tmp/coremcp-pgo.XXXXXX)


SERVER_PID=""
cleanup() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_taken && die "port $PORT is taken (ss -ltnp says so); set PGO_PORT"
command -v wrk >/dev/null || die "wrk is needed (apt-get install wrk)"
command -v curl >/dev/null || die "curl is needed"

# llvm-profdata must match rustc's LLVM: take the one rustup ships with it.
profdata() {
    ls "$(rustc --print sysroot)"/lib/rustlib/*/bin/llvm-profdata 2>/dev/null | head -1
}
if [ -z "$(profdata)" ]; then
    say "installing llvm-profdata (rustup component add llvm-tools)…"
    rustup component add llvm-tools >&2 || die "cannot install rustup's llvm-tools; build without PGO (cargo build --release)"
fi
PROFDATA=$(profdata)
[ -x "$PROFDATA" ] || die "llvm-profdata not found under $(rustc --print sysroot)"

ensure_fixture "$FIXTURE"

say "pgo: building the instrumented binary (target/pgo-gen)…"
# A fixed path keeps RUSTFLAGS, and so the instrumented dependencies, the same
# from one run to the next.
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$REPO/target/pgo-gen/build-profiles" \
    cargo build --release --quiet --target-dir target/pgo-gen

say "pgo: training on 127.0.0.1:$PORT…"
LLVM_PROFILE_FILE="$WORK/train/coremcp-%p.profraw" taskset -c "$SERVER_CPU" \
    target/pgo-gen/release/coremcp serve --listen "127.0.0.1:$PORT" --shards 1 --cpus "$SERVER_CPU" \
    --root "$FIXTURE" --db "$FIXTURE/bench.db" >"$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 200); do
    port_taken && break
    kill -0 "$SERVER_PID" 2>/dev/null || { cat "$WORK/server.log" >&2; die "the instrumented server exited at start"; }
    sleep 0.05
done
port_taken || die "the instrumented server did not listen on $PORT"

for w in read_file query_db search_code tools_list; do
    write_lua "$w" "$WORK/$w.lua"
    taskset -c "$LOAD_CPU" wrk -t1 -c64 -d"${SECS}s" -s "$WORK/$w.lua" "$URL" >"$WORK/wrk.out" 2>&1
    grep -q 'non2xx=0 ' "$WORK/wrk.out" || { cat "$WORK/wrk.out" >&2; die "$w: non-2xx answers while training"; }
    say "   $w: $(awk '/^WRK/ {print $2}' "$WORK/wrk.out")"
done

# The session-ful revisions (the Python SDK, Inspector) and the other tools.
python3 - "$URL" "$WORK" <<'PY' >&2
import json, sys, urllib.request, urllib.error
url, work = sys.argv[1:]
def post(body, headers=None, raw=False):
    h = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    h.update(headers or {})
    req = urllib.request.Request(url, data=body if raw else json.dumps(body).encode(), headers=h, method="POST")
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()
status, headers, _ = post({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
    "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "pgo", "version": "1"}}})
assert status == 200, status
sid = {k.lower(): v for k, v in headers.items()}["mcp-session-id"]
s = {"Mcp-Session-Id": sid, "MCP-Protocol-Version": "2025-11-25"}
assert post({"jsonrpc": "2.0", "method": "notifications/initialized"}, s)[0] == 202
calls = [("read_file", {"path": "small.txt"}), ("read_file", {"path": "small.txt", "offset": 10, "limit": 5}),
         ("list_directory", {"path": "src"}), ("read_multiple_files", {"paths": ["small.txt", "nope.txt"]}),
         ("search_code", {"query": "needle_marker", "path": "src"}), ("db_schema", {}),
         ("query_db", {"sql": "SELECT count(*) FROM items"}), ("query_db", {"sql": "DELETE FROM items"}),
         ("read_file", {"path": "../etc/passwd"})]
for i in range(200):
    for j, (name, args) in enumerate(calls):
        post({"jsonrpc": "2.0", "id": i * 100 + j, "method": "tools/call", "params": {"name": name, "arguments": args}}, s)
    post({"jsonrpc": "2.0", "id": i, "method": "ping"}, s)
    post({"jsonrpc": "2.0", "id": i, "method": "tools/list"}, s)
    post(b'{"jsonrpc":"2.0","id":1,', s, raw=True)
    post({"jsonrpc": "2.0", "id": i, "method": "no/such"}, s)
open(f"{work}/session", "w").write(sid)
print("   session-ful client and other tools: done")
PY
SID=$(cat "$WORK/session")
cat >"$WORK/session.lua" <<LUA
wrk.method = "POST"
wrk.body = [==[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_file","arguments":{"path":"small.txt"}}}]==]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["MCP-Protocol-Version"] = "2025-11-25"
wrk.headers["Mcp-Session-Id"] = "$SID"
LUA
taskset -c "$LOAD_CPU" wrk -t1 -c16 -d"${SECS}s" -s "$WORK/session.lua" "$URL" >"$WORK/wrk.out" 2>&1
grep -q "Non-2xx" "$WORK/wrk.out" && { cat "$WORK/wrk.out" >&2; die "session read_file: non-2xx answers while training"; }

kill -TERM "$SERVER_PID"
wait "$SERVER_PID" || die "the instrumented server did not exit cleanly; no profile"
SERVER_PID=""
ls "$WORK"/train/coremcp-*.profraw >/dev/null 2>&1 || die "no profile was written"
"$PROFDATA" merge -o "$WORK/coremcp.profdata" "$WORK"/train/coremcp-*.profraw

say "pgo: building with the profile (target/pgo)…"
# Functions the training never ran (other tools' rare branches) have no
# profile; that is expected, not worth a warning each.
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$WORK/coremcp.profdata -Cllvm-args=-pgo-warn-missing-function=false" \
    cargo build --release --quiet --target-dir target/pgo
echo "$REPO/target/pgo/release/coremcp"
