"""Names, keys, and the strict (de)serialization of manifests, alias records and prompt blobs."""

from __future__ import annotations

import json

import pytest
import torch

from softprompt.registry import IntegrityError, InvalidArtifactError, InvalidNameError
from softprompt.registry.records import (
    SCHEMA,
    AliasState,
    Manifest,
    alias_key,
    blob_key,
    check_alias,
    check_manifest,
    check_task,
    deserialize_prompt,
    from_json,
    manifest_key,
    moved_alias,
    parse_ref,
    serialize_prompt,
    to_json,
)

WHERE = "reg/prompts/toy/1/manifest.json"


def manifest(**changes) -> dict:
    raw = {"task": "toy", "version": 1, "blob_sha256": "ab" * 32, "shape": [2, 4],
           "dtype": "float32", "base_model": "m", "base_model_fingerprint": "sha256:" + "0" * 64,
           "prompt_length": 2, "created_at": "2025-01-01T00:00:00.000Z",
           "template": "Review: {sentence}\nSentiment:", "label_words": ["negative", "positive"]}
    return {**raw, **changes}


def test_names_and_refs():
    assert check_task("sst2") == "sst2" and check_task("0-a_b") == "0-a_b"
    assert check_alias("production") == "production"
    with pytest.raises(InvalidNameError, match="starting with a letter$"):
        check_alias("1abc")
    assert parse_ref(3) == 3 and parse_ref("12") == 12 and parse_ref("staging") == "staging"
    for bad in (True, 0, "0", -1, "-1", "Prod"):
        with pytest.raises(InvalidNameError):
            parse_ref(bad)


@pytest.mark.parametrize(
    "bad",
    ["\u00b2", "\u00b9", "\u0661", "\uff11", "01", "007", "00", "1 ", " 1", "1\n", "+1", "1.0",
     "1e3", "1_000", "9" * 19, "9" * 5000, 10**18, -5, 1.0, None, [1], b"1", "", "Prod"],
)
def test_refs_are_ascii_version_numbers_or_alias_names(bad):
    """Unicode digits (superscripts, Arabic-Indic, full width), leading zeros, signs, floats and
    over-long numbers are neither a version nor an alias: InvalidNameError, never a bare
    ValueError and never version 1."""
    with pytest.raises(InvalidNameError) as raised:
        parse_ref(bad)
    assert type(raised.value) is InvalidNameError
    assert parse_ref("1") == 1 and parse_ref(str(10**18 - 1)) == 10**18 - 1


def test_keys_follow_the_layout():
    assert blob_key("ab") == "blobs/sha256/ab"
    assert manifest_key("toy", 3) == "prompts/toy/3/manifest.json"
    assert alias_key("toy", "production") == "prompts/toy/aliases/production.json"


def test_json_is_canonical_and_strict():
    assert to_json({"b": 1, "a": [1.5]}, "x") == b'{\n  "a": [\n    1.5\n  ],\n  "b": 1\n}\n'
    with pytest.raises(InvalidArtifactError, match="x: not JSON-serializable"):
        to_json({"a": float("inf")}, "x")
    with pytest.raises(InvalidArtifactError, match="x: not JSON-serializable"):
        to_json({"a": object()}, "x")
    assert from_json(b'{"a": 1}', "x") == {"a": 1}
    with pytest.raises(IntegrityError, match="x: malformed JSON"):
        from_json(b"\xff", "x")
    with pytest.raises(IntegrityError, match="x: expected a JSON object, got list"):
        from_json(b"[1]", "x")
    # Nesting deeper than the parser's recursion limit is malformed, not a RecursionError.
    with pytest.raises(IntegrityError, match="x: malformed JSON"):
        from_json(b"[" * 100_000, "x")
    nested: dict = {}
    for _ in range(100_000):
        nested = {"a": nested}
    with pytest.raises(InvalidArtifactError, match="x: not JSON-serializable"):
        to_json(nested, "x")


