"""The template and label-word rules that specs, manifests and the service share."""

import pytest

from softprompt.verbalizer import VerbalizerError, check_label_words, template_fields


def test_catalogue_templates_parse():
    assert template_fields("Review: {sentence}\nSentiment:") == ["sentence"]
    assert template_fields("{text} '{target.span2_text}' '{target.span1_text}'") == [
        "text", "target.span2_text", "target.span1_text"]
    assert template_fields("Sentence 1: {#1 String}\nSentence 2: {#2 String}") == [
        "#1 String", "#2 String"]
    assert template_fields("{a} and {a}") == ["a", "a"]


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("Review: {sentence", "does not parse"),
        ("Review: sentence}", "does not parse"),
        ("{sentence:d}", "format spec"),
        ("{sentence:>100000000}", "format spec"),
        ("{sentence!r}", "conversion"),
        ("{}", "positional"),
        ("{0}", "positional"),
        ("{rows[0]}", "no indexing"),
        ("{target.}", "dotted"),
        ("no fields at all", "names no input field"),
        ("", "names no input field"),
        (None, "must be a string"),
        (3, "must be a string"),
    ],
)
def test_bad_templates_are_refused_with_the_reason(template, message):
    with pytest.raises(VerbalizerError, match=message):
        template_fields(template, "field 'template'")


def test_good_label_words_pass():
    assert check_label_words(["negative", "positive"]) == ["negative", "positive"]
    assert check_label_words(("no", "yes", "maybe")) == ["no", "yes", "maybe"]


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["yes", "yes"], "more than one label"),
        (["yes"], "at least two"),
        ([], "at least two"),
        (["yes", ""], "empty or blank"),
        (["yes", "  "], "empty or blank"),
        (["yes", " no"], "surrounding whitespace"),
        ([True, False], "quote the word"),
        (["yes", None], "quote the word"),
        ([0, 1], "must be a string"),
        (["yes", "n" * 101], "at most 100"),
        ("yes", "must be a list"),
        (None, "must be a list"),
    ],
)
def test_bad_label_words_are_refused_with_the_reason(words, message):
    with pytest.raises(VerbalizerError, match=message):
        check_label_words(words, "field 'labels'")
