#!/usr/bin/env bash
# One command: coremcp side by side with the official Rust SDK (rmcp) and a
# hello-world ceiling, under the same load, pinned, on loopback.
#
#   scripts/bench.sh
#
# Builds everything in release, coremcp also profile-guided (scripts/pgo.sh,
# trained on these same workloads), generates the fixture (scripts/gen_fixture.py),
# installs wrk (apt) and oha (cargo install --locked) if missing, then for each
# workload (read_file, query_db, search_code, tools/list) and server:
#   * closed loop: wrk, BENCH_CONNECTIONS connections, BENCH_SECONDS seconds;
#   * fixed rate: benches/loadgen (or oha) at half of coremcp's (1 shard)
#     closed-loop maximum (the median of its row and its paired rounds), with
#     coordinated-omission correction;
# checks first that one sample request answers 200 with a JSON-RPC result, and
# then that every answer was one: wrk counts non-2xx answers and socket errors,
# loadgen checks every body for a JSON-RPC result that is not a tool error, and
# coremcp's own counters (/metrics) must show no failed tool call and no non-200
# answer over the whole row. A row with any of them is marked. The hello-world ceiling is
# measured in every workload, at the same fixed rate (what p99 the machine and
# the generator allow at that rate; its runs alternate with coremcp's, run for
# run, BENCH_CEILING_BESIDE), at half of its own maximum (the load the p99
# target puts on coremcp, BENCH_CEILING_OWN_HALF), and in paired rounds: coremcp, the
# ceiling and the peer back to back, turn by turn in a rotating order, so that
# coremcp's ratios to the ceiling and to the peer divide numbers taken seconds
# apart, not minutes (this VM's speed drifts by tens of per cent from one
# minute to the next). Prints a markdown table and writes it to
# bench-results/latest.md.
#
# Environment (defaults in brackets):
#   BENCH_PORT [7411]           port on 127.0.0.1; refuses to run if it is taken
#   BENCH_SECONDS [10]          seconds per measured run (plus a 2 s warm-up)
#   BENCH_CONNECTIONS [64]      connections (closed loop and fixed rate)
#   BENCH_SERVER_CPU [1]        CPU of the one-shard server and of the peers
#   BENCH_LOAD_CPU [0]          CPU of the load generators
#   BENCH_SHARDS2_CPUS [0,1]    CPUs of the two-shard run ("" to skip it)
#   BENCH_FIXTURE [target/bench-fixture]
#   BENCH_WORKLOADS [read_file query_db search_code tools_list]
#   BENCH_BUILD [pgo]           coremcp's build: pgo (scripts/pgo.sh; falls back to
#                               release, and says so, if llvm-profdata cannot be had)
#                               or release (plain `cargo build --release`)
#   BENCH_SERVERS [coremcp coremcp-release coremcp-spin coremcp-nowait coremcp-nokeep rmcp hello coremcp2]
#                               coremcp-release: one shard, plain release build, for
#                               comparison with the PGO build (skipped unless pgo)
#                               coremcp-spin: one shard with --poll-spin-us
#                               $BENCH_POLL_SPIN_US (tuning/low-latency.toml's
#                               choice), measured at coremcp's fixed rate
#                               coremcp-nowait: one shard with --poll-wait-us 0 (the
#                               pump parks through io_uring as soon as it finds
#                               nothing: the default before session 14)
#                               coremcp-nokeep: one shard with the query_db answer
#                               cache off (`[tools.query_db] cache = false`), so
#                               every call runs SQLite as the peer does; query_db only
#   BENCH_POLL_SPIN_US [100]    coremcp-spin's runtime.poll_spin_us
#   BENCH_FIXED_GEN [loadgen]   fixed-rate generator: loadgen or oha
#   BENCH_GEN_SPIN_US [1000]    loadgen's --spin-us: poll instead of sleeping when the
#                               next request is due within this many µs (a timed
#                               sleep on this VM wakes ~60 µs late, and the lateness
#                               counts as latency); 0 to always sleep
#   BENCH_FIXED_RUNS [3]        fixed-rate runs per row; the table shows the run
#                               with the median p99 (tails on a VM vary several-fold
#                               from run to run), and the log every run
#   BENCH_PAIR_ROUNDS [5]       paired rounds of coremcp (1 shard), the ceiling and the
#                               peer per workload; the ×ceiling and ×peer columns
#                               of coremcp's row are the medians of their ratios
#                               (0 to skip them: the rows' ratios are used instead,
#                               and the fixed rate comes from the row alone)
#   BENCH_PAIR_SECONDS [5]      seconds per closed-loop run in a pair (after 2 s warm-up)
#   BENCH_PAIR_WORKLOADS [read_file query_db tools_list]
#                               workloads that get paired rounds (search_code is
#                               ~2 % of the ceiling by nature and hundreds of times
#                               the peer: a ratio to either says nothing more)
#   BENCH_CEILING_BESIDE [1]    1: the ceiling's fixed-rate runs alternate with coremcp's
#                               (1 shard), run for run, the ceiling waiting beside
#                               it on port BENCH_PORT+1 (same CPU): the two are
#                               compared on the same minute. 0: the ceiling's row
#                               measures its own, minutes later
#   BENCH_CEILING_OWN_HALF [1]  1: the ceiling also runs at half of its own maximum in
#                               each workload (its row and its rounds), the load the
#                               p99 target puts on coremcp: what a bare server gets
#                               there on this machine (row "at half its own maximum")
#   BENCH_PROBE_SECS [10]       how long `loadgen --probe-secs` spins on both CPUs at once
#                               before the rows, to show what the machine takes (table header)
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd)
# shellcheck source=scripts/lib/workloads.sh
. scripts/lib/workloads.sh
# shellcheck source=scripts/lib/common.sh
. scripts/lib/common.sh
SCRIPT=bench.sh
PORT=${BENCH_PORT:-7411}
SECONDS_PER_RUN=${BENCH_SECONDS:-10}
CONNS=${BENCH_CONNECTIONS:-64}
SERVER_CPU=${BENCH_SERVER_CPU:-1}
LOAD_CPU=${BENCH_LOAD_CPU:-0}
SHARDS2_CPUS=${BENCH_SHARDS2_CPUS-0,1}
FIXTURE=${BENCH_FIXTURE:-$REPO/target/bench-fixture}
WORKLOADS=${BENCH_WORKLOADS:-read_file query_db search_code tools_list}
SERVERS=${BENCH_SERVERS:-coremcp coremcp-release coremcp-spin coremcp-nowait coremcp-nokeep rmcp hello coremcp2}
POLL_SPIN_US=${BENCH_POLL_SPIN_US:-100}
BUILD=${BENCH_BUILD:-pgo}
FIXED_GEN=${BENCH_FIXED_GEN:-loadgen}
FIXED_RUNS=${BENCH_FIXED_RUNS:-3}
GEN_SPIN_US=${BENCH_GEN_SPIN_US:-1000}
PAIR_ROUNDS=${BENCH_PAIR_ROUNDS:-5}
PAIR_SECONDS=${BENCH_PAIR_SECONDS:-5}
PAIR_WORKLOADS=${BENCH_PAIR_WORKLOADS:-read_file query_db tools_list}
PROBE_SECONDS=${BENCH_PROBE_SECS:-10}
URL="http://127.0.0.1:$PORT/mcp"
CEILING_BESIDE=${BENCH_CEILING_BESIDE:-1}
case " $SERVERS " in *" hello "*) ;; *) CEILING_BESIDE=0 ;; esac
CEILING_OWN_HALF=${BENCH_CEILING_OWN_HALF:-1}
BESIDE_PORT=$((PORT + 1))
BESIDE_URL="http://127.0.0.1:$BESIDE_PORT/mcp"
WORK=$(mktemp -d /tmp/coremcp-bench.XXXXXX)
RESULTS=$WORK/results.tsv
PAIRS=$WORK/pairs.tsv
: >"$RESULTS"
: >"$PAIRS"


