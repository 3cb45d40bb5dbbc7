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
