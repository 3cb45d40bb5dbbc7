"""Files written completely or not at all: the temp file sits beside the target and never
outlives the write."""

import os
from pathlib import Path

import pytest

from softprompt.fileio import TEMP_NAME, atomic_write, publish_temp, write_temp


def test_write_temp_lands_beside_the_target(tmp_path):
    target = tmp_path / "sub" / "file.bin"
    tmp = write_temp(target, b"data")
    assert tmp.parent == target.parent and tmp.read_bytes() == b"data"
    assert tmp.name.startswith(".file.bin.") and tmp.name.endswith(".tmp")
    assert not target.exists()


def test_atomic_write_replaces_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "file.bin"
    atomic_write(target, b"old")
    atomic_write(str(target), b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_a_failed_rename_removes_the_temp_file(tmp_path):
    target = tmp_path / "folder"
    (target / "inside").mkdir(parents=True)  # a non-empty folder cannot be replaced by a file
    with pytest.raises(OSError):
        atomic_write(target, b"data")
    assert [p.name for p in tmp_path.iterdir()] == ["folder"]


def test_temp_names_match_the_pattern_cleaners_look_for(tmp_path):
    tmp = write_temp(tmp_path / "manifest.json", b"{}")
    assert TEMP_NAME.fullmatch(tmp.name)
    for other in (".manifest.json.lock", "manifest.json", ".x.tmp", ".x.12.zz.tmp"):
        assert not TEMP_NAME.fullmatch(other)


def test_a_temp_file_removed_before_the_rename_is_written_again(tmp_path, monkeypatch):
    """A cleaner may remove a temp file between its write and the rename; the writer writes it
    again (and gives up, with the error, when that keeps happening)."""
    removed = []

    def cleaner_strikes(src, dst, times):
        if len(removed) < times:
            Path(src).unlink()
            removed.append(src)
        os.replace(src, dst)

    target = tmp_path / "file.bin"
    publish_temp(target, b"data", lambda s, d: cleaner_strikes(s, d, 2))
    assert target.read_bytes() == b"data" and len(removed) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]
    removed.clear()
    with pytest.raises(FileNotFoundError):
        publish_temp(tmp_path / "other.bin", b"data", lambda s, d: cleaner_strikes(s, d, 99))
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


def test_a_cleaner_removes_only_abandoned_temp_files(tmp_path):
    """A temp file whose writer lives is locked and kept; once the writer is gone (its lock with
    it, as when it is killed) the cleaner removes it."""
    from softprompt.fileio import _write_locked_temp, remove_abandoned_temp

    held = _write_locked_temp(tmp_path / "file.bin", b"data")
    assert remove_abandoned_temp(held.path) is False and held.path.exists()
    os.close(held.fd)  # the writer dies
    assert remove_abandoned_temp(held.path) is True and not held.path.exists()
    assert remove_abandoned_temp(held.path) is False  # already gone
