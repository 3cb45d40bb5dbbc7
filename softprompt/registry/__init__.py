"""Prompt registry: immutable, verified, lineage-carrying prompt artifacts (the guarantees are in
registry.py, the records and their layout in records.py).

    reg = open_registry("s3://bucket/prompts")     # or "/path", "file:///path"
    m = reg.publish("sst2", prompt, lineage_from_run("runs/sst2"))
    reg.promote("sst2", "production", m.version)
    prompt, m = reg.pull("sst2", "production", expected_fingerprint=lm.fingerprint)

Orphan blobs and temp files of killed publishers are removed by `softprompt registry gc`
(gc.collect_garbage).
"""

from __future__ import annotations

import os
from pathlib import Path

from softprompt.registry.cache import Cache, default_cache_dir
from softprompt.registry.errors import (
    AliasConflictError,
    ConflictError,
    FingerprintMismatchError,
    IntegrityError,
    InvalidArtifactError,
    InvalidNameError,
    NotFoundError,
    RegistryAccessError,
    RegistryError,
    RegistryUnavailableError,
)
from softprompt.registry.lineage import lineage_from_run
from softprompt.registry.records import AliasState, Manifest
from softprompt.registry.registry import PulledPrompt, Registry
from softprompt.registry.stores import Store

DEFAULT_REGISTRY = "registry"  # a folder under the current directory

__all__ = [
    "AliasConflictError", "AliasState", "Cache", "ConflictError", "FingerprintMismatchError",
    "IntegrityError", "InvalidArtifactError", "InvalidNameError", "Manifest", "NotFoundError",
    "PulledPrompt", "Registry", "RegistryAccessError", "RegistryError", "RegistryUnavailableError",
    "Store", "default_cache_dir", "default_registry_uri", "lineage_from_run", "open_registry",
]


def default_registry_uri() -> str:
    return os.environ.get("SOFTPROMPT_REGISTRY") or DEFAULT_REGISTRY


def open_registry(uri: str | Path | None = None, cache_dir: str | Path | None = None,
                  session=None) -> Registry:
    """A registry by URI: "s3://bucket/prefix" (boto3; endpoint and credentials from the standard
    AWS chain, e.g. AWS_ENDPOINT_URL; `session` a boto3.Session to choose a profile), "file:///path"
    or a plain path (a local directory). Default: $SOFTPROMPT_REGISTRY, else ./registry.

    S3 pulls are cached under `cache_dir` (default $SOFTPROMPT_REGISTRY_CACHE or
    ~/.cache/softprompt/registry) and work offline from it; a local registry is read directly
    unless `cache_dir` is given.
    """
    uri = str(uri) if uri is not None else default_registry_uri()
    if uri.startswith("s3://"):
        from softprompt.registry.s3 import S3Store

        cache = cache_dir if cache_dir is not None else default_cache_dir()
        return Registry(S3Store(uri, session=session), cache)
    if "://" in uri and not uri.startswith("file://"):
        raise RegistryError(
            f"unsupported registry URI {uri!r}: use a directory, file:///path or s3://bucket/prefix"
        )
    from softprompt.registry.local import LocalStore

    return Registry(LocalStore(uri.removeprefix("file://")), cache_dir)