# ---------------------------------------------------------------- cleanup
SERVER_PID=""
BESIDE_PID=""
LOAD_PID=""
cleanup() {
    for pid in $LOAD_PID $SERVER_PID $BESIDE_PID; do
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ "${SERVERS%% *}" = coremcp ] || die "BENCH_SERVERS must start with coremcp: it sets the fixed rates"


# ---------------------------------------------------------------- tools
command -v python3 >/dev/null || die "python3 is needed for the fixture and the table"
command -v curl >/dev/null || die "curl is needed for the sample checks"
command -v ss >/dev/null || die "ss (iproute2) is needed to check the port"
command -v taskset >/dev/null || die "taskset (util-linux) is needed for pinning"
if ! command -v wrk >/dev/null; then
    say "installing wrk (apt-get)…"
    apt-get update -qq && apt-get install -y -qq wrk >/dev/null || die "cannot install wrk"
fi
if ! command -v oha >/dev/null; then
    say "installing oha (cargo install oha --locked)…"
    cargo install oha --locked >/dev/null 2>&1 || die "cannot install oha"
fi

port_taken && die "port $PORT is taken (ss -ltnp says so); SO_REUSEPORT would split the traffic. Stop that process or set BENCH_PORT."
if [ "$CEILING_BESIDE" = 1 ] && port_taken "$BESIDE_PORT"; then
    die "port $BESIDE_PORT (BENCH_PORT+1, for the ceiling beside coremcp) is taken (ss -ltnp says so). Stop that process, set BENCH_PORT, or BENCH_CEILING_BESIDE=0."
fi
[ "$(nproc)" -gt "$SERVER_CPU" ] || die "BENCH_SERVER_CPU=$SERVER_CPU but nproc is $(nproc)"

# Other builds on the machine skew every number: note them (not fatal).
QUIET="yes"
busy() { pgrep -x cargo >/dev/null || pgrep -x rustc >/dev/null; }
if busy; then
    QUIET="no: cargo/rustc processes were running"
    say "warning: cargo/rustc processes are running; numbers will be low"
fi

# ---------------------------------------------------------------- build
say "building (release)…"
cargo build --release --quiet
cargo build --release --quiet --manifest-path benches/peers/rmcp/Cargo.toml
cargo build --release --quiet --manifest-path benches/peers/hello/Cargo.toml
cargo build --release --quiet --manifest-path benches/loadgen/Cargo.toml
COREMCP=$REPO/target/release/coremcp
COREMCP_RELEASE=$COREMCP
BUILT="release (cargo build --release)"
if [ "$BUILD" = pgo ]; then
    ensure_fixture "$FIXTURE"
    if PGO=$(PGO_PORT=$PORT PGO_FIXTURE=$FIXTURE PGO_SERVER_CPU=$SERVER_CPU PGO_LOAD_CPU=$LOAD_CPU \
        scripts/pgo.sh); then
        COREMCP=$PGO
        BUILT="profile-guided (scripts/pgo.sh, trained on these workloads)"
    else
        say "warning: the PGO build failed; measuring the plain release build"
        BUILT="release (cargo build --release): the PGO build failed"
        BUILD=release
    fi
fi
RMCP_PEER=$REPO/benches/peers/rmcp/target/release/rmcp-peer
HELLO=$REPO/benches/peers/hello/target/release/hello-peer
LOADGEN=$REPO/benches/loadgen/target/release/loadgen

# The builds leave hundreds of MiB of dirty pages: write them back now, not
# during the first rows.
sync

# ---------------------------------------------------------------- the machine
# What the machine takes from each CPU while both are busy, as they are in
# every fixed-rate row (the generator spins): loadgen --probe-secs spins on a
# CPU reading the clock and counts the gaps. On a VM those are the host's; a
# p99 budget of 1 ms cannot be kept through a 5 ms gap.
taskset -c "$LOAD_CPU" "$LOADGEN" --probe-secs "$PROBE_SECONDS" >"$WORK/probe-load.json" &
PROBE_PID=$!
taskset -c "$SERVER_CPU" "$LOADGEN" --probe-secs "$PROBE_SECONDS" >"$WORK/probe-server.json"
wait "$PROBE_PID"
say "machine probe ($PROBE_SECONDS s, both CPUs busy): CPU $LOAD_CPU $(cat "$WORK/probe-load.json"), CPU $SERVER_CPU $(cat "$WORK/probe-server.json")"

