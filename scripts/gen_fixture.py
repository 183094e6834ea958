#!/usr/bin/env python3
"""Deterministic fixture for scripts/bench.sh and the criterion benches.

    scripts/gen_fixture.py DIR

Creates (same bytes on every run, seeded PRNG, fixed mtimes):
  DIR/src/          2,000 source-like files (1-3 KiB) in 50 directories; 1 in 100
                    contains the word `needle_marker` once (so a search finds 20)
  DIR/small.txt     a 2 KiB text file (the read_file workload)
  DIR/big/          two 1 MiB text files (outside src/, so searches of src/ skip them)
  DIR/bench.db      SQLite: items(id INTEGER PRIMARY KEY, sku TEXT, name TEXT,
                    price REAL, qty INTEGER), 100,000 rows, index on sku
  DIR/.stamp        written last; its presence means the fixture is complete

mtimes are set to 2020-01-01 so file contents are cacheable at once; ctimes are
"now", so callers should wait > 2 s (coremcp's racy window) before measuring.
"""
import os
import random
import sqlite3
import sys

FILES = 2000
DIRS = 50
ROWS = 100_000
OLD = 1577836800  # 2020-01-01T00:00:00Z

WORDS = (
    "let mut fn impl struct enum match return self async await pub use mod where "
    "trait type const static loop while for in if else break continue ref move "
    "buffer request response shard cache index query table column value error "
    "result option vector string parse write read file path tree walk search"
).split()


def code_line(rng):
    n = rng.randint(3, 10)
    indent = "    " * rng.randint(0, 3)
    return indent + " ".join(rng.choice(WORDS) for _ in range(n)) + ";\n"


def text_file(rng, size, marker=False):
    out, total = [], 0
    while total < size:
        line = code_line(rng)
        out.append(line)
        total += len(line)
    if marker:
        out.insert(rng.randrange(len(out)), "    // needle_marker: the line search_code finds\n")
    return "".join(out)


def main():
    root = sys.argv[1]
    rng = random.Random(20261123)
    os.makedirs(root, exist_ok=True)
    stamp = os.path.join(root, ".stamp")
    if os.path.exists(stamp):
        os.remove(stamp)
    for i in range(FILES):
        d = os.path.join(root, "src", f"mod{i % DIRS:02d}")
        os.makedirs(d, exist_ok=True)
        p = os.path.join(d, f"file{i:04d}.rs")
        with open(p, "w") as f:
            f.write(text_file(rng, rng.randint(1024, 3072), marker=(i % 100 == 7)))
        os.utime(p, (OLD, OLD))
    with open(os.path.join(root, "small.txt"), "w") as f:
        f.write(text_file(rng, 2048))
    os.utime(os.path.join(root, "small.txt"), (OLD, OLD))
    os.makedirs(os.path.join(root, "big"), exist_ok=True)
    for n in (1, 2):
        p = os.path.join(root, "big", f"big{n}.txt")
        with open(p, "w") as f:
            f.write(text_file(rng, 1024 * 1024)[: 1024 * 1024])
        os.utime(p, (OLD, OLD))
    db = os.path.join(root, "bench.db")
    for suffix in ("", "-wal", "-shm", "-journal"):
        if os.path.exists(db + suffix):
            os.remove(db + suffix)
    c = sqlite3.connect(db)
    c.execute(
        "CREATE TABLE items(id INTEGER PRIMARY KEY, sku TEXT NOT NULL, name TEXT NOT NULL, price REAL, qty INTEGER)"
    )
    c.executemany(
        "INSERT INTO items VALUES (?, ?, ?, ?, ?)",
        (
            (
                i,
                f"SKU-{(i * 7919) % 1_000_003:07d}",
                " ".join(rng.choice(WORDS) for _ in range(3)),
                round(rng.uniform(1, 1000), 2),
                rng.randint(0, 500),
            )
            for i in range(1, ROWS + 1)
        ),
    )
    c.execute("CREATE INDEX items_sku ON items(sku)")
    c.commit()
    c.execute("VACUUM")
    c.close()
    os.utime(db, (OLD, OLD))
    # Directories last: writing files inside them moved their mtimes.
    for dirpath, _, _ in os.walk(root):
        os.utime(dirpath, (OLD, OLD))
    with open(stamp, "w") as f:
        f.write("complete\n")


if __name__ == "__main__":
    main()
