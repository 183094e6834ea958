#!/usr/bin/env python3
"""CPU time that other threads took during a fixed-rate run (scripts/bench.sh).

    others.py snap FILE            record every thread's run time now
    others.py diff FILE PID...     print "MS TOP TOP_MS": how long, in ms, the
                                   threads in FILE ran since, leaving out those of
                                   the processes PID... (the server), and the one
                                   that ran longest, by name

Why: a fixed-rate run's silences are stalls of the server's or the generator's
CPU, and on a VM much of that is other threads (kdamond, kworkers, an agent)
running where the server or the generator should. /proc/stat has only 10 ms
ticks and this kernel has no /proc/schedstat; each thread's
/proc/PID/task/TID/schedstat has its run time in ns. Both CPUs count: the server
and the generator are pinned one to each, and either one stalling is a silence.
Threads that begin after the snapshot (the generator, the server's own, anything
short-lived) are not counted.
"""
import os
import sys


def threads():
    """(tid, pid, comm, run_ns) of every thread that can be read now."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            base = f"/proc/{pid}/task/{tid}"
            try:
                with open(f"{base}/schedstat") as f:
                    run_ns = int(f.read().split()[0])
                with open(f"{base}/comm") as f:
                    comm = f.read().strip()
            except (OSError, ValueError, IndexError):
                continue  # it exited while we looked
            yield tid, pid, comm, run_ns


def main():
    mode, path, *pids = sys.argv[1:]
    if mode == "snap":
        with open(path, "w") as f:
            for tid, pid, comm, run_ns in threads():
                f.write(f"{tid}\t{pid}\t{run_ns}\n")
        return
    assert mode == "diff", mode
    before = {}
    with open(path) as f:
        for line in f:
            tid, pid, run_ns = line.rstrip("\n").split("\t")
            before[tid] = (pid, int(run_ns))
    leave_out = set(pids)
    total = 0
    by_name = {}
    for tid, pid, comm, run_ns in threads():
        if pid in leave_out or tid not in before or before[tid][0] != pid:
            continue
        ran = run_ns - before[tid][1]
        if ran <= 0:
            continue
        total += ran
        # kworker/1:2 and kworker/1:0 are one kind of work: name them as one.
        name = comm.split("/")[0] if comm.startswith("kworker") else comm
        by_name[name] = by_name.get(name, 0) + ran
    top, top_ns = max(by_name.items(), key=lambda kv: kv[1], default=("-", 0))
    print(f"{total / 1e6:.0f} {top.replace(' ', '_')} {top_ns / 1e6:.0f}")


if __name__ == "__main__":
    main()
