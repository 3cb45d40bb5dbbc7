"""The local-directory backend's own behaviour, beyond the Store contract in test_stores.py."""

from __future__ import annotations

import pytest

from softprompt.registry import ConflictError, NotFoundError, RegistryAccessError
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
