"""The local-directory backend's own behaviour, beyond the Store contract in test_stores.py."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from softprompt.registry import (
    ConflictError,
    IntegrityError,
    NotFoundError,
    RegistryAccessError,
    RegistryError,
)
from softprompt.registry.local import LocalStore


def test_the_root_must_be_a_directory(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RegistryAccessError, match="exists and is not a directory"):
        LocalStore(tmp_path / "file")
    assert LocalStore(tmp_path / "new").uri == str(tmp_path / "new")  # created on first write


@pytest.mark.parametrize("key", ["", "a//b", "../x", "a/./b", "a/.hidden"])
def test_keys_cannot_leave_the_root_or_name_hidden_files(tmp_path, key):
    with pytest.raises(ValueError, match="bad storage key"):
        LocalStore(tmp_path).read(key)


def test_listing_hides_temp_files_and_folders_holding_only_them(tmp_path):
    store = LocalStore(tmp_path)
    store.write("prompts/toy/1/manifest.json", b"{}")
    # What a publisher killed between its temp file and the link leaves behind.
    (tmp_path / "prompts" / "toy" / "2").mkdir()
    (tmp_path / "prompts" / "toy" / "2" / ".manifest.json.1.0.tmp").write_bytes(b"{")
    (tmp_path / "prompts" / "toy" / ".stray").write_bytes(b"")
    assert store.children("prompts/toy") == ["1"]
    assert store.children("prompts/toy/1/manifest.json") == []  # a file has no children
    assert store.children("nothing") == []


def test_conditional_writes_leave_no_temp_files(tmp_path):
    store = LocalStore(tmp_path)
    etag = store.create("a/b.json", b"one")
    with pytest.raises(ConflictError, match="a/b.json already exists"):
        store.create("a/b.json", b"two")
    with pytest.raises(ConflictError, match="a/missing.json does not exist"):
        store.replace("a/missing.json", b"x", etag)
    with pytest.raises(ConflictError, match="a/b.json changed concurrently"):
        store.replace("a/b.json", b"x", "stale")
    store.replace("a/b.json", b"three", etag)
    # No temp file remains, only hidden lock files beside the replaced keys.
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == [".b.json.lock", ".missing.json.lock", "b.json"]
    assert store.children("a") == ["b.json"]
    with pytest.raises(NotFoundError, match="a/nothing.json not found"):
        store.read("a/nothing.json")


def test_a_broken_layout_is_an_error_naming_the_key(tmp_path):
    """A folder where a file belongs, or a file where a folder belongs, is an IntegrityError
    naming the key, never a bare IsADirectoryError / NotADirectoryError / FileExistsError."""
    store = LocalStore(tmp_path)
    (tmp_path / "prompts" / "toy" / "1" / "manifest.json").mkdir(parents=True)
    (tmp_path / "blobs" / "sha256" / "ab" / "x").mkdir(parents=True)
    (tmp_path / "prompts" / "flat").write_bytes(b"a file where a task folder belongs")
    layout = "a folder where a file belongs, or a file where a folder belongs"
    key = "prompts/toy/1/manifest.json"
    with pytest.raises(IntegrityError, match=f"cannot read {key}: .*{layout}"):
        store.read("prompts/toy/1/manifest.json")
    with pytest.raises(IntegrityError, match="cannot write blobs/sha256/ab: "):
        store.write("blobs/sha256/ab", b"blob")
    with pytest.raises(IntegrityError, match="cannot create prompts/flat/1/manifest.json: "):
        store.create("prompts/flat/1/manifest.json", b"{}")
    with pytest.raises(IntegrityError, match="cannot write prompts/flat/1/manifest.json: "):
        store.write("prompts/flat/1/manifest.json", b"{}")
    with pytest.raises(IntegrityError, match="cannot delete blobs/sha256/ab: "):
        store.delete("blobs/sha256/ab")
    with pytest.raises(ConflictError, match="already exists"):  # the name is taken
        store.create("prompts/toy/1/manifest.json", b"{}")
    assert not store.exists("prompts/toy/1/manifest.json")
    assert store.children("prompts/flat") == [] and store.objects("prompts/flat") == []
    with pytest.raises(NotFoundError):  # below a file, nothing can exist
        store.read("prompts/flat/1/manifest.json")


@pytest.mark.parametrize(
    ("code", "error", "message"),
    [
        (errno.EACCES, RegistryAccessError, "cannot read a/b.json: Permission denied"),
        (errno.EROFS, RegistryAccessError, "cannot read a/b.json: Read-only file system"),
        (errno.EIO, RegistryError, "cannot read a/b.json: Input/output error"),
    ],
)
def test_os_errors_become_registry_errors(tmp_path, monkeypatch, code, error, message):
    store = LocalStore(tmp_path)
    store.write("a/b.json", b"{}")

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(Path, "read_bytes", fail)
    with pytest.raises(error, match=message):
        store.read("a/b.json")


def test_a_full_disk_is_an_error_naming_the_key(tmp_path, monkeypatch):
    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(RegistryError, match="cannot create a/b.json: No space left on device"):
        LocalStore(tmp_path).create("a/b.json", b"{}")
    assert list((tmp_path / "a").iterdir()) == []  # no temp file left behind


def test_temp_files_are_listed_for_collection(tmp_path):
    """temp_files() lists what write_temp leaves (not lock files, not visible files, nothing in
    hidden folders); delete_temp_file removes one and refuses any other name."""
    store = LocalStore(tmp_path)
    store.write("prompts/toy/1/manifest.json", b"{}")
    key = "prompts/toy/1/manifest.json"
    store.replace(key, b"{ }", store.read(key)[1])
    temp = tmp_path / "prompts" / "toy" / "2" / ".manifest.json.4242.0badcafe.tmp"
    temp.parent.mkdir()
    temp.write_bytes(b"{")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / ".x.1.0badcafe.tmp").write_bytes(b"")
    (tmp_path / ".top.1.0badcafe.tmp").write_bytes(b"top")
    listed = {o.key: o.size for o in store.temp_files()}
    assert listed == {"prompts/toy/2/.manifest.json.4242.0badcafe.tmp": 1,
                      ".top.1.0badcafe.tmp": 3}
    for key in listed:
        store.delete_temp_file(key)
    assert store.temp_files() == [] and not temp.exists()
    for bad in ("prompts/toy/1/manifest.json", "prompts/toy/1/.manifest.json.lock",
                "../.x.1.0badcafe.tmp"):
        with pytest.raises(ValueError):
            store.delete_temp_file(bad)
    assert store.read("prompts/toy/1/manifest.json")[0] == b"{ }"
