#!/usr/bin/env python3
"""Where a fixed-rate run's tail came from: silences, and the catch-up after each.

Reads the file `loadgen --dump FILE` writes (one line per measured answer:
`answered_us latency_us send_lag_us`, after a `# t0_monotonic_ns N` line) and
prints:

- the answers over 1 ms, the share of them that a p99 under 1 ms allows (1 %);
- the silences: gaps of 1 ms or more between answers while a request was in
  flight (as loadgen's `silence_ms` counts them), in all and beyond each one's
  first millisecond, which is the part that puts answers over 1 ms;
- the catch-ups: each run of answers over 1 ms (answers less than 2 ms apart)
  whose worst is 2 ms or more and that lasts 1 ms or more, and how many answers
  per second the server gave during it;
- what a silence G then a catch-up at C, with requests due at R, should cost:
  R * (G - 1 ms) / (1 - R / C) answers over 1 ms each, summed, against what was
  measured. Where the measured count is well above it, the server caught up
  more slowly than its median, or the backlog came from something other than
  silences.

docs/performance.md, item 46, is where this was first used, and says what the
numbers meant there.

With --brief, one line per dump for scripts/bench.sh: "CATCH_UP OVER PREDICTED",
the median catch-up in answers per second, the answers over 1 ms, and what the
model above puts them at ("-" where there was no catch-up to time).

Usage: python3 scripts/catchup.py [--brief] DUMP [DUMP...]
"""

import bisect
import statistics
import sys

# The p99 target's bound, and the shortest gap counted as a silence (loadgen's
# SILENCE_MIN).
OVER_US = 1000
# Answers over OVER_US closer than this belong to one catch-up.
MERGE_US = 2000
# A catch-up counted for its rate: its worst latency and its length at least these.
CATCHUP_WORST_US = 2000
CATCHUP_MIN_SPAN_US = 1000


def read_dump(path):
    rows = []
    with open(path) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            answered, latency, lag = (int(x) for x in line.split())
            rows.append((answered, latency, lag))
    rows.sort()
    return rows


def analyse(rows):
    """The numbers this script prints, from a dump's rows (sorted by answer time)."""
    span_s = (rows[-1][0] - rows[0][0]) / 1e6
    rate = len(rows) / span_s if span_s > 0 else float("nan")
    over = [r for r in rows if r[1] >= OVER_US]

    # Silences: from the later of the previous answer and this request's write.
    gaps = []
    for (prev, _, _), (answered, latency, lag) in zip(rows, rows[1:]):
        written = answered - latency + lag
        gap = answered - max(prev, written)
        if gap >= OVER_US:
            gaps.append(gap)

    # Catch-ups: runs of answers over OVER_US, timed by every answer in them.
    runs = []
    for answered, latency, _ in over:
        if runs and answered - runs[-1][1] < MERGE_US:
            runs[-1][1] = answered
            runs[-1][2] = max(runs[-1][2], latency)
        else:
            runs.append([answered, answered, latency])
    times = [r[0] for r in rows]
    rates = []
    for start, end, worst in runs:
        if worst < CATCHUP_WORST_US or end - start < CATCHUP_MIN_SPAN_US:
            continue
        n = bisect.bisect_right(times, end) - bisect.bisect_left(times, start)
        rates.append(n / ((end - start) / 1e6))
    rates.sort()

    result = {
        "answers": len(rows),
        "span_s": span_s,
        "rate": rate,
        "over": len(over),
        "silences": len(gaps),
        "silence_us": sum(gaps),
        "beyond_us": sum(g - OVER_US for g in gaps),
        "catch_up_rates": rates,
        "predicted": None,
    }
    catch_up = statistics.median(rates) if rates else None
    if catch_up is not None and catch_up > rate:
        result["predicted"] = rate * (result["beyond_us"] / 1e6) / (1 - rate / catch_up)
    return result


def report(path, d):
    print(f"{path}: {d['answers']:,} answers over {d['span_s']:.1f} s ({d['rate']:,.0f} req/s)")
    print(f"  over 1 ms: {d['over']:,} ({100 * d['over'] / d['answers']:.2f} %; "
          "p99 under 1 ms allows 1 %)")
    print(f"  silences of 1 ms or more: {d['silences']}, {d['silence_us'] / 1e3:.1f} ms in all, "
          f"{d['beyond_us'] / 1e3:.1f} ms beyond each one's first millisecond")
    rates = d["catch_up_rates"]
    if not rates:
        print("  catch-ups: none long enough to time")
        return
    print(f"  catch-ups: {len(rates)}, answers per second while catching up: median "
          f"{statistics.median(rates):,.0f}, slowest {rates[0]:,.0f}, fastest {rates[-1]:,.0f}")
    if d["predicted"] is not None:
        print(f"  silences then catch-ups at the median rate would put {d['predicted']:,.0f} "
              f"answers over 1 ms; measured {d['over']:,}")


def brief(d):
    """The --brief line: "CATCH_UP OVER PREDICTED"."""
    rates = d["catch_up_rates"]
    catch_up = f"{statistics.median(rates):.0f}" if rates else "-"
    predicted = "-" if d["predicted"] is None else f"{d['predicted']:.0f}"
    return f"{catch_up} {d['over']} {predicted}"


def main():
    args = sys.argv[1:]
    short = bool(args) and args[0] == "--brief"
    if short:
        args = args[1:]
    if not args:
        sys.exit(__doc__.strip().splitlines()[-1])
    for path in args:
        rows = read_dump(path)
        if len(rows) < 2:
            print("- 0 -" if short else f"{path}: fewer than two answers, nothing to say")
            continue
        if short:
            print(brief(analyse(rows)))
        else:
            report(path, analyse(rows))


if __name__ == "__main__":
    main()
