"""S3 faults against a real SeaweedFS server: bad credentials, a missing bucket, the server going
away mid-pull (clear error; offline pulls from the cache; a retry succeeds once it is back). The
`bucket` fixture is in conftest.py."""

from __future__ import annotations

import uuid

import pytest
import torch

from softprompt.registry import (
    NotFoundError,
    RegistryAccessError,
    RegistryError,
    RegistryUnavailableError,
    open_registry,
)
from softprompt.registry.s3 import parse_s3_uri

LINEAGE = {"base_model": "tiny-llama", "base_model_fingerprint": "sha256:" + "ab" * 32,
           "template": "Review: {sentence}\nSentiment:", "label_words": ["negative", "positive"]}


@pytest.fixture()
def uri(s3_env, bucket):
    return f"s3://{bucket}/{uuid.uuid4().hex[:12]}"


@pytest.mark.parametrize(
    ("uri", "parts"),
    [
        ("s3://bucket", ("bucket", "")),
        ("s3://bucket/", ("bucket", "")),
        ("s3://bucket/some/prefix/", ("bucket", "some/prefix")),
    ],
)
def test_s3_uris_name_a_bucket_and_a_prefix(uri, parts):
    assert parse_s3_uri(uri) == parts


@pytest.mark.parametrize("uri", ["s3://", "s3:///prefix", "s3://b/a//c", "s3://b/../c", "s3://b/."])
def test_bad_s3_uris_are_refused(uri):
    with pytest.raises(RegistryError, match="invalid S3 registry URI"):
        parse_s3_uri(uri)


@pytest.mark.s3
def test_wrong_credentials_are_a_clear_error(uri, tmp_path, monkeypatch, s3_server):
    open_registry(uri, cache_dir=tmp_path / "ok").publish("toy", torch.randn(2, 4), LINEAGE)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    reg = open_registry(uri, cache_dir=tmp_path / "c")
    denied = rf"access denied by {s3_server.endpoint_url} \(SignatureDoesNotMatch\): check the AWS"
    with pytest.raises(RegistryAccessError, match=denied):
        reg.list_tasks()
    with pytest.raises(RegistryAccessError, match="access denied"):
        reg.pull("toy", 1)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "nobody")
    with pytest.raises(RegistryAccessError, match="access denied"):
        open_registry(uri, cache_dir=tmp_path / "c").publish("toy", torch.randn(2, 4), LINEAGE)


@pytest.mark.s3
def test_missing_credentials_are_a_clear_error(uri, tmp_path, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(RegistryAccessError, match="no usable AWS credentials"):
        open_registry(uri, cache_dir=tmp_path / "c").list_tasks()


@pytest.mark.s3
def test_missing_bucket_is_a_clear_error(s3_env, tmp_path):
    reg = open_registry("s3://no-such-bucket-here/prompts", cache_dir=tmp_path / "c")
    message = (rf"s3://no-such-bucket-here/prompts.*: bucket 'no-such-bucket-here' does not exist "
               rf"at {s3_env.endpoint_url}")
    with pytest.raises(RegistryAccessError, match=message):
        reg.list_tasks()
    with pytest.raises(RegistryAccessError, match=message):
        reg.publish("toy", torch.randn(2, 4), LINEAGE)
    with pytest.raises(RegistryAccessError, match=message):
        reg.pull("toy", 1)


@pytest.mark.s3
def test_server_stopped_mid_pull_then_back(uri, tmp_path, s3_server, monkeypatch):
    # No client-side retries, since the caller's retry is under test.
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    prompt = torch.randn(3, 8)
    service = open_registry(uri, cache_dir=tmp_path / "service")
    m = service.publish("toy", prompt, LINEAGE)
    service.promote("toy", "production", m.version)
    assert torch.equal(service.pull("toy")[0], prompt)  # cached by this service

    fresh = open_registry(uri, cache_dir=tmp_path / "fresh")
    read = fresh.store.read

    def read_then_crash(key):
        if key.startswith("blobs/"):  # the manifest is in hand; the server dies before the blob
            s3_server.stop()
        return read(key)

    fresh.store.read = read_then_crash
    try:
        unreachable = (rf"{uri}/blobs/sha256/{m.blob_sha256}: cannot reach the S3 endpoint "
                       rf"{s3_server.endpoint_url}")
        with pytest.raises(RegistryUnavailableError, match=unreachable):
            fresh.pull("toy", "production")
        fresh.store.read = read
        # While the server is down: the service that pulled before works offline from its cache.
        got, m_cached = service.pull("toy", "production")
        assert torch.equal(got, prompt) and m_cached == m
        with pytest.raises(RegistryUnavailableError, match="cannot reach the S3 endpoint"):
            service.publish("toy", prompt, LINEAGE)
    finally:
        s3_server.start()
    got, _ = fresh.pull("toy", "production")  # the retry, with the server back
    assert torch.equal(got, prompt)


@pytest.mark.s3
def test_recreated_registry_then_server_down(s3_env, s3_server, tmp_path, monkeypatch, caplog):
    """A warm cache never answers for a registry re-created under the same URI while the server
    is up: the new v1 is pulled, not the old blob. Once the server is down, the cached (new)
    prompt still pulls, with the stale warning."""
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    bucket = s3_server.create_bucket()
    uri = f"s3://{bucket}/prompts"
    old, new = torch.randn(3, 8), torch.randn(3, 8)
    publisher = open_registry(uri, cache_dir=tmp_path / "publisher")
    publisher.publish("toy", old, LINEAGE)
    publisher.promote("toy", "production", 1)
    reader = open_registry(uri, cache_dir=tmp_path / "reader")
    assert torch.equal(reader.pull("toy", 1).prompt, old)
    assert torch.equal(reader.pull("toy").prompt, old)

    client = s3_server.client()
    for obj in client.list_objects_v2(Bucket=bucket).get("Contents", []):
        client.delete_object(Bucket=bucket, Key=obj["Key"])
    client.delete_bucket(Bucket=bucket)
    client.create_bucket(Bucket=bucket)
    with pytest.raises(NotFoundError, match="task toy has no version 1"):
        reader.pull("toy", 1)
    assert publisher.publish("toy", new, LINEAGE).version == 1
    publisher.promote("toy", "production", 1)
    assert torch.equal(reader.pull("toy", 1).prompt, new)
    assert torch.equal(reader.pull("toy").prompt, new)

    s3_server.stop()
    try:
        with caplog.at_level("WARNING", logger="softprompt.registry"):
            got, m = reader.pull("toy", 1)
            assert torch.equal(got, new) and m.version == 1
            assert "using the cached manifest of toy version 1" in caplog.text
            assert torch.equal(reader.pull("toy").prompt, new)
            assert "using the cached alias toy/production -> version 1" in caplog.text
    finally:
        s3_server.start()
