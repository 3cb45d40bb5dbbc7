"""The prompt registry on both backends: a local directory and S3 (a real SeaweedFS server).

Every test runs against both; each registry handle gets a cache folder of its own, so two handles
behave like two services on different machines (the fixtures are in conftest.py).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import multiprocessing
import os
import shutil
import signal
import threading

import pytest
import torch

from softprompt.registry import (
    AliasConflictError,
    FingerprintMismatchError,
    IntegrityError,
    InvalidArtifactError,
    InvalidNameError,
    NotFoundError,
    open_registry,
)
from softprompt.registry.records import serialize_prompt

FP = "sha256:" + "ab" * 32
OTHER_FP = "sha256:" + "cd" * 32


def lineage(**extra) -> dict:
    return {"base_model": "tiny-llama", "base_model_fingerprint": FP, "init": "class_label",
            "objective": "target_nll", "hyperparameters": {"lr": 0.3},
            "metrics": {"dev": {"score": 0.75}}, "label_words": ["negative", "positive"],
            "template": "Review: {sentence}\nSentiment:", "metric": "accuracy",
            "dataset_version": "abc.dir", "code_version": "deadbeef", **extra}


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bit pattern, so -0.0 vs 0.0 and NaN payloads would count as differences."""
    return t.contiguous().view(torch.int16 if t.element_size() == 2 else torch.int32)


def test_round_trip_is_bit_exact(new_reg):
    reg = new_reg()
    prompt = torch.randn(5, 16, generator=torch.Generator().manual_seed(0))
    prompt[0, :4] = torch.tensor([-0.0, 1e-40, 3.0e38, -1.5])  # signed zero, subnormal, near max
    m1 = reg.publish("toy", prompt, lineage())
    m2 = reg.publish("toy", prompt.to(torch.bfloat16), lineage(init="text"))
    assert (m1.version, m2.version) == (1, 2)
    assert m1.shape == [5, 16] and m1.dtype == "float32" and m2.dtype == "bfloat16"
    assert m1.prompt_length == 5

    other = new_reg()  # a different service: nothing cached
    got, m = other.pull("toy", 1)
    assert got.dtype == torch.float32 and torch.equal(bits(got), bits(prompt))
    assert m == m1 and m.label_words == ["negative", "positive"] and m.base_model_fingerprint == FP
    got2, _ = other.pull("toy", "2")
    assert got2.dtype == torch.bfloat16 and torch.equal(bits(got2), bits(prompt.to(torch.bfloat16)))

    state = reg.promote("toy", "production", 1)
    assert (state.version, state.previous, state.seq) == (1, None, 1)
    assert other.pull("toy", "production")[1].version == 1
    reg.promote("toy", "production", 2)
    got, m = other.pull("toy")  # the default ref is production
    assert m.version == 2 and torch.equal(bits(got), bits(prompt.to(torch.bfloat16)))
    assert [v.version for v in other.list_versions("toy")] == [1, 2]
    assert other.list_tasks() == ["toy"]
    assert {a: s.version for a, s in other.aliases("toy").items()} == {"production": 2}
    assert other.manifest("toy", "production") == m2
    # The same bytes are one blob; the blob is named by its sha256.
    assert m1.blob_sha256 == reg.publish("toy", prompt, lineage()).blob_sha256
    blob, _ = reg.store.read(f"blobs/sha256/{m1.blob_sha256}")
    assert hashlib.sha256(blob).hexdigest() == m1.blob_sha256


def test_parallel_publishers_never_overwrite(new_reg):
    n = 8
    prompts = [torch.full((3, 8), float(i)) + torch.randn(3, 8) for i in range(n)]
    handles = [new_reg() for _ in range(n)]
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def publish(i: int) -> None:
        barrier.wait()
        try:
            results[i] = handles[i].publish("race", prompts[i], lineage(metrics={"publisher": i}))
        except BaseException as err:  # surfaced by the assertion below
            results[i] = err

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(not isinstance(r, BaseException) for r in results), results
    assert sorted(m.version for m in results) == list(range(1, n + 1))
    reader = new_reg()
    listed = {m.version: m for m in reader.list_versions("race")}
    assert sorted(listed) == list(range(1, n + 1))
    for i, m in enumerate(results):
        # Nobody's manifest replaced another's.
        assert listed[m.version] == m and m.metrics == {"publisher": i}
        got, _ = reader.pull("race", m.version)
        assert torch.equal(got, prompts[i])


