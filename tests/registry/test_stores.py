"""The Store interface on both backends: the conditional writes the registry's guarantees rest on
(the fixtures are in conftest.py)."""

from __future__ import annotations

import pytest

from softprompt.registry import ConflictError, NotFoundError, Store


def test_backend_conditional_writes(new_reg):
    """The store primitives the guarantees rest on (on S3: SeaweedFS honours If-None-Match /
    If-Match)."""
    store = new_reg().store
    etag = store.create("probe/a.json", b"one")
    with pytest.raises(ConflictError):
        store.create("probe/a.json", b"two")
    with pytest.raises(ConflictError):
        store.replace("probe/a.json", b"three", '"0123"')
    new = store.replace("probe/a.json", b"four", etag)
    with pytest.raises(ConflictError):
        store.replace("probe/a.json", b"five", etag)  # stale etag
    assert store.read("probe/a.json") == (b"four", new)
    with pytest.raises(NotFoundError):
        store.read("probe/missing.json")


def test_unconditional_writes_and_listing(new_reg):
    """`write` replaces whatever is there; `children` names files and folders one level down."""
    store = new_reg().store
    assert isinstance(store, Store)
    store.write("blobs/sha256/aa", b"one")
    store.write("blobs/sha256/aa", b"one")  # content addressed: rewriting is harmless
    store.write("prompts/toy/1/manifest.json", b"{}")
    store.write("prompts/toy/aliases/production.json", b"{}")
    assert store.read("blobs/sha256/aa")[0] == b"one"
    assert sorted(store.children("prompts/toy")) == ["1", "aliases"]
    assert store.children("prompts/toy/aliases") == ["production.json"]
    assert store.children("prompts/none") == []


def test_a_store_must_implement_every_primitive():
    class ReadOnly(Store):
        def read(self, key: str) -> tuple[bytes, str]:
            raise NotFoundError(key)

    with pytest.raises(TypeError, match="abstract"):
        ReadOnly()


def test_objects_exists_and_delete(new_reg):
    """`objects` lists every key at any depth with its size and modification time, `exists`
    checks one key, and `delete` removes one (a missing key is no error)."""
    import time

    store = new_reg().store
    before = time.time() - 2  # S3 times are whole seconds, on the server's clock
    store.write("blobs/sha256/aa", b"one")
    store.write("prompts/toy/1/manifest.json", b"{}")
    store.write("prompts/toy/aliases/production.json", b"{ }")
    listed = {o.key: o for o in store.objects("prompts")}
    assert sorted(listed) == ["prompts/toy/1/manifest.json", "prompts/toy/aliases/production.json"]
    assert listed["prompts/toy/aliases/production.json"].size == 3
    assert all(before <= o.modified <= time.time() + 2 for o in listed.values())
    assert [o.key for o in store.objects("blobs/sha256")] == ["blobs/sha256/aa"]
    assert store.objects("nothing") == [] and store.temp_files() == []
    assert store.exists("blobs/sha256/aa") and not store.exists("blobs/sha256/bb")
    assert not store.exists("blobs/sha256")  # a folder is not an object
    store.delete("blobs/sha256/aa")
    store.delete("blobs/sha256/aa")
    assert not store.exists("blobs/sha256/aa") and store.objects("blobs") == []
