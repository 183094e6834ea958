"""scripts/lib/others.py against threads whose CPU time is known.

Two child processes each spin until their own CPU clock has run SPIN_SECONDS;
one is named as the server, to be left out. The other's time must be counted,
under its name, and the server's must not. The snapshot is cut down to the two
of them, so that other work on the machine (a build) cannot change the answer.
"""

import pathlib
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "lib" / "others.py"
SPIN_SECONDS = 0.3

# Waits for a line on stdin, then spins for SPIN_SECONDS of its own CPU time
# and says so; then waits to be told to exit, so that it is still there when
# the difference is taken.
SPINNER = f"""
import sys, time
sys.stdin.readline()
start = time.process_time()
while time.process_time() - start < {SPIN_SECONDS}:
    pass
print("done", flush=True)
sys.stdin.readline()
"""


def spinner(name):
    # exec -a names the process; comm is what others.py reports.
    return subprocess.Popen(
        ["bash", "-c", f'exec -a {name} "{sys.executable}" -c "$0"', SPINNER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def run(*args):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], check=True, capture_output=True, text=True
    ).stdout


def test_counts_other_threads_and_leaves_the_server_out(tmp_path):
    other, server = spinner("other"), spinner("server")
    try:
        snap = tmp_path / "threads.tsv"
        # Both exist before the snapshot: threads born after it are not counted.
        run("snap", str(snap))
        for p in (other, server):
            p.stdin.write("go\n")
            p.stdin.flush()
        for p in (other, server):
            assert p.stdout.readline().strip() == "done"
        # Only threads in the snapshot are counted: keep the two spinners' alone,
        # so that whatever else runs on the machine meanwhile stays out.
        ours = {str(other.pid), str(server.pid)}
        lines = [l for l in snap.read_text().splitlines() if l.split("\t")[1] in ours]
        assert len(lines) == 2
        snap.write_text("\n".join(lines) + "\n")

        total_ms, top, top_ms = run("diff", str(snap), str(server.pid)).split()
        with open(f"/proc/{other.pid}/comm") as f:
            other_comm = f.read().strip()
        assert top == other_comm
        assert int(top_ms) >= SPIN_SECONDS * 1000 * 0.95
        # The server spun as long: were it counted, the total would be twice as much.
        assert int(total_ms) < 2 * SPIN_SECONDS * 1000 * 0.95
        # Without leaving it out, both are counted.
        total_all, _, _ = run("diff", str(snap)).split()
        assert int(total_all) >= 2 * SPIN_SECONDS * 1000 * 0.95
    finally:
        for p in (other, server):
            p.kill()
            p.wait()