# ---------------------------------------------------------------- fixture
ensure_fixture "$FIXTURE"
DB=$FIXTURE/bench.db

# ---------------------------------------------------------------- servers
start_server() { # kind
    local cpus=$SERVER_CPU
    case $1 in
    coremcp) cmd=("$COREMCP" serve --listen "127.0.0.1:$PORT" --shards 1 --cpus "$SERVER_CPU" --root "$FIXTURE" --db "$DB") ;;
    coremcp-release) cmd=("$COREMCP_RELEASE" serve --listen "127.0.0.1:$PORT" --shards 1 --cpus "$SERVER_CPU" --root "$FIXTURE" --db "$DB") ;;
    coremcp-spin) cmd=("$COREMCP" serve --poll-spin-us "$POLL_SPIN_US" --listen "127.0.0.1:$PORT" --shards 1 --cpus "$SERVER_CPU" --root "$FIXTURE" --db "$DB") ;;
    coremcp-nowait) cmd=("$COREMCP" serve --poll-wait-us 0 --listen "127.0.0.1:$PORT" --shards 1 --cpus "$SERVER_CPU" --root "$FIXTURE" --db "$DB") ;;
    coremcp-nokeep)
        printf '[tools.query_db]\ncache = false\n' >"$WORK/nokeep.toml"
        cmd=("$COREMCP" serve --config "$WORK/nokeep.toml" --listen "127.0.0.1:$PORT" --shards 1 --cpus "$SERVER_CPU" --root "$FIXTURE" --db "$DB") ;;
    coremcp2)
        cpus=$SHARDS2_CPUS
        cmd=("$COREMCP" serve --listen "127.0.0.1:$PORT" --shards 2 --cpus "$SHARDS2_CPUS" --root "$FIXTURE" --db "$DB") ;;
    rmcp) cmd=("$RMCP_PEER" --listen "127.0.0.1:$PORT" --root "$FIXTURE" --db "$DB") ;;
    hello) cmd=("$HELLO" "127.0.0.1:$PORT") ;;
    esac
    launch SERVER_PID "$1" "$PORT" "$cpus" "$WORK/server-$1.log" "${cmd[@]}"
}

# Starts CMD pinned to CPUS, its output to LOG, puts its PID in the variable
# named VAR (at once, so that `cleanup` stops it if the start fails), and waits
# until it listens on PORT.
launch() { # var name port cpus log cmd...
    local var=$1 name=$2 port=$3 cpus=$4 log=$5
    shift 5
    port_taken "$port" && die "port $port was taken by something else"
    taskset -c "$cpus" "$@" >"$log" 2>&1 &
    printf -v "$var" '%s' "$!"
    for _ in $(seq 100); do
        port_taken "$port" && return 0
        kill -0 "${!var}" 2>/dev/null || { cat "$log" >&2; die "$name exited at start"; }
        sleep 0.05
    done
    die "$name did not start listening on $port"
}

# Stops PID and waits until nothing listens on PORT.
halt() { # pid port
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    for _ in $(seq 100); do port_taken "$2" || break; sleep 0.05; done
}

# The ceiling beside coremcp (BENCH_CEILING_BESIDE): on BENCH_PORT+1, on the
# server's CPU, idle while coremcp is measured. coremcp idle wakes ~10 times a
# second (its timers), the ceiling idle not at all: neither takes anything that
# shows from the other.
start_beside() {
    launch BESIDE_PID "the ceiling beside coremcp" "$BESIDE_PORT" "$SERVER_CPU" "$WORK/server-beside.log" \
        "$HELLO" "127.0.0.1:$BESIDE_PORT"
}

stop_beside() {
    halt "$BESIDE_PID" "$BESIDE_PORT"
    BESIDE_PID=""
}

# Stops the server and leaves its peak RSS (VmHWM, KiB) in SERVER_HWM. Called in
# the main shell, not in $( ): clearing SERVER_PID in a subshell would leave
# `cleanup` holding a reaped PID that the kernel may give to another process.
stop_server() {
    SERVER_HWM=$(awk '/VmHWM/ {print $2}' "/proc/$SERVER_PID/status" 2>/dev/null || echo 0)
    SERVER_HWM=${SERVER_HWM:-0}
    halt "$SERVER_PID" "$PORT"
    SERVER_PID=""
}

# One request with curl: 200, a JSON-RPC result, not a tool error.
check_sample() { # kind workload
    local hdrs=() h
    while IFS= read -r h; do hdrs+=(-H "$h"); done < <(headers_of "$2")
    local out status
    out=$(curl -sS -o "$WORK/sample.json" -w '%{http_code}' "${hdrs[@]}" --data-binary "$(body_of "$2")" "$URL") || return 1
    status=$out
    python3 - "$WORK/sample.json" "$status" "$1" "$2" <<'PY' >&2
import json, sys
path, status, kind, workload = sys.argv[1:]
body = open(path, "rb").read()
try:
    msg = json.loads(body)
except Exception as e:
    sys.exit(f"{kind}/{workload}: not JSON ({e}): {body[:200]!r}")
if status != "200" or "result" not in msg:
    sys.exit(f"{kind}/{workload}: HTTP {status}, body {body[:300]!r}")
r = msg["result"]
if r.get("isError"):
    sys.exit(f"{kind}/{workload}: tool error: {body[:300]!r}")
if kind != "hello":
    if workload == "tools_list":
        assert len(r["tools"]) >= 3, r
    else:
        text = r["content"][0]["text"]
        want = {"read_file": None, "query_db": "SKU-", "search_code": "needle_marker"}[workload]
        if want and want not in text:
            sys.exit(f"{kind}/{workload}: unexpected answer: {text[:200]!r}")
print(f"  sample {kind}/{workload}: 200, {len(body)} bytes, result ok")
PY
}

