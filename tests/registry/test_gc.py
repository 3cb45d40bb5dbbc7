"""Garbage collection on both backends. Old orphans and temp files go, young ones and every blob
a manifest names stay, also while publishers run (the fixtures are in conftest.py)."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import threading
import time

import pytest
import torch

from softprompt.registry import IntegrityError
from softprompt.registry.gc import collect_garbage
from softprompt.registry.records import blob_key

FP = "sha256:" + "ab" * 32
LINEAGE = {"base_model": "tiny-llama", "base_model_fingerprint": FP,
           "template": "Review: {sentence}\nSentiment:", "label_words": ["negative", "positive"]}


def orphan(store, payload: bytes) -> str:
    """Stores a blob no manifest names, as a publisher killed before its manifest leaves."""
    digest = hashlib.sha256(payload).hexdigest()
    store.write(blob_key(digest), payload)
    return digest


def temp_file(store, folder: str, age: float) -> str:
    """A temp file as a writer killed before its rename leaves (local only), `age` seconds old."""
    path = store.root / folder / f".manifest.json.{os.getpid()}.0badcafe.tmp"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b'{"task": ')
    os.utime(path, (time.time() - age, time.time() - age))
    return path.relative_to(store.root).as_posix()


def test_old_orphans_go_young_and_referenced_blobs_stay(new_reg, uri):
    """Orphan blobs older than the grace period go; a younger one and every blob a manifest
    names stay, even a manifest in a stray folder. --dry-run lists the same and removes none."""
    reg = new_reg()
    store = reg.store
    kept = reg.publish("toy", torch.randn(2, 4), LINEAGE).blob_sha256
    old = orphan(store, b"old orphan")
    stray = orphan(store, b"named by a stray manifest")
    manifest = json.loads(store.read("prompts/toy/1/manifest.json")[0])
    named = json.dumps({**manifest, "blob_sha256": stray}).encode()
    store.write("prompts/toy/01/manifest.json", named)
    local = not uri.startswith("s3://")
    temps = [temp_file(store, f, 10) for f in ("prompts/toy/2", "blobs/sha256") if local]
    time.sleep(2.5)  # S3 stores whole seconds
    young = orphan(store, b"young orphan")
    temps += [temp_file(store, "prompts/toy/3", 0) for _ in range(local)]

    dry = collect_garbage(reg, min_age_seconds=2, dry_run=True)
    assert [o.key for o in dry.blobs] == [blob_key(old)]
    assert dry.referenced == 2 and dry.young == 1 + local
    assert len(dry.temp_files) == 2 * local
    assert store.exists(blob_key(old)) and len(store.temp_files()) == 3 * local

    report = collect_garbage(reg, min_age_seconds=2)
    summary = report.summary()
    assert summary["blobs_removed"] == 1 and summary["temp_files_removed"] == 2 * local
    assert summary["bytes_removed"] == len(b"old orphan") + 2 * local * len(b'{"task": ')
    assert sorted(summary["removed"]) == sorted([blob_key(old), *temps[:2]])
    assert not store.exists(blob_key(old))
    for digest in (kept, stray, young):
        assert store.exists(blob_key(digest))
    assert [o.key for o in store.temp_files()] == temps[2:]
    assert torch.equal(new_reg().pull("toy", 1).prompt, reg.pull("toy", 1).prompt)
    assert collect_garbage(reg, min_age_seconds=2).summary()["blobs_removed"] == 0


def test_an_unreadable_manifest_stops_the_collection(new_reg):
    """A manifest whose blob cannot be told protects everything, so nothing is removed."""
    reg = new_reg()
    reg.publish("toy", torch.randn(2, 4), LINEAGE)
    old = orphan(reg.store, b"old orphan")
    reg.store.write("prompts/toy/2/manifest.json", b'{"blob_sha256": ')
    with pytest.raises(IntegrityError, match="prompts/toy/2/manifest.json: unreadable"):
        collect_garbage(reg, min_age_seconds=0)
    assert reg.store.exists(blob_key(old))
    with pytest.raises(ValueError, match="min_age_seconds must be >= 0"):
        collect_garbage(reg, min_age_seconds=-1)


def test_a_blob_named_by_a_manifest_created_during_the_collection_is_written_back(new_reg):
    """The race. A publisher's manifest lands after the collector listed the manifests, and the
    collector removes its blob. The collector lists the manifests again and writes it back."""
    reg = new_reg()
    prompt = torch.randn(2, 4)
    m = reg.publish("late", prompt, LINEAGE)
    key = "prompts/late/1/manifest.json"
    data, _ = reg.store.read(key)
    reg.store.delete(key)  # the state between a publisher's blob and its manifest
    delete = reg.store.delete

    def publisher_lands_meanwhile(k: str) -> None:
        delete(k)
        if k == blob_key(m.blob_sha256):
            reg.store.create(key, data)

    reg.store.delete = publisher_lands_meanwhile
    report = collect_garbage(reg, min_age_seconds=0)
    assert report.restored == [m.blob_sha256] and report.blobs == []
    assert torch.equal(new_reg().pull("late", 1).prompt, prompt)


def test_collection_while_publishing_keeps_every_named_blob(new_reg):
    """4 publishers publish versions (some of the same bytes, so existing blobs are rewritten)
    while a collector with no grace period runs in a loop; at the end every manifest's blob is
    there and every version pulls."""
    n_publishers, n_versions = 4, 12
    stop = threading.Event()
    errors: list[BaseException] = []
    published: list = []
    shared = torch.randn(2, 4)

    def publish(i: int) -> None:
        reg = new_reg()
        try:
            for j in range(n_versions):
                prompt = shared if j % 4 == 0 else torch.randn(2, 4)
                published.append((reg.publish(f"t{i}", prompt, LINEAGE), prompt))
        except BaseException as err:  # surfaced by the assertion below
            errors.append(err)

    def collect() -> None:
        reg = new_reg()
        try:
            while not stop.is_set():
                collect_garbage(reg, min_age_seconds=0)
        except BaseException as err:
            errors.append(err)

    collector = threading.Thread(target=collect)
    collector.start()
    publishers = [threading.Thread(target=publish, args=(i,)) for i in range(n_publishers)]
    for t in publishers:
        t.start()
    for t in publishers:
        t.join()
    stop.set()
    collector.join()
    assert errors == []
    assert len(published) == n_publishers * n_versions
    reader = new_reg()
    for m, prompt in published:
        assert reader.store.exists(blob_key(m.blob_sha256)), m
        assert torch.equal(reader.pull(m.task, m.version).prompt, prompt)
    final = collect_garbage(reader, min_age_seconds=0)
    assert final.blobs == [] and final.referenced == len({m.blob_sha256 for m, _ in published})


def test_a_temp_file_its_writer_still_holds_is_kept(tmp_path):
    """However old, a temp file whose writer is alive (it holds the file's lock) is kept."""
    from softprompt.fileio import _write_locked_temp
    from softprompt.registry import open_registry

    reg = open_registry(tmp_path / "registry")
    held = _write_locked_temp(tmp_path / "registry" / "blobs" / "sha256" / "ab", b"slow writer")
    os.utime(held.path, (time.time() - 7200, time.time() - 7200))
    try:
        report = collect_garbage(reg)
        assert report.in_use == 1 and report.temp_files == [] and held.path.exists()
    finally:
        os.close(held.fd)
    assert collect_garbage(reg).summary()["temp_files_removed"] == 1 and not held.path.exists()


def _killed_publisher(uri: str, cache: str, prompt: torch.Tensor) -> None:
    """Child process: publishes, and SIGKILLs itself once the blob is stored and, on a local
    registry, the manifest's temp file written (just before the exclusive link)."""
    from softprompt.registry import open_registry

    reg = open_registry(uri, cache_dir=cache)

    def die(*args, **kwargs) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    if uri.startswith("s3://"):
        reg.store.create = die
    else:
        os.link = die
    reg.publish("killed", prompt, LINEAGE)


def test_what_a_killed_publisher_leaves_is_collected(new_reg, uri, tmp_path):
    """A publisher SIGKILLed midway leaves an orphan blob (and locally a temp file, its lock
    gone with the process); a collection with no grace period removes both."""
    prompt = torch.randn(3, 8)
    child = multiprocessing.get_context("fork").Process(
        target=_killed_publisher, args=(uri, str(tmp_path / "c"), prompt))
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    reg = new_reg()
    local = not uri.startswith("s3://")
    assert len(reg.store.objects("blobs")) == 1 and len(reg.store.temp_files()) == local
    report = collect_garbage(reg, min_age_seconds=0)
    assert len(report.blobs) == 1 and len(report.temp_files) == local and report.in_use == 0
    assert reg.store.objects("blobs") == [] and reg.store.temp_files() == []
    assert reg.publish("killed", prompt, LINEAGE).version == 1
