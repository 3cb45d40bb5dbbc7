"""The local cache: verified copies per registry URI, shared blobs, and the cached alias an
offline pull falls back to."""

from __future__ import annotations

import hashlib

import pytest

from softprompt.registry import RegistryUnavailableError
from softprompt.registry.cache import Cache, default_cache_dir
from softprompt.registry.records import alias_key, moved_alias, to_json


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("SOFTPROMPT_REGISTRY_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("SOFTPROMPT_REGISTRY_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / ".cache" / "softprompt" / "registry"


def test_keys_are_per_registry_and_blobs_are_shared(tmp_path):
    a, b = Cache(tmp_path, "s3://bucket/a"), Cache(tmp_path, "s3://bucket/b")
    assert a.keys != b.keys and a.keys.parent == tmp_path / "registries"
    assert a.keys.name.startswith("s3_bucket_a-")
    a.put("prompts/toy/1/manifest.json", b"{}")
    assert a.get("prompts/toy/1/manifest.json") == b"{}"
    assert b.get("prompts/toy/1/manifest.json") is None
    digest = hashlib.sha256(b"blob").hexdigest()
    a.put_blob(digest, b"blob")
    assert b.blob(digest) == b"blob"


def test_a_corrupt_blob_reads_as_missing(tmp_path, caplog):
    cache = Cache(tmp_path, "reg")
    digest = hashlib.sha256(b"blob").hexdigest()
    assert cache.blob(digest) is None
    cache.put_blob(digest, b"blub")
    assert cache.blob(digest) is None
    assert f"cached blob {tmp_path}/blobs/sha256/{digest} is corrupt" in caplog.text


def test_offline_alias(tmp_path, caplog):
    cache = Cache(tmp_path, "s3://bucket/prompts/")
    down = RegistryUnavailableError("s3://bucket/prompts: down")
    with pytest.raises(RegistryUnavailableError, match="down; and alias 'production' of task toy "
                       "is not in the cache") as raised:
        cache.offline_alias("toy", "production", down)
    assert raised.value.__cause__ is down
    state = moved_alias(moved_alias(None, "toy", "production", 1), "toy", "production", 2)
    cache.put(alias_key("toy", "production"), to_json(state.to_dict(), "x"))
    assert cache.offline_alias("toy", "production", down) == state
    assert "using the cached alias toy/production -> version 2" in caplog.text


def test_an_unreadable_or_unwritable_cache_is_a_miss(tmp_path, caplog):
    """A folder in place of a cached file is a miss (with a warning), and a write there is
    skipped (with a warning), never an IsADirectoryError."""
    cache = Cache(tmp_path, "reg")
    key = "prompts/toy/1/manifest.json"
    (cache.keys / key / "inside").mkdir(parents=True)
    digest = hashlib.sha256(b"blob").hexdigest()
    (tmp_path / "blobs" / "sha256" / digest / "inside").mkdir(parents=True)
    assert cache.get(key) is None and cache.blob(digest) is None
    cache.put(key, b"{}")
    cache.put_blob(digest, b"blob")
    cache.drop(key)
    assert caplog.text.count("cannot read the cached") == 2
    assert caplog.text.count("to the cache") == 2 and "cannot remove" in caplog.text


def test_drop_forgets_a_key(tmp_path):
    cache = Cache(tmp_path, "reg")
    cache.put("prompts/toy/1/manifest.json", b"{}")
    cache.drop("prompts/toy/1/manifest.json")
    cache.drop("prompts/toy/1/manifest.json")
    assert cache.get("prompts/toy/1/manifest.json") is None
