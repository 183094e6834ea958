# The load-test workloads, shared by scripts/bench.sh (which measures them) and
# scripts/pgo.sh (which trains the profile-guided build on them), so that the
# build is trained on exactly what is measured. Sourced, not run.
#
# Each workload is one stateless (2026-07-28) request: a JSON body and its
# headers. ensure_fixture builds the deterministic tree and database they read.

BENCH_META='"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{},"io.modelcontextprotocol/clientInfo":{"name":"bench","version":"1.0"}}'
# A SKU that exists in the fixture's database (scripts/gen_fixture.py numbers them).
BENCH_SKU=$(printf 'SKU-%07d' $(((4242 * 7919) % 1000003)))

body_of() { # workload
    case $1 in
    read_file) echo '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_file","arguments":{"path":"small.txt"},'"$BENCH_META"'}}' ;;
    query_db) echo '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"query_db","arguments":{"sql":"SELECT id, sku, name, price, qty FROM items WHERE sku = ?1","params":["'"$BENCH_SKU"'"]},'"$BENCH_META"'}}' ;;
    search_code) echo '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search_code","arguments":{"query":"needle_marker","path":"src"},'"$BENCH_META"'}}' ;;
    tools_list) echo '{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{'"$BENCH_META"'}}' ;;
    *) echo "unknown workload: $1" >&2; return 1 ;;
    esac
}

# Header lines, one per line, as "Name: value".
headers_of() { # workload
    echo "Content-Type: application/json"
    echo "Accept: application/json, text/event-stream"
    echo "MCP-Protocol-Version: 2026-07-28"
    case $1 in
    tools_list) echo "Mcp-Method: tools/list" ;;
    *) echo "Mcp-Method: tools/call"; echo "Mcp-Name: $1" ;;
    esac
}

# A wrk script for the workload; its done() prints one "WRK key=value …" line.
write_lua() { # workload file
    {
        echo 'wrk.method = "POST"'
        echo "wrk.body = [==[$(body_of "$1")]==]"
        headers_of "$1" | while IFS= read -r h; do
            printf 'wrk.headers["%s"] = "%s"\n' "${h%%: *}" "${h#*: }"
        done
        cat <<'LUA'
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRK requests=%d duration_us=%d non2xx=%d sockerr=%d p50=%d p99=%d p999=%d\n",
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
LUA
    } >"$2"
}

ensure_fixture() { # dir
    if [ ! -f "$1/.stamp" ]; then
        echo "generating the fixture in $1…" >&2
        python3 scripts/gen_fixture.py "$1"
        # ctimes are "now": wait out the caches' 2 s racily-clean window.
        sleep 3
    fi
}
