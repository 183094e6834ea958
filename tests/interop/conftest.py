"""Fixtures: a real coremcp server on a free loopback port, and a small fixture tree."""

import os
import pathlib
import re
import sqlite3
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def coremcp_bin() -> str:
    return os.environ.get("COREMCP_BIN", str(ROOT / "target" / "debug" / "coremcp"))


@pytest.fixture(scope="session")
def fixture_dir(tmp_path_factory) -> pathlib.Path:
    d = tmp_path_factory.mktemp("tree")
    (d / "src").mkdir()
    (d / "src" / "main.rs").write_text('fn main() {\n    println!("hello from coremcp");\n}\n')
    (d / "README.md").write_text("# fixture\nline two\n")
    db = sqlite3.connect(d / "shop.db")
    db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price REAL)")
    db.executemany("INSERT INTO items VALUES (?, ?, ?)", [(i, f"item-{i}", i * 1.5) for i in range(1, 101)])
    db.commit()
    db.close()
    return d


class Server:
    def __init__(self, args):
        self.proc = subprocess.Popen(
            [coremcp_bin(), "serve", "--listen", "127.0.0.1:0", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for line in self.proc.stderr:
            found = re.search(r'listening on (http://[^\s"]+)', line)
            if found:
                self.url = found.group(1)
                break
        else:
            raise RuntimeError(f"coremcp exited: {self.proc.wait()}")
        self.addr = self.url.split("//", 1)[1].split("/", 1)[0]

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="session")
def server(fixture_dir):
    s = Server(["--shards", "2", "--root", str(fixture_dir), "--db", str(fixture_dir / "shop.db")])
    yield s
    s.stop()
