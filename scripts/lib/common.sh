# Helpers shared by scripts/bench.sh and scripts/pgo.sh. The sourcing script
# sets SCRIPT (its name, for messages) before it calls `die`, and PORT before
# it calls `port_taken` without a port.

say() { printf '%s\n' "$*" >&2; }
die() { say "$SCRIPT: $*"; exit 1; }

# Whether something listens on 127.0.0.1:PORT (default $PORT). With
# SO_REUSEPORT a stale server there would share the port and split the traffic.
port_taken() { [ -n "$(ss -Hltn "sport = :${1:-$PORT}")" ]; }
