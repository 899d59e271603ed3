"""titans.io: atomic writes leave either the old or the complete new file (never a temp file),
JSON round trips, and the cache directory follows $TITANS_CACHE."""

import json
import os
import subprocess
import sys

import pytest

import titans.io
from titans.io import (
    atomic_save_json,
    atomic_write,
    cache_dir,
    remove_stale_temporaries,
    safe_filename,
)


def test_atomic_write_replaces_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "file.bin"  # the parent is created
    with atomic_write(path) as f:
        f.write(b"first")
    with atomic_write(path) as f:
        f.write(b"second")
        assert path.read_bytes() == b"first"  # the old file stays until the write completes
    assert path.read_bytes() == b"second"
    assert os.listdir(path.parent) == ["file.bin"]


def test_atomic_write_error_keeps_old_file_and_removes_temp(tmp_path):
    path = tmp_path / "file.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_write(path, "w") as f:
        f.write("partial")
        raise RuntimeError("boom")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["file.txt"]


def test_atomic_write_new_file_error_creates_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt), atomic_write(tmp_path / "x.bin") as f:
        f.write(b"partial")
        raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_atomic_write_permissions_match_open(tmp_path):
    with open(tmp_path / "plain", "wb"):
        pass
    with atomic_write(tmp_path / "atomic") as f:
        f.write(b"x")
    assert (tmp_path / "atomic").stat().st_mode == (tmp_path / "plain").stat().st_mode


def test_atomic_write_text_mode_is_utf8(tmp_path):
    with atomic_write(tmp_path / "t.txt", "w") as f:
        f.write("Grüße 🐋")
    assert (tmp_path / "t.txt").read_bytes() == "Grüße 🐋".encode()


@pytest.mark.parametrize("mode", ["a", "r", "rb", "ab", "w+"])
def test_atomic_write_rejects_other_modes(tmp_path, mode):
    with pytest.raises(ValueError, match="mode"), atomic_write(tmp_path / "x", mode):
        pass
    assert os.listdir(tmp_path) == []


def test_atomic_save_json_round_trip(tmp_path):
    obj = {"a": [1, 2.5, None], "b": {"c": "日本"}, "d": True}
    atomic_save_json(obj, tmp_path / "x.json")
    assert json.loads((tmp_path / "x.json").read_text(encoding="utf-8")) == obj


def test_atomic_save_json_unserializable_keeps_old_file(tmp_path):
    path = tmp_path / "x.json"
    atomic_save_json({"ok": 1}, path)
    with pytest.raises(TypeError):
        atomic_save_json({"bad": object()}, path)
    assert json.loads(path.read_text()) == {"ok": 1}
    assert os.listdir(tmp_path) == ["x.json"]


def test_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TITANS_CACHE", str(tmp_path / "my cache"))
    assert cache_dir() == tmp_path / "my cache"
    assert cache_dir().is_dir()


def test_cache_dir_default_under_home(tmp_path, monkeypatch):
    monkeypatch.delenv("TITANS_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "titans"
    assert cache_dir().is_dir()


def test_safe_filename():
    assert safe_filename("bpe8192") == "bpe8192"
    assert safe_filename("my corpus/v1:x") == "my_corpus_v1_x"
    assert safe_filename("a-b_c.d") == "a-b_c.d"


def test_temporaries_of_dead_writers_on_this_host_are_removed_and_no_others(tmp_path):
    """A writer killed mid-write leaves ``.<name>.<host>.<pid>.<hex>.tmp``; the next write of
    that file removes it. A live process's temporary, or another host's (a shared file system),
    may still be written to, so it stays."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)  # the process has exited
    host = titans.io._HOST
    path = tmp_path / "tokens.bin"
    orphan = tmp_path / f".tokens.bin.{host}.{dead_pid}.ab12.tmp"
    kept = [tmp_path / f".tokens.bin.{host}.{os.getpid()}.cd34.tmp",
            tmp_path / f".tokens.bin.other-host.{dead_pid}.ef56.tmp",
            tmp_path / f".other.bin.{host}.{dead_pid}.ab12.tmp"]
    for p in (orphan, *kept):
        p.write_bytes(b"partial")
    assert remove_stale_temporaries(path) == [orphan]
    with atomic_write(path) as f:
        f.write(b"done")
    assert sorted(tmp_path.iterdir()) == sorted([path, *kept])