# Closed loop: wrk; appends "rps p50 p99 p999 non2xx sockerr" (µs) to stdout.
closed_loop() { # workload seconds
    local lua=$WORK/$1.lua
    write_lua "$1" "$lua"
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${2}s" --timeout 5s -s "$lua" "$URL" >"$WORK/wrk.out" 2>&1 &
    LOAD_PID=$!
    wait "$LOAD_PID" || true
    LOAD_PID=""
    awk '/^WRK/ {
        for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
        printf "%.0f %d %d %d %d %d\n", v["requests"] / (v["duration_us"] / 1e6), v["p50"], v["p99"], v["p999"], v["non2xx"], v["sockerr"]
    }' "$WORK/wrk.out"
}

# Fixed rate with coordinated-omission correction; appends
# "achieved_rps p50 p99 p999 non200 generator_busy% generator_lag_p99 starved
# silence_ms" (µs; the last four "-" for oha). The lag is how late the generator
# wrote requests after they were due; starved counts those that fell due while
# every connection waited on the server (that lag is the server's; the rest is
# the generator's own); silence is how long answers stopped, in gaps of 1 ms or
# more with a request in flight: stalls of the server or of either CPU.
# BENCH_FIXED_GEN picks the generator: loadgen (default, benches/loadgen: one
# thread, one write per request, so its own queueing stays out of the numbers) or
# oha (a hello-world server measured through oha at 38k req/s on this 2-vCPU VM
# shows p99 4.2 ms; through loadgen 0.43 ms).
fixed_rate() { # workload rate seconds [url [dump]]
    local url=${4:-$URL}
    if [ "$FIXED_GEN" = loadgen ]; then
        local args=() h
        while IFS= read -r h; do args+=(--header "$h"); done < <(headers_of "$1")
        [ -n "${5:-}" ] && args+=(--dump "$5")
        taskset -c "$LOAD_CPU" "$LOADGEN" --url "$url" --rate "$2" --connections "$CONNS" \
            --duration-secs "$3" --warmup-secs 1 --spin-us "$GEN_SPIN_US" --json "${args[@]}" --body "$(body_of "$1")" \
            --require '"result":' --reject '"isError":true' \
            >"$WORK/loadgen.json" 2>"$WORK/loadgen.err" &
        LOAD_PID=$!
        wait "$LOAD_PID" || true
        LOAD_PID=""
        python3 - "$WORK/loadgen.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
# No latency at all (unsustainable from the first second): "-" cells.
us = lambda ms: "-" if ms is None else round(ms * 1000)
print(round(d["rate_achieved"]), us(d["p50_ms"]), us(d["p99_ms"]), us(d["p999_ms"]), d["errors"] + d["non2xx"] + d["unexpected"],
      round(d["cpu_busy"] * 100), us(d["send_lag_p99_ms"]), d["starved"], round(d["silence_ms"]))
PY
        return
    fi
    local hdrs=() h
    while IFS= read -r h; do hdrs+=(-H "$h"); done < <(headers_of "$1")
    taskset -c "$LOAD_CPU" oha --no-tui --output-format json -z "${3}s" -c "$CONNS" -q "$2" --latency-correction \
        -m POST "${hdrs[@]}" -d "$(body_of "$1")" "$url" >"$WORK/oha.json" 2>"$WORK/oha.err" &
    LOAD_PID=$!
    wait "$LOAD_PID" || true
    LOAD_PID=""
    python3 - "$WORK/oha.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
p = d["latencyPercentiles"]
codes = d.get("statusCodeDistribution", {})
# Requests still in flight when the run ends are "aborted due to deadline": not errors.
errors = {k: n for k, n in d.get("errorDistribution", {}).items() if "aborted due to deadline" not in k}
bad = sum(n for c, n in codes.items() if c != "200") + sum(errors.values())
us = lambda s: round((s or 0) * 1e6)
print(round(d["summary"]["requestsPerSec"]), us(p["p50"]), us(p["p99"]), us(p["p99.9"]), bad, "-", "-", "-", "-")
PY
}