def test_manifest_round_trip_fills_defaults():
    m = Manifest.from_dict(manifest(), WHERE)
    assert m.schema == SCHEMA and m.metrics == {} and m.init is None and m.publish_id == ""
    assert Manifest.from_dict(from_json(to_json(m.to_dict(), WHERE), WHERE), WHERE) == m


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (manifest(extra=1), r"unknown manifest field\(s\) \['extra'\]"),
        ({k: v for k, v in manifest().items() if k != "dtype"}, "field 'dtype' is missing"),
        (manifest(version="1"), "field 'version' has type str"),
        (manifest(version=True), "field 'version' has type bool"),
        (manifest(init=3), "field 'init' has type int"),
        (manifest(schema=SCHEMA + 1), f"schema {SCHEMA + 1} is not supported"),
        (manifest(blob_sha256="AB" * 32), "'blob_sha256' is not a sha256 hex digest"),
        (manifest(shape=[2]), r"'shape' must be \[P, E\] with positive sizes, got \[2\]"),
        (manifest(shape=[2, 0]), r"'shape' must be \[P, E\]"),
    ],
)
def test_malformed_manifests_are_refused(raw, message):
    with pytest.raises(IntegrityError, match=rf"^{WHERE}: .*{message}"):
        Manifest.from_dict(raw, WHERE)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"template": None}, "template"),
        ({"template": "Review: {sentence"}, "template"),
        ({"template": "{sentence:d}"}, "template"),
        ({"template": "{sentence:>100000000}"}, "template"),
        ({"template": "{sentence!r}"}, "template"),
        ({"template": "{}"}, "template"),
        ({"template": "{0}"}, "template"),
        ({"template": "{row[0]}"}, "template"),
        ({"template": "no field at all"}, "template"),
        ({"label_words": []}, "label_words"),
        ({"label_words": ["positive"]}, "label_words"),
        ({"label_words": [1, 2]}, "label_words"),
        ({"label_words": [True, False]}, "label_words"),
        ({"label_words": ["yes", "yes"]}, "label_words"),
        ({"label_words": ["", "no"]}, "label_words"),
        ({"label_words": [" yes", "no"]}, "label_words"),
        ({"label_words": ["x" * 101, "no"]}, "label_words"),
        ({"base_model_fingerprint": "garbage"}, "base_model_fingerprint"),
        ({"base_model_fingerprint": "sha256:" + "AB" * 32}, "base_model_fingerprint"),
        ({"prompt_length": 3}, "prompt_length"),
        ({"dtype": "int64"}, "dtype"),
        ({"dtype": "float8_e4m3fn"}, "dtype"),
        ({"base_model": " "}, "base_model"),
        ({"task": "../etc"}, "task"),
        ({"task": "Toy"}, "task"),
        ({"version": 0}, "version"),
        ({"version": -3}, "version"),
    ],
)
def test_check_manifest_refuses_what_a_service_cannot_use(changes, field):
    """27 manifests that parse but cannot be served raise IntegrityError naming the field."""
    m = Manifest.from_dict(manifest(**changes), WHERE)
    with pytest.raises(IntegrityError, match=rf"^{WHERE}: manifest field '{field}'"):
        check_manifest(m, WHERE)
    assert check_manifest(Manifest.from_dict(manifest(), WHERE), WHERE).task == "toy"


def test_shapes_hold_positive_ints_not_bools():
    with pytest.raises(IntegrityError, match="'shape' must be"):
        Manifest.from_dict(manifest(shape=[True, 4], prompt_length=1), WHERE)


def test_alias_moves_form_a_chain():
    first = moved_alias(None, "toy", "production", 1)
    assert (first.version, first.previous, first.seq) == (1, None, 1)
    second = moved_alias(first, "toy", "production", 4)
    assert (second.version, second.previous, second.seq) == (4, 1, 2)
    assert [h["version"] for h in second.history] == [1, 4]
    assert second.history[0] == first.history[0]
    assert second.history[1]["previous"] == 1 and second.history[1]["moved_at"] == second.moved_at
    assert first.history[0]["move_id"] != second.history[1]["move_id"]
    assert AliasState.from_dict(json.loads(to_json(second.to_dict(), "x")), "x") == second


def test_malformed_alias_records_are_refused():
    good = moved_alias(None, "toy", "production", 1).to_dict()
    with pytest.raises(IntegrityError, match="x: malformed alias record"):
        AliasState.from_dict({**good, "extra": 1}, "x")
    with pytest.raises(IntegrityError, match="seq 2, 1 history entries"):
        AliasState.from_dict({**good, "seq": 2}, "x")
    with pytest.raises(IntegrityError, match=r"version '1', seq 1, \? history entries"):
        AliasState.from_dict({**good, "version": "1", "history": None}, "x")


