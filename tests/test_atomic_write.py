"""zoo._io.atomic_write: the target holds the old or the new content, whatever happens to the writer; no temporary
file is left behind after a success or an error."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from zoo._io import atomic_write


def _names(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.parametrize(
    "content,expected",
    [
        (b"\x00bytes\xff", b"\x00bytes\xff"),
        ("text \u00e9\n", "text \u00e9\n".encode()),
        (lambda f: f.write(b"fn"), b"fn"),
    ],
    ids=["bytes", "str", "callable"],
)
def test_writes_the_content_and_leaves_no_temporary_file(tmp_path, content, expected):
    target = tmp_path / "a" / "b" / "file.bin"  # missing parents are created
    assert atomic_write(target, content) == target
    assert target.read_bytes() == expected
    assert _names(target.parent) == ["file.bin"]
    atomic_write(str(target), b"new")  # replaces an existing file; a str path works
    assert target.read_bytes() == b"new" and _names(target.parent) == ["file.bin"]


def test_permissions_are_those_of_a_plain_open(tmp_path):
    atomic_write(tmp_path / "atomic", b"x")
    (tmp_path / "plain").write_bytes(b"x")
    assert (tmp_path / "atomic").stat().st_mode == (tmp_path / "plain").stat().st_mode


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()], ids=["OSError", "KeyboardInterrupt"])
def test_a_failing_writer_keeps_the_old_content_and_removes_its_temporary_file(tmp_path, error):
    target = tmp_path / "metrics.json"
    atomic_write(target, "old")

    def half_then_fail(f):
        f.write(b"half of the new con")
        f.flush()
        raise error

    with pytest.raises(type(error)):
        atomic_write(target, half_then_fail)
    assert target.read_text() == "old" and _names(tmp_path) == ["metrics.json"]
    with pytest.raises(type(error)):
        atomic_write(tmp_path / "new.json", half_then_fail)  # no previous file: none appears
    assert _names(tmp_path) == ["metrics.json"]


def test_a_failing_rename_removes_the_temporary_file(tmp_path):
    (tmp_path / "target").mkdir()  # os.replace cannot put a file over a directory
    with pytest.raises(OSError):
        atomic_write(tmp_path / "target", b"data")
    assert _names(tmp_path) == ["target"] and not any((tmp_path / "target").iterdir())


def test_a_writer_killed_midway_leaves_the_old_content(tmp_path):
    """SIGKILL in the middle of the write: no cleanup can run, the target is still intact (a stray temporary file
    beside it is all that remains)."""
    target = tmp_path / "cache.pt"
    atomic_write(target, b"old content")
    code = f"""
import os, signal
from zoo._io import atomic_write
def dying(f):
    f.write(b"new cont")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
atomic_write({str(target)!r}, dying)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert target.read_bytes() == b"old content"
    assert [n for n in _names(tmp_path) if not n.startswith(".cache.pt.tmp-")] == ["cache.pt"]


def test_the_one_atomic_writer():
    """checkpoints, exports, metrics, reports and the ListOps cache all write through zoo._io.atomic_write: no other
    module of the zoo renames files into place."""
    root = os.path.join(os.path.dirname(__file__), os.pardir, "zoo")
    offenders = []
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if name.endswith(".py") and os.path.relpath(path, root) != "_io.py":
                with open(path, encoding="utf-8") as f:
                    if "os.replace(" in f.read():
                        offenders.append(os.path.relpath(path, root))
    assert not offenders, offenders
