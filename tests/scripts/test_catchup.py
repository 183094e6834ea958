"""scripts/catchup.py against a dump whose answers are known by construction.

Requests fall due every 20 µs (50k req/s) and are written when due. The server
answers each 30 µs after it is due; the request due at 50 ms is not answered
until 55 ms, and from then on the backlog is answered one every 10 µs (100k
req/s) until the answers have caught up, after which it goes on as before. So:
one silence, from the last answer before (49,980 + 30 µs) to the first after
(55,000 µs), 4,990 µs; the k-th answer of the catch-up 5,000 - 10k µs late, so
401 of them 1 ms late or more, in one catch-up at 100k req/s, which the model
R (G - 1 ms) / (1 - R / C) puts at about 400.
"""

import importlib.util
import pathlib

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "catchup.py"
spec = importlib.util.spec_from_file_location("catchup", SCRIPT)
catchup = importlib.util.module_from_spec(spec)
spec.loader.exec_module(catchup)

DUE_EVERY_US = 20
STALL_AT_US = 50_000
STALL_US = 5_000
CATCH_UP_EVERY_US = 10


def constructed_dump(path):
    rows = []
    due = 0
    # Steady: each answered 30 µs after it fell due.
    while due < STALL_AT_US:
        rows.append((due + 30, 30, 0))
        due += DUE_EVERY_US
    # The backlog, served from the end of the stall one every 10 µs, until the
    # answers catch up with the requests still falling due.
    answered = STALL_AT_US + STALL_US
    while answered - due > 30:
        rows.append((answered, answered - due, 0))
        due += DUE_EVERY_US
        answered += CATCH_UP_EVERY_US
    # Steady again.
    for _ in range(2500):
        rows.append((due + 30, 30, 0))
        due += DUE_EVERY_US
    path.write_text("# t0_monotonic_ns 0\n" + "".join(f"{a} {l} {s}\n" for a, l, s in rows))


def test_silences_and_catch_up_of_a_known_run(tmp_path):
    dump = tmp_path / "dump.txt"
    constructed_dump(dump)
    d = catchup.analyse(catchup.read_dump(dump))

    last_before = STALL_AT_US - DUE_EVERY_US + 30
    silence = STALL_AT_US + STALL_US - last_before
    assert d["silences"] == 1
    assert d["silence_us"] == silence == 4_990
    assert d["beyond_us"] == silence - catchup.OVER_US
    assert d["over"] == 401
    assert len(d["catch_up_rates"]) == 1
    assert abs(d["catch_up_rates"][0] - 100_000) < 500
    assert abs(d["predicted"] - 400) < 25


def test_a_run_without_stalls_has_no_silence_and_no_catch_up(tmp_path):
    dump = tmp_path / "dump.txt"
    dump.write_text("# t0_monotonic_ns 0\n" + "".join(f"{t * 20 + 30} 30 0\n" for t in range(5000)))
    d = catchup.analyse(catchup.read_dump(dump))

    assert (d["silences"], d["over"], d["catch_up_rates"], d["predicted"]) == (0, 0, [], None)


def test_the_brief_line_is_the_median_catch_up_the_late_answers_and_the_model(tmp_path):
    dump = tmp_path / "dump.txt"
    constructed_dump(dump)
    catch_up, over, predicted = catchup.brief(catchup.analyse(catchup.read_dump(dump))).split()

    assert abs(int(catch_up) - 100_000) < 500
    assert int(over) == 401
    assert abs(int(predicted) - 400) < 25

    quiet = tmp_path / "quiet.txt"
    quiet.write_text("# t0_monotonic_ns 0\n" + "".join(f"{t * 20 + 30} 30 0\n" for t in range(5000)))
    assert catchup.brief(catchup.analyse(catchup.read_dump(quiet))) == "- 0 -"