def _history(*versions: int) -> list[dict]:
    """The history of an alias moved to `versions` in turn."""
    state = None
    for v in versions:
        state = moved_alias(state, "toy", "production", v)
    return state.history


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"version": 9}, "points to version 9 .*last move went to 3"),
        ({"previous": 9}, r"previous 9\), but its last move went to 3 \(previous 2\)"),
        ({"previous": None}, "previous None.*previous 2"),
        ({"version": True}, "malformed alias record"),
        ({"version": 0}, "malformed alias record"),
        ({"history": [], "seq": 0}, "empty history"),
        ({"history": _history(1, 2, 3)[::-1]}, "entry 1 .*expected seq 1"),
        ({"history": [*_history(1, 2), {**_history(1, 2, 3)[2], "seq": 4}]}, "entry 3"),
        ({"history": [_history(1)[0], {**_history(1, 2)[1], "previous": 7},
                      _history(1, 2, 3)[2]]}, "entry 2 .*expected seq 2, previous 1"),
        ({"history": [*_history(1, 2), "moved"]}, "entry 3 'moved'"),
        ({"history": [*_history(1, 2), {**_history(1, 2, 3)[2], "version": "3"}]}, "entry 3"),
    ],
)
def test_alias_records_must_agree_with_their_history(changes, message):
    """An alias whose version or previous is not its last move's, or whose history is not moves
    1..n each starting where the one before ended, is refused."""
    good = {"task": "toy", "alias": "production", "version": 3, "previous": 2,
            "moved_at": "2025-01-01T00:00:00.000Z", "seq": 3, "history": _history(1, 2, 3)}
    assert AliasState.from_dict(good, "x").version == 3
    with pytest.raises(IntegrityError, match=f"^x: .*{message}"):
        AliasState.from_dict({**good, **changes}, "x")


def test_prompt_blob_round_trip_is_deterministic():
    prompt = torch.randn(3, 8, dtype=torch.float64)
    blob = serialize_prompt("toy", prompt.t().contiguous().t())  # a non-contiguous view
    assert (blob.shape, blob.dtype) == ([3, 8], "float64")
    assert blob == serialize_prompt("toy", prompt.clone())  # the same prompt, the same bytes
    m = Manifest.from_dict(manifest(shape=[3, 8], dtype="float64"), WHERE)
    assert torch.equal(deserialize_prompt(blob.data, m), prompt)


def test_blobs_unlike_their_manifest_are_refused():
    from safetensors.torch import save

    blob = serialize_prompt("toy", torch.randn(2, 4))
    where = "task toy version 1 blob abababababab"
    with pytest.raises(IntegrityError, match=rf"{where}: tensor \[2, 4\] torch.float32 does not"):
        deserialize_prompt(blob.data, Manifest.from_dict(manifest(shape=[4, 2]), WHERE))
    with pytest.raises(IntegrityError, match="does not match the manifest's"):
        deserialize_prompt(blob.data, Manifest.from_dict(manifest(dtype="float16"), WHERE))
    m = Manifest.from_dict(manifest(), WHERE)
    with pytest.raises(IntegrityError, match=f"{where}: not a safetensors file"):
        deserialize_prompt(b"not safetensors", m)
    two = save({"prompt": torch.randn(2, 4), "other": torch.randn(1)})
    with pytest.raises(IntegrityError, match=r"expected one tensor 'prompt', found \['other',"):
        deserialize_prompt(two, m)


def test_only_finite_float_matrices_serialize():
    with pytest.raises(InvalidArtifactError, match="must be a torch.Tensor, got list"):
        serialize_prompt("toy", [[1.0]])
    with pytest.raises(InvalidArtifactError, match=r"got shape \[2, 3, 4\]"):
        serialize_prompt("toy", torch.randn(2, 3, 4))
    with pytest.raises(InvalidArtifactError, match="task toy: the prompt holds NaN or infinite"):
        serialize_prompt("toy", torch.tensor([[1.0, float("-inf")]]))