# What coremcp itself counted as failed since it started: tool calls that ended
# in an error, a timeout or a panic, and answers other than 200 (its /metrics).
# A call the client abandoned (wrk stopping mid-call) is "cancelled", not
# failed. Prints 0 for the other servers, which keep no such counts.
server_failures() { # kind
    case $1 in coremcp*) ;; *) echo 0; return ;; esac
    curl -sS --max-time 5 "http://127.0.0.1:$PORT/metrics" | awk '
        /^mcp_tool_calls_total\{/ && /outcome="(error|timeout|panicked)"/ { n += $NF }
        /^mcp_http_responses_total\{/ && !/status="200"/ { n += $NF }
        END { print n + 0 }' || echo 1
}

# CPU time (user + system, clock ticks) a process has used so far.
server_ticks() { # pid
    awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0
}
TICKS_PER_SEC=$(getconf CLK_TCK)

# Steal time of the server's and the generator's CPUs so far, in clock ticks
# (/proc/stat), as "server generator": how long the host kept each vCPU off its
# physical CPU while it had work to run. A VM's stalls show here; on bare metal
# it stays 0. Both from one read, so that the two are sampled at one instant.
steal_ticks() {
    awk -v s="cpu$SERVER_CPU" -v g="cpu$LOAD_CPU" \
        '$1 == s { st = $9 } $1 == g { gt = $9 } END { print st + 0, gt + 0 }' /proc/stat
}

# One fixed_rate run against the server PID at URL, logged as NAME's run I; prints
# "achieved p50 p99 p999 bad genbusy% genlag starved silence busy% server_steal_ms
# generator_steal_ms others_ms others_top others_top_ms catch_up": busy% is the
# server's CPU use over the run (warm-up included: same rate), the steal is the
# host's on each CPU (/proc/stat), others the CPU time other threads took on either
# CPU, with the one that took the most (scripts/lib/others.py; the servers are left
# out), and catch_up how many answers a second the server gave while it caught up
# after its silences (scripts/catchup.py on loadgen's --dump; for coremcp (1 shard)
# and the ceiling beside it, "-" for the rest, or where there was none to time).
measured_run() { # workload rate seconds pid url name i
    local t0 s0 l0 s1 l1 line busy steal_s steal_l others others_top others_top_ms dump=""
    local catch_up=- late=- predicted=-
    if [ "$FIXED_GEN" = loadgen ] && { [ "$6" = coremcp ] || [ "$6" = hello-own ] || [ "$4" = "$BESIDE_PID" ]; }; then
        dump=$WORK/dump.txt
        rm -f "$dump"
    fi
    t0=$(server_ticks "$4")
    read -r s0 l0 < <(steal_ticks)
    python3 scripts/lib/others.py snap "$WORK/threads.tsv"
    line=$(fixed_rate "$1" "$2" "$3" "$5" "$dump")
    # shellcheck disable=SC2086 # BESIDE_PID is one PID or nothing
    read -r others others_top others_top_ms < <(python3 scripts/lib/others.py diff "$WORK/threads.tsv" "$SERVER_PID" $BESIDE_PID)
    if [ -n "$dump" ] && [ -s "$dump" ]; then
        read -r catch_up late predicted < <(python3 scripts/catchup.py --brief "$dump") || true
        : "${catch_up:=-}" "${late:=-}" "${predicted:=-}"
    fi
    busy=$(( ($(server_ticks "$4") - t0) * 100 / (TICKS_PER_SEC * ($3 + 1)) ))
    read -r s1 l1 < <(steal_ticks)
    steal_s=$(( (s1 - s0) * 1000 / TICKS_PER_SEC ))
    steal_l=$(( (l1 - l0) * 1000 / TICKS_PER_SEC ))
    say "   fixed $2 req/s, $6 run $7: $line (achieved p50 p99 p99.9 µs, not 200, generator busy %, generator lag p99 µs, requests that waited for a free connection, ms without answers in gaps of 1 ms or more), server busy ${busy}%, steal ${steal_s} ms on the server's CPU and ${steal_l} ms on the generator's, other threads ${others} ms (most: $others_top, ${others_top_ms} ms), catch-up ${catch_up} answers/s (answers over 1 ms ${late}, the silences and that catch-up predict ${predicted})"
    echo "$line $busy $steal_s $steal_l $others $others_top $others_top_ms $catch_up"
}

# Of measured_run lines on stdin, prints the run with the median p99 as
# "achieved p50 p99 p999 bad genbusy% genlag starved silence busy% all-runs",
# all-runs being each run's "p99/genlag/starved/silence_ms/server_steal_ms/
# generator_steal_ms/others_ms/others_top/others_top_ms/catch_up" (tails on a VM
# vary several-fold from run to run).
median_run() {
    python3 -c '
import sys
runs = [l.split() for l in sys.stdin if l.strip()]
key = lambda r: float("inf") if r[2] == "-" else float(r[2])
runs.sort(key=key)
print(" ".join(runs[(len(runs) - 1) // 2][:10]), ",".join("/".join((r[2], r[6], r[7], r[8], r[10], r[11], r[12], r[13], r[14], r[15])) for r in runs))'
}

# FIXED_RUNS measured runs of the server under test (NAME) and prints their
# median_run. With the ceiling beside it (BESIDE_PID), each is followed by one of
# the ceiling at the same rate, whose median_run goes to $WORK/beside.txt. A
# server that cannot sustain the rate will not on a second try, so an
# unsustainable run ends the repeats.
fixed_rate_runs() { # workload rate seconds name
    local i line runs=() beside=()
    for i in $(seq "$FIXED_RUNS"); do
        line=$(measured_run "$1" "$2" "$3" "$SERVER_PID" "$URL" "$4" "$i")
        runs+=("$line")
        if [ -n "$BESIDE_PID" ]; then
            beside+=("$(measured_run "$1" "$2" "$3" "$BESIDE_PID" "$BESIDE_URL" "the ceiling beside" "$i")")
        fi
        [ "$(echo "$line" | cut -d' ' -f3)" = "-" ] && break
    done
    if [ -n "$BESIDE_PID" ]; then
        printf '%s\n' "${beside[@]}" | median_run >"$WORK/beside.txt"
    fi
    printf '%s\n' "${runs[@]}" | median_run
}

# coremcp (1 shard), the ceiling and the peer (those of them in SERVERS) back
# to back, PAIR_ROUNDS times, the order rotating one place each round so that
# each goes first in turn; appends "workload round coremcp_rps
# hello_rps rmcp_rps bad noisy" to PAIRS ("-" for a server not measured).
paired_rounds() { # workload
    local i j kind order rps bad noisy failed members=(coremcp)
    case " $SERVERS " in *" hello "*) members+=(hello) ;; esac
    case " $SERVERS " in *" rmcp "*) members+=(rmcp) ;; esac
    [ "${#members[@]}" -gt 1 ] || return 0
    for i in $(seq "$PAIR_ROUNDS"); do
        order=""
        for j in $(seq 0 $((${#members[@]} - 1))); do
            order+="${members[$(((i - 1 + j) % ${#members[@]}))]} "
        done
        order=${order% }
        declare -A got=([hello]=- [rmcp]=-)
        bad=0 noisy=0
        busy && noisy=1
        for kind in $order; do
            start_server "$kind"
            closed_loop "$1" 2 >/dev/null
            read -r rps _ _ _ non2xx sockerr < <(closed_loop "$1" "$PAIR_SECONDS")
            failed=$(server_failures "$kind")
            stop_server
            got[$kind]=$rps
            bad=$((bad + non2xx + sockerr + failed))
        done
        busy && noisy=1
        [ "$noisy" = 1 ] && QUIET="no: cargo/rustc ran during some rows (flagged)"
        say "   round $i ($order): coremcp ${got[coremcp]} req/s, ceiling ${got[hello]} req/s, peer ${got[rmcp]} req/s (bad $bad)"
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$i" "${got[coremcp]}" "${got[hello]}" "${got[rmcp]}" "$bad" "$noisy" >>"$PAIRS"
    done
}

# The median of numbers, rounded down to a whole one.
median_int() {
    printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 }
        END { print (NR % 2) ? v[(NR + 1) / 2] : int((v[NR / 2] + v[NR / 2 + 1]) / 2) }'
}

# One server's req/s in a workload's paired rounds, one per line, as
# paired_rounds recorded them: column 3 is coremcp's, 4 the ceiling's (a round
# that did not measure it, "-", is left out).
round_rps() { # workload column
    awk -F'\t' -v w="$1" -v c="$2" '$1 == w && $c != "-" { print $c }' "$PAIRS"
}

# A fixed rate at half a server's maximum: half the median of its closed-loop
# row and its rounds (why the rounds: see the loop below).
half_of_median() { # rps [round_rps...]
    echo $(( $(median_int "$@") / 2 ))
}

# Appends one row to RESULTS: twenty fields, tab-separated, which the table
# below reads by position.
result_row() {
    [ "$#" = 20 ] || die "result_row: $# fields, not 20"
    local IFS=$'\t'
    echo "$*" >>"$RESULTS"
}

# Workload by workload: first the paired rounds, then every server in turn, so
# that the rows a ratio divides are measured minutes apart, not a quarter of an
# hour (this VM's speed drifts). coremcp's row goes first, to set the
# workload's fixed rate: half the median of its closed-loop runs, its row's and
# its rounds', so that one slow or fast minute does not move the rate (a slow
# row once put read_file's rate at 39k req/s where its rounds ran at 98-116k).
declare -A HALF
for w in $WORKLOADS; do
    case " $PAIR_WORKLOADS " in *" $w "*) paired_rounds "$w" ;; esac
    # coremcp's req/s in this workload's rounds, as paired_rounds recorded them.
    mapfile -t ROUND_RPS < <(round_rps "$w" 3)
    for kind in $SERVERS; do
        [ "$kind" = coremcp2 ] && [ -z "$SHARDS2_CPUS" ] && continue
        # Only query_db has an answer cache to turn off.
        if [ "$kind" = coremcp-nokeep ] && [ "$w" != query_db ]; then continue; fi
        if [ "$kind" = coremcp-release ] && [ "$BUILD" != pgo ]; then continue; fi
        say "== $kind / $w"
        noisy=0
        busy && noisy=1
        start_server "$kind"
        check_sample "$kind" "$w" || die "$kind/$w: the sample request failed; not measuring"
        closed_loop "$w" 2 >/dev/null # warm-up: caches, connections, page cache
        read -r rps p50 p99 p999 non2xx sockerr < <(closed_loop "$w" "$SECONDS_PER_RUN")
        say "   closed loop: $rps req/s, p50 ${p50} µs, p99 ${p99} µs, p99.9 ${p999} µs (non-2xx $non2xx, socket errors $sockerr)"
        if [ "$kind" = coremcp ]; then
            HALF[$w]=$(half_of_median "$rps" "${ROUND_RPS[@]}")
            if [ "${#ROUND_RPS[@]}" -gt 0 ]; then
                say "   fixed rate: half the median of $rps (this row) and ${ROUND_RPS[*]} (rounds) req/s: ${HALF[$w]}"
            else
                say "   fixed rate: half of this row's $rps req/s: ${HALF[$w]}"
            fi
        fi
        rate=${HALF[$w]:-0}
        # Its own half: its own latency at its own operating point.
        [ "$kind" = coremcp-nokeep ] && rate=$((rps / 2))
        if [ "$kind" = hello ] && [ -s "$WORK/beside-$w.txt" ]; then
            # Measured beside coremcp's row, run for run (BENCH_CEILING_BESIDE).
            read -r frps fp50 fp99 fp999 fbad fgen flag _ _ fbusy fp99s <"$WORK/beside-$w.txt"
            say "   fixed $rate req/s: measured beside coremcp's row (median of p99s $fp99s µs)"
        elif [ "$rate" -gt 0 ] && [ "$kind" != coremcp2 ]; then
            [ "$kind" = coremcp ] && [ "$CEILING_BESIDE" = 1 ] && start_beside
            read -r frps fp50 fp99 fp999 fbad fgen flag _ _ fbusy fp99s < <(fixed_rate_runs "$w" "$rate" "$SECONDS_PER_RUN" "$kind")
            say "   fixed $rate req/s (median of p99s $fp99s µs): achieved $frps, p50 ${fp50} µs, p99 ${fp99} µs, p99.9 ${fp999} µs (not 200: $fbad), server busy ${fbusy}%, generator busy ${fgen}%, generator lag p99 ${flag} µs"
            if [ -n "$BESIDE_PID" ]; then
                stop_beside
                mv "$WORK/beside.txt" "$WORK/beside-$w.txt"
            fi
        else
            frps=- fp50=- fp99=- fp999=- fbad=0 fgen=- flag=- fbusy=- fp99s=-
        fi
        own=""
        if [ "$kind" = hello ] && [ "$CEILING_OWN_HALF" = 1 ]; then
            # The p99 target's load, put on the ceiling: half of its own maximum
            # (its row and its rounds, as coremcp's rate is set). Whether a bare
            # server meets 1 ms there says what the target asks of this machine.
            mapfile -t own_rounds < <(round_rps "$w" 4)
            own=$(half_of_median "$rps" "${own_rounds[@]}")
            read -r orps op50 op99 op999 obad ogen olag _ _ obusy op99s < <(fixed_rate_runs "$w" "$own" "$SECONDS_PER_RUN" hello-own)
            say "   fixed $own req/s, half its own maximum (median of p99s $op99s µs): achieved $orps, p99 ${op99} µs, generator lag p99 ${olag} µs"
        fi
        failed=$(server_failures "$kind")
        [ "$failed" = 0 ] || say "   warning: $kind counted $failed failed calls or non-200 answers (/metrics)"
        non2xx=$((non2xx + failed))
        stop_server
        hwm=$SERVER_HWM
        # A build that started or ran during the row skews it: flag the row.
        busy && noisy=1
        [ "$noisy" = 1 ] && { QUIET="no: cargo/rustc ran during some rows (flagged)"; say "   warning: cargo/rustc ran during this row"; }
        result_row "$kind" "$w" "$rps" "$p50" "$p99" "$p999" "$non2xx" "$sockerr" \
            "$rate" "$frps" "$fp50" "$fp99" "$fp999" "$fbad" "$hwm" "$noisy" "$fbusy" "$fp99s" "$fgen" "$flag"
        if [ -n "$own" ]; then
            result_row hello-own "$w" "$rps" "$p50" "$p99" "$p999" "$non2xx" "$sockerr" \
                "$own" "$orps" "$op50" "$op99" "$op999" "$obad" "$hwm" "$noisy" "$obusy" "$op99s" "$ogen" "$olag"
        fi
    done
done

# ---------------------------------------------------------------- table
mkdir -p bench-results
python3 - "$RESULTS" "$PAIRS" "$PAIR_SECONDS" "$GEN_SPIN_US" "$SECONDS_PER_RUN" "$CONNS" "$SERVER_CPU" "$LOAD_CPU" "$SHARDS2_CPUS" "$QUIET" "$FIXED_GEN" "$FIXED_RUNS" "$BUILT" "$(git rev-parse --short HEAD 2>/dev/null || echo '?')" "$POLL_SPIN_US" "$WORK/probe-load.json" "$WORK/probe-server.json" "$CEILING_BESIDE" <<'PY' | tee bench-results/latest.md
import sys, subprocess, datetime, platform, json
path, pairs_path, pair_secs, spin_us, secs, conns, scpu, lcpu, cpus2, quiet, fixed_gen, fixed_runs, built, commit, poll_spin, probe_load, probe_server, beside = sys.argv[1:]
rows = [l.rstrip("\n").split("\t") for l in open(path) if l.strip()]
R = {}
for r in rows:
    R[(r[0], r[1])] = r
def f(x):
    try: return float(x)
    except: return None
def ms(us):
    v = f(us)
    return "–" if v is None else (f"{v/1000:.2f}" if v < 100000 else f"{v/1000:.0f}")
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
print(f"# coremcp load benchmark — {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC\n")
print(f"Machine: {nproc} vCPU, {cpu}, Linux {platform.release()}. Machine quiet: {quiet}.  ")
print(f"Commit {commit}; coremcp build: {built}; the peers: release.  ")
# On a KVM guest, how an idle vCPU waits decides how fast it wakes (README,
# tuning/BARE-METAL.md): report the cpuidle driver and its halt polling.
def sysfs(path):
    try: return open(path).read().strip()
    except OSError: return None
idle_driver = sysfs("/sys/devices/system/cpu/cpuidle/current_driver")
halt_poll = sysfs("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
if idle_driver:
    print(f"cpuidle driver: {idle_driver}"
          + (f", guest_halt_poll_ns {halt_poll}" if halt_poll is not None else "") + ".  ")
def probe(cpu_, p):
    d = json.load(open(p))
    return (f"CPU {cpu_} lost {d['lost_pct']:.2f} % of its time to stalls of 0.1 ms or more "
            f"({d['over_1ms']} over 1 ms, the longest {d['longest_ms']:.1f} ms)")
print(f"Machine probe ({json.load(open(probe_load))['probe_secs']:.0f} s, both CPUs spinning, as server and "
      f"generator are in the fixed-rate rows; `loadgen --probe-secs`): {probe(lcpu, probe_load)}; "
      f"{probe(scpu, probe_server)}.  ")
print(f"Loopback, {conns} connections, {secs} s per run after a 2 s warm-up; servers on CPU {scpu} "
      f"(two shards: CPUs {cpus2 or '–'}), load generator on CPU {lcpu}. "
      "Latencies in ms. Closed loop: wrk. Fixed rate: "
      + (f"benches/loadgen (open loop, latency from each request's due time; `--spin-us {spin_us}`)" if fixed_gen == "loadgen"
         else "oha `-q` with `--latency-correction`")
      + f" at half of coremcp's closed-loop maximum (the median of its row and its paired rounds), {fixed_runs} runs per row: the columns @rate are the run "
      "with the median p99; busy is the server's CPU use during it and gen the load generator's "
      "(100% = one CPU; a generator near 100% queues requests itself), and lag the p99 of how late "
      "the generator wrote each request after it was due: that much of p99 @rate is the generator's "
      "own queueing (or, in a stall, no free connection), not the server's. The ceiling's row in each "
      "workload is measured at that workload's rate: the p99 this machine and generator allow there"
      + ("; its fixed-rate runs alternate with coremcp's (1 shard), run for run, on the same minute "
         "(it waits idle beside coremcp on the next port, on the same CPU). " if beside == "1" else ". ")
      + ("The ceiling's row at half its own maximum (the median of its row and its paired rounds) puts on it "
         "the load the p99 target puts on coremcp: whether a bare server gets p99 under 1 ms there on this "
         "machine (its closed-loop columns repeat the ceiling's row). " if any(r[0] == "hello-own" for r in rows) else "")
      + "RSS: peak (VmHWM) of the server process. "
      f"poll_spin_us {poll_spin}: the same build with `--poll-spin-us {poll_spin}` (a shard looks for "
      "the next request that long before it waits; its busy share includes the looking). "
      "poll_wait_us 0: the same build with `--poll-wait-us 0` (a shard that finds no next request "
      "parks through io_uring at once instead of first waiting in `epoll_pwait2`). "
      f"×peer and ×ceiling: for coremcp (1 shard) the median ratio of the paired rounds below "
      f"({pair_secs} s runs back to back, marked paired); for the other rows, req/s over the median "
      "of the peer's or the ceiling's paired runs (or its row, where the workload had no pairs).\n")
# (workload) -> [(coremcp, ceiling, peer, bad, noisy)]; a server not measured is None.
pairs = {}
for l in open(pairs_path):
    if l.strip():
        w, i, c, h, pe, bad, noisy = l.rstrip("\n").split("\t")
        pairs.setdefault(w, []).append((f(c), f(h), f(pe), int(bad), noisy == "1"))
def median(xs):
    xs = sorted(xs)
    n = len(xs)
    return None if n == 0 else (xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2)
IN_PAIR = {"hello": 1, "rmcp": 2}
def paired_ratio(w, other):
    """Median over the rounds of coremcp / other, None without such rounds."""
    i = IN_PAIR[other]
    return median([p[0] / p[i] for p in pairs.get(w, []) if p[0] and p[i]])
# Per workload: coremcp's median ratio to each other server over the rounds.
BY_PAIRS = {w: {other: paired_ratio(w, other) for other in IN_PAIR}
            for w in dict.fromkeys([r[1] for r in rows] + list(pairs))}
def reference(w, other):
    """The peer's or the ceiling's req/s: the median of its paired runs, else its row."""
    got = median([p[IN_PAIR[other]] for p in pairs.get(w, []) if p[IN_PAIR[other]]])
    if got is None and (other, w) in R:
        got = f(R[(other, w)][2])
    return got
print("| workload | server | req/s | p50 | p99 | p99.9 | fixed rate | p50 @rate | p99 @rate | p99.9 @rate | busy @rate | gen @rate | lag @rate | peak RSS MiB | ×peer | ×ceiling |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
names = {"coremcp": "coremcp (1 shard)", "coremcp-release": "coremcp (1 shard, plain release build)", "coremcp-spin": f"coremcp (1 shard, poll_spin_us {poll_spin})", "coremcp-nowait": "coremcp (1 shard, poll_wait_us 0)", "coremcp-nokeep": "coremcp (1 shard, answer cache off)", "coremcp2": "coremcp (2 shards)", "rmcp": "rmcp 3.11 peer", "hello": "hello-world ceiling", "hello-own": "hello-world ceiling, at half its own maximum"}
for w in dict.fromkeys(r[1] for r in rows):
    by_pairs = BY_PAIRS[w]
    for k in ("coremcp", "coremcp-release", "coremcp-spin", "coremcp-nowait", "coremcp-nokeep", "rmcp", "coremcp2", "hello", "hello-own"):
        r = R.get((k, w))
        if not r: continue
        rps = f(r[2]); bad = int(r[6]) + int(r[7]) + int(r[13] if r[13] != "-" else 0)
        peer = reference(w, "rmcp")
        xp = f"{rps/peer:.1f}×" if k.startswith("coremcp") and peer else ""
        ceiling = reference(w, "hello")
        xc = f"{rps/ceiling:.0%}" if k.startswith("coremcp") and ceiling else ""
        if k == "coremcp" and by_pairs["rmcp"] is not None:
            xp = f"{by_pairs['rmcp']:.1f}× (paired)"
        if k == "coremcp" and by_pairs["hello"] is not None:
            xc = f"{by_pairs['hello']:.0%} (paired)"
        rate = r[8] if r[9] != "-" else "–"
        achieved = "" if r[9] == "-" or f(r[9]) >= 0.97 * f(r[8]) else f" (got {r[9]})"
        flag = (f" ⚠ {bad} bad" if bad else "") + (" ⚠ busy" if r[15] == "1" else "")
        # A run the server could not sustain stops early: its CPU share means nothing.
        busy = r[16] + "%" if r[16] != "-" and not achieved else "–"
        gen = r[18] + "%" if r[18] != "-" else "–"
        print(f"| {w} | {names[k]}{flag} | {rps:,.0f} | {ms(r[3])} | {ms(r[4])} | {ms(r[5])} | "
              f"{rate}{achieved} | {ms(r[10])} | {ms(r[11])} | {ms(r[12])} | {busy} | {gen} | {ms(r[19])} | {int(r[14])/1024:.1f} | {xp} | {xc} |")
print()
if pairs:
    # Name only the servers some round measured (BENCH_SERVERS may leave one out).
    against = [name for name, i in (("the ceiling", 1), ("the peer", 2))
               if any(p[i] for ps in pairs.values() for p in ps)]
    print("Paired rounds, closed loop, coremcp (1 shard) against " + " and ".join(against)
          + " (req/s, the ratios):")
    for w, ps in pairs.items():
        cells = []
        for c, h, pe, bad, noisy in ps:
            parts = [f"coremcp {c:,.0f}"]
            if h: parts.append(f"ceiling {h:,.0f} ({c / h:.0%})")
            if pe: parts.append(f"peer {pe:,.0f} ({c / pe:.1f}×)")
            cells.append(", ".join(parts) + (f" ⚠ {bad} bad" if bad else "") + (" ⚠ busy" if noisy else ""))
        by_pairs = BY_PAIRS[w]
        medians = []
        if by_pairs["hello"] is not None: medians.append(f"to the ceiling {by_pairs['hello']:.0%}")
        if by_pairs["rmcp"] is not None: medians.append(f"to the peer {by_pairs['rmcp']:.1f}×")
        print(f"- {w}: " + "; ".join(cells) + ". Median ratio " + ", ".join(medians) + ".")
    print()
print("p99 of every fixed-rate run, ms (in brackets, the generator's lag p99; how many "
      "requests fell due while every connection waited on the server; how long answers "
      "stopped in gaps of 1 ms or more with a request in flight, ms: a stall of the server, "
      "or of either vCPU, which the servers' rows can be compared by; and the host's steal "
      "time during the run on the server's / the generator's vCPU, ms, from /proc/stat "
      "in 10 ms ticks: how long the host kept each off its CPU while it had work; and the "
      "CPU time other threads took on either CPU, ms, with the one that took the most: "
      "kernel threads and other processes running where the server or the generator should; "
      "for coremcp (1 shard) and the ceiling (beside coremcp, and at half its own maximum), how many answers a second the server gave while "
      "it caught up after its silences, the median over the run (`scripts/catchup.py`): "
      "at a rate R, each millisecond of silence beyond the first leaves 1 / (1 - R / catch-up) "
      "milliseconds' worth of requests over 1 ms):")
for r in rows:
    if r[17] != "-":
        runs = [x.split("/") for x in r[17].split(",")]
        print(f"- {r[1]}, {names[r[0]]}: " + ", ".join(
            f"{ms(p)} ({ms(lag)}; {n}; silent {gap}; steal {ss} / {sl}; others {o}, {top} {top_ms}"
            + (f"; catch-up {float(cu) / 1000:.0f}k/s" if cu != "-" else "") + ")"
            for p, lag, n, gap, ss, sl, o, top, top_ms, cu in runs))
print()
print("Every answer was checked: status 2xx and no socket error (wrk, loadgen), a JSON-RPC result "
      "that is not a tool error (loadgen, every fixed-rate answer), and for coremcp no failed call "
      "or non-200 answer in its own counters (/metrics) over the row. A row marked ⚠ bad failed one "
      "of those checks, ⚠ busy saw a cargo/rustc process on the machine: do not trust either.")
PY
say "written to bench-results/latest.md"