def test_parallel_promotions_lose_no_update(new_reg):
    n = 8
    reg = new_reg()
    for i in range(n):
        reg.publish("promo", torch.full((2, 4), float(i)), lineage())
    handles = [new_reg() for _ in range(n)]
    barrier = threading.Barrier(n)
    states: list = [None] * n

    def promote(i: int) -> None:
        barrier.wait()
        try:
            states[i] = handles[i].promote("promo", "production", i + 1)
        except BaseException as err:
            states[i] = err

    threads = [threading.Thread(target=promote, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(not isinstance(s, BaseException) for s in states), states
    final = reg.alias("promo", "production")
    history = final.history
    # Every successful promote() is in the history exactly once, at the seq it returned.
    assert sorted(s.seq for s in states) == list(range(1, n + 1)) == [h["seq"] for h in history]
    for i, s in enumerate(states):
        assert history[s.seq - 1]["version"] == i + 1
        assert history[s.seq - 1]["move_id"] == s.history[-1]["move_id"]
    # A chain: each move starts where the previous one ended; the alias ends on the last move.
    assert history[0]["previous"] is None
    assert all(h["previous"] == prev["version"] for prev, h in itertools.pairwise(history))
    assert final.version == history[-1]["version"] and final.seq == n
    assert sorted(h["version"] for h in history) == list(range(1, n + 1))


def test_compare_and_swap_promotion(new_reg):
    n = 8
    reg = new_reg()
    for i in range(n + 1):
        reg.publish("cas", torch.full((2, 4), float(i)), lineage())
    reg.promote("cas", "production", 1, expected_version=None)
    with pytest.raises(AliasConflictError, match="points to version 1, not the expected None"):
        reg.promote("cas", "production", 2, expected_version=None)
    handles = [new_reg() for _ in range(n)]
    barrier = threading.Barrier(n)
    outcomes: list = [None] * n

    def promote(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = handles[i].promote("cas", "production", i + 2, expected_version=1)
        except AliasConflictError as err:
            outcomes[i] = err

    threads = [threading.Thread(target=promote, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, o in enumerate(outcomes) if not isinstance(o, AliasConflictError)]
    assert len(winners) == 1, outcomes
    final = reg.alias("cas", "production")
    assert final.version == winners[0] + 2 and final.seq == 2 and final.previous == 1


def test_corrupted_blob_is_refused_and_corrupt_cache_refetched(new_reg, uri):
    reg = new_reg()
    prompt = torch.randn(4, 8)
    m = reg.publish("toy", prompt, lineage())
    assert torch.equal(reg.pull("toy", 1)[0], prompt)  # now in reg's cache
    key = f"blobs/sha256/{m.blob_sha256}"
    good, _ = reg.store.read(key)
    # A corrupt cached copy is detected and fetched again.
    cached = reg.cache.root / "blobs" / "sha256" / m.blob_sha256
    cached.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    assert torch.equal(reg.pull("toy", 1)[0], prompt)
    assert cached.read_bytes() == good
    # Corruption at rest: one flipped bit in the stored blob.
    reg.store.write(key, good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(IntegrityError, match=rf"task toy version 1: blob {key} is corrupt"):
        new_reg().pull("toy", 1)


def test_malformed_manifest_is_refused(new_reg):
    reg = new_reg()
    reg.publish("toy", torch.randn(2, 4), lineage())
    reg.store.write("prompts/toy/1/manifest.json", b'{"task": "toy"')
    with pytest.raises(IntegrityError, match=r"prompts/toy/1/manifest.json: malformed JSON"):
        new_reg().pull("toy", 1)
    reg.store.write("prompts/toy/1/manifest.json", b'{"task": "toy", "version": 1}')
    with pytest.raises(IntegrityError, match=r"manifest field 'blob_sha256' is missing"):
        new_reg().manifest("toy", 1)


def _killed_publisher(uri: str, cache: str, stage: str, prompt: torch.Tensor) -> None:
    """Child process: publishes, and SIGKILLs itself midway at `stage`."""
    reg = open_registry(uri, cache_dir=cache)
    if stage == "before_manifest":  # the blob is stored, the manifest not yet
        create = reg.store.create

        def create_then_die(key, data):
            if key.endswith("manifest.json"):
                os.kill(os.getpid(), signal.SIGKILL)
            return create(key, data)

        reg.store.create = create_then_die
    else:  # local: the manifest's temp file is written, the exclusive link not yet made
        os.link = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    reg.publish("killed", prompt, lineage())


@pytest.mark.parametrize("stage", ["before_manifest", "mid_manifest"])
def test_publisher_killed_midway_leaves_nothing_loadable(new_reg, uri, stage, tmp_path):
    if stage == "mid_manifest" and uri.startswith("s3://"):
        pytest.skip("an S3 PUT is atomic: no half-written object can exist to test")
    prompt = torch.randn(3, 8)
    args = (uri, str(tmp_path / "c"), stage, prompt)
    child = multiprocessing.get_context("fork").Process(target=_killed_publisher, args=args)
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    reg = new_reg()
    digest = hashlib.sha256(serialize_prompt("killed", prompt).data).hexdigest()
    assert reg.store.children("blobs/sha256") == [digest]  # it got as far as the blob
    assert reg.list_versions("killed") == [] and reg.list_tasks() == []
    with pytest.raises(NotFoundError, match="task killed has no version 1"):
        reg.pull("killed", 1)
    assert reg.publish("killed", prompt, lineage()).version == 1  # and the task carries on
    assert torch.equal(reg.pull("killed", 1)[0], prompt)


def test_fingerprint_mismatch_is_refused(new_reg):
    reg = new_reg()
    reg.publish("toy", torch.randn(2, 4), lineage())
    reg.promote("toy", "production", 1)
    assert reg.pull("toy", expected_fingerprint=FP)[1].version == 1
    refused = rf"trained on base model 'tiny-llama' \(fingerprint {FP}\).*fingerprint {OTHER_FP}"
    with pytest.raises(FingerprintMismatchError, match=refused):
        reg.pull("toy", "production", expected_fingerprint=OTHER_FP)


@pytest.mark.parametrize(
    "bad", ["", "../etc", "a/b", "Toy", ".hidden", "-x", "x" * 65, "a b", "a\x00", None, 3]
)
def test_invalid_task_names_are_refused(new_reg, bad):
    reg = new_reg()
    with pytest.raises(InvalidNameError, match="invalid task name"):
        reg.publish(bad, torch.randn(2, 4), lineage())
    with pytest.raises(InvalidNameError, match="invalid task name"):
        reg.pull(bad, 1)
    assert reg.list_tasks() == []


@pytest.mark.parametrize("bad", ["", "../production", "1abc", "a/b", "Prod", "x" * 65, "0"])
def test_invalid_refs_are_refused(new_reg, bad):
    reg = new_reg()
    reg.publish("toy", torch.randn(2, 4), lineage())
    with pytest.raises(InvalidNameError):
        reg.promote("toy", bad, 1)
    with pytest.raises(InvalidNameError):
        reg.pull("toy", bad)


def test_missing_things_are_named(new_reg):
    reg = new_reg()
    with pytest.raises(NotFoundError, match="task toy has no version 1"):
        reg.pull("toy", 1)
    reg.publish("toy", torch.randn(2, 4), lineage())
    with pytest.raises(NotFoundError, match="task toy has no alias 'production'"):
        reg.pull("toy")
    with pytest.raises(NotFoundError, match="task toy has no version 7"):
        reg.promote("toy", "production", 7)
    assert reg.list_versions("other") == []


@pytest.mark.parametrize(
    ("prompt", "extra", "message"),
    [
        (torch.randn(4), {}, r"must be \[P, E\]"),
        (torch.zeros(0, 4), {}, r"must be \[P, E\]"),
        (torch.ones(2, 4, dtype=torch.int64), {}, "floating point"),
        (torch.tensor([[1.0, float("nan")]]), {}, "NaN or infinite"),
        (torch.randn(2, 4), {"base_model_fingerprint": "abc"}, "is not sha256:<64 hex digits>"),
        (torch.randn(2, 4), {"base_model": ""}, "'base_model' is required"),
        (torch.randn(2, 4), {"learning_rate": 0.3},
         r"unknown lineage field\(s\) \['learning_rate'\]"),
        (torch.randn(2, 4), {"prompt_length": 20},
         r"'prompt_length' 20 disagrees with 'shape' \[2, 4\]"),
        (torch.randn(2, 4), {"task": "sst2"}, "lineage is for task 'sst2'"),
        (torch.randn(2, 4), {"metrics": {"dev": float("nan")}}, "not JSON-serializable"),
    ],
)
def test_bad_publish_input_is_refused(new_reg, prompt, extra, message):
    reg = new_reg()
    with pytest.raises(InvalidArtifactError, match=message):
        reg.publish("toy", prompt, lineage(**extra))
    assert reg.list_versions("toy") == []


def test_open_registry_uris(tmp_path, monkeypatch):
    from softprompt.registry import RegistryError

    assert open_registry(f"file://{tmp_path}/r").uri == f"{tmp_path}/r"
    monkeypatch.setenv("SOFTPROMPT_REGISTRY", str(tmp_path / "env"))
    assert open_registry().uri == str(tmp_path / "env")
    monkeypatch.delenv("SOFTPROMPT_REGISTRY")
    monkeypatch.chdir(tmp_path)
    assert open_registry().uri == str(tmp_path / "registry")
    with pytest.raises(RegistryError, match="unsupported registry URI 'gs://b/p'"):
        open_registry("gs://b/p")
    with pytest.raises(RegistryError, match="invalid S3 registry URI"):
        open_registry("s3:///prefix")


def test_unreachable_store_falls_back_to_the_cache(tmp_path, caplog):
    """What was pulled before still pulls while the store is down; an alias then resolves to the
    version it pointed to when last read, with a warning."""
    from softprompt.registry import RegistryUnavailableError

    reg = open_registry(tmp_path / "registry", cache_dir=tmp_path / "cache")
    prompt = torch.randn(3, 8)
    reg.publish("toy", prompt, lineage())
    reg.publish("toy", torch.randn(3, 8), lineage())
    reg.publish("toy", torch.randn(3, 8), lineage())
    reg.promote("toy", "production", 1)
    reg.promote("toy", "staging", 2)
    assert torch.equal(reg.pull("toy", "production")[0], prompt)  # now in the cache

    def unreachable(key):
        raise RegistryUnavailableError(f"{reg.uri}/{key}: the store is down")

    reg.store.read = unreachable
    with caplog.at_level("WARNING", logger="softprompt.registry"):
        got, m = reg.pull("toy", "production")
    assert torch.equal(got, prompt) and m.version == 1
    assert "using the cached alias toy/production -> version 1" in caplog.text
    assert "which may be stale" in caplog.text
    assert torch.equal(reg.pull("toy", 1).prompt, prompt)
    with pytest.raises(RegistryUnavailableError, match="alias 'staging' of task toy is not in"):
        reg.pull("toy", "staging")
    with pytest.raises(RegistryUnavailableError, match="version 3 of task toy is not in the cache"):
        reg.pull("toy", 3)
    # promote() read version 2's manifest, but its blob was never pulled.
    with pytest.raises(RegistryUnavailableError, match="blobs/sha256/.*: the store is down"):
        reg.pull("toy", 2)
    uncached = open_registry(tmp_path / "registry")
    uncached.store.read = unreachable
    with pytest.raises(RegistryUnavailableError, match="the store is down"):
        uncached.pull("toy", 1)


UNUSABLE_LINEAGES = [
    ({"template": None}, "'template' must be a string"),
    ({"label_words": None}, "'label_words': 0 label word"),
    ({"label_words": [1, 2]}, "label word 1 must be a string"),
    ({"label_words": []}, "'label_words': 0 label word"),
    ({"label_words": ["yes", "yes"]}, r"label word\(s\) \['yes'\] name more than one label"),
    ({"label_words": ["", "no"]}, "a label word is empty"),
    ({"template": "Review: {sentence"}, "'template' does not parse"),
    ({"template": "{sentence:d}"}, "has a conversion or format spec"),
    ({"template": "{sentence:>100000000}"}, "has a conversion or format spec"),
    ({"template": "Review:"}, "'template' names no input field"),
]


def test_publish_refuses_unusable_manifests_before_storing_anything(new_reg):
    """Missing, unparseable or format-spec templates and missing, non-string, duplicate or empty
    label words raise InvalidArtifactError naming the task and the field, storing nothing."""
    reg = new_reg()
    for changes, message in UNUSABLE_LINEAGES:
        with pytest.raises(InvalidArtifactError, match=f"^task toy: manifest field .*{message}"):
            reg.publish("toy", torch.randn(2, 4), lineage(**changes))
    with pytest.raises(InvalidArtifactError, match=r"floating point \(float16, .*float8_e4m3fn"):
        reg.publish("toy", torch.randn(2, 4).to(torch.float8_e4m3fn), lineage())
    assert reg.store.objects("blobs") == [] and reg.list_versions("toy") == []


HAND_EDITS = [
    ({"base_model_fingerprint": "garbage"}, "'base_model_fingerprint' 'garbage' is not sha256"),
    ({"label_words": []}, "'label_words': 0 label word"),
    ({"label_words": ["a", 1]}, "label word 1 must be a string"),
    ({"prompt_length": 7}, "'prompt_length' 7 disagrees with 'shape' \\[2, 4\\]"),
    ({"template": "{x"}, "'template' does not parse"),
    ({"template": None}, "'template' must be a string"),
    ({"dtype": "int8"}, "'dtype' 'int8' is not one of"),
    ({"task": "other"}, "manifest says task 'other' version 1, expected 'toy' version 1"),
]


def test_hand_edited_manifests_are_refused_on_read(new_reg):
    """A stored manifest edited into something unusable fails every read (manifest, pull,
    list_versions) with IntegrityError naming the stored object, also for a reader whose cache
    holds the good copy."""
    reg = new_reg()
    reg.publish("toy", torch.randn(2, 4), lineage())
    key = "prompts/toy/1/manifest.json"
    good = json.loads(reg.store.read(key)[0])
    warm = new_reg()
    warm.pull("toy", 1)
    for changes, message in HAND_EDITS:
        reg.store.write(key, json.dumps({**good, **changes}).encode())
        for reader in (new_reg(), warm):
            where = rf"^{reg.uri}/{key}: .*{message}"
            with pytest.raises(IntegrityError, match=where):
                reader.pull("toy", 1)
            with pytest.raises(IntegrityError, match=where):
                reader.list_versions("toy")
            with pytest.raises(IntegrityError, match=where):
                reader.manifest("toy", 1)


def test_stray_entries_are_ignored_never_crash_nor_duplicate(new_reg, caplog):
    """Version folders not named in canonical ASCII decimal (01, Arabic-Indic or superscript
    digits, words), a file where a version folder belongs and a folder without a manifest are
    logged and skipped; the numbers they hold are not reused."""
    reg = new_reg()
    prompts = [torch.randn(2, 4) for _ in range(3)]
    reg.publish("toy", prompts[0], lineage())
    reg.publish("toy", prompts[1], lineage())
    copy, _ = reg.store.read("prompts/toy/1/manifest.json")
    for name in ("01", "\u0661", "\u00b2", "\uff11", "foo", "1.0", "-1"):
        reg.store.write(f"prompts/toy/{name}/manifest.json", copy)
    reg.store.write("prompts/toy/7", b"a file where a version folder belongs")
    reg.store.write("prompts/toy/9/notes.txt", b"a version folder without a manifest")
    reg.store.write("prompts/toy/aliases/notes.txt", b"not an alias")
    reg.store.write("prompts/Not-A-Task/1/manifest.json", copy)
    reader = new_reg()
    with caplog.at_level("WARNING", logger="softprompt.registry"):
        assert [m.version for m in reader.list_versions("toy")] == [1, 2]
        assert reader.list_tasks() == ["toy"] and reader.aliases("toy") == {}
    for name in ("'01'", "'\u0661'", "'\u00b2'", "'foo'", "'Not-A-Task'", "toy/7 holds no",
                 "toy/9 holds no", "aliases: ignoring ['notes.txt']"):
        assert name in caplog.text, name
    m = reader.publish("toy", prompts[2], lineage())
    assert m.version == 10  # after the stray 9
    assert [v.version for v in new_reg().list_versions("toy")] == [1, 2, 10]
    assert torch.equal(new_reg().pull("toy", 10).prompt, prompts[2])
    for ref in ("01", "\u0661", "\u00b2", "\uff11"):
        with pytest.raises(InvalidNameError, match="invalid"):
            reader.pull("toy", ref)


def test_a_recreated_registry_is_never_answered_from_the_cache(new_reg, uri):
    """A reader with a warm cache follows the store. After the registry is wiped and re-created
    under the same URI with another prompt as v1, it pulls the new prompt (and NotFoundError
    once nothing is there), never the old blob."""
    old, new = torch.randn(3, 8), torch.randn(3, 8)
    first = new_reg().publish("toy", old, lineage())
    new_reg().promote("toy", "production", 1)
    reader = new_reg()
    assert torch.equal(reader.pull("toy", 1).prompt, old)
    assert torch.equal(reader.pull("toy").prompt, old)
    wipe(new_reg().store)
    with pytest.raises(NotFoundError, match="task toy has no version 1"):
        reader.pull("toy", 1)
    with pytest.raises(NotFoundError, match="task toy has no alias 'production'"):
        reader.pull("toy")
    second = new_reg().publish("toy", new, lineage())
    new_reg().promote("toy", "production", 1)
    assert second.publish_id != first.publish_id
    got, m = reader.pull("toy", 1)
    assert torch.equal(got, new) and m == second
    assert torch.equal(reader.pull("toy").prompt, new)
    assert reader.manifest("toy", "production") == second


def wipe(store) -> None:
    """Removes the registry and creates it again, empty, under the same URI. On S3 the bucket is
    deleted and created again (deleting the keys alone leaves SeaweedFS listing their empty
    folders)."""
    if not store.uri.startswith("s3://"):
        shutil.rmtree(store.root)
        return
    client = store.client
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=store.bucket):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=store.bucket, Key=obj["Key"])
    client.delete_bucket(Bucket=store.bucket)
    client.create_bucket(Bucket=store.bucket)


def test_publish_writes_back_a_blob_removed_before_its_manifest(new_reg, caplog):
    """A garbage collection that removes the blob between the publisher's blob write and its
    manifest (it looked unreferenced then) does not leave a manifest naming nothing."""
    reg = new_reg()
    prompt = torch.randn(3, 8)
    create = reg.store.create

    def collector_strikes_first(key, data):
        if key.endswith("manifest.json"):
            digest = json.loads(data)["blob_sha256"]
            reg.store.delete(f"blobs/sha256/{digest}")
        return create(key, data)

    reg.store.create = collector_strikes_first
    with caplog.at_level("WARNING", logger="softprompt.registry"):
        m = reg.publish("toy", prompt, lineage())
    assert "was removed meanwhile; writing it again" in caplog.text
    assert reg.store.exists(f"blobs/sha256/{m.blob_sha256}")
    assert torch.equal(new_reg().pull("toy", 1).prompt, prompt)
