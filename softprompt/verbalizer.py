"""A task's input template and label words, and the rules both follow wherever they come from.

The same rules hold for a task spec (softprompt.tasks), a registry manifest
(softprompt.registry.records) and the service that loads one (softprompt.serve.state), so a
template or a set of label words that one of them accepts never breaks another.

A template names its input fields in braces (`Review: {sentence}\\nSentiment:`). A dotted name
reaches into a nested row (`{target.span1_text}`). Positional fields, indexing, conversions
(`!r`) and format specs (`:d`, `:>100000000`) are refused, because a field is always rendered
as its plain text and a format spec can fail or allocate per request.

Label words are the classes a prompt ranks: at least two, each a non-empty string without
surrounding whitespace, all distinct. Two labels sharing one word would train a one-class task
whose accuracy is always 1.0.
"""

from __future__ import annotations

import string

MAX_LABEL_WORD_CHARS = 100  # every label word is scored for every request


class VerbalizerError(ValueError):
    """A template or label words that break the rules; the message names the field."""


def template_fields(template: object, what: str = "template") -> list[str]:
    """The field names `template` renders, in order (repeats kept); VerbalizerError otherwise."""
    if not isinstance(template, str):
        raise VerbalizerError(f"{what} must be a string, got {type(template).__name__}")
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as err:
        raise VerbalizerError(f"{what} does not parse ({err}): {template!r}") from err
    names = []
    for _literal, name, spec, conversion in parts:
        if name is None:
            continue
        if not name or name.isdigit():
            raise VerbalizerError(f"{what}: positional field {{{name}}} is not allowed; name it")
        if conversion is not None or spec:
            suffix = (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            raise VerbalizerError(
                f"{what}: field {{{name}{suffix}}} has a conversion or format spec; "
                "fields are rendered as plain text"
            )
        if "[" in name or "]" in name or any(not part for part in name.split(".")):
            raise VerbalizerError(
                f"{what}: field {{{name}}} must be a name or dotted names (no indexing)"
            )
        names.append(name)
    if not names:
        raise VerbalizerError(f"{what} names no input field: {template!r}")
    return names


def _word_hint(word: object) -> str:
    """Why a label word that is not a string might be one, for the error message."""
    if isinstance(word, bool):
        return " (YAML reads unquoted yes/no/true/false as booleans: quote the word)"
    if word is None:
        return " (YAML reads an empty value or null as nothing: quote the word)"
    return ""


def check_label_words(words: object, what: str = "label_words") -> list[str]:
    """`words` as a list when they follow the rules above; VerbalizerError otherwise."""
    if not isinstance(words, list | tuple):
        raise VerbalizerError(f"{what} must be a list of strings, got {type(words).__name__}")
    for word in words:
        if not isinstance(word, str):
            raise VerbalizerError(
                f"{what}: label word {word!r} must be a string, got {type(word).__name__}"
                + _word_hint(word)
            )
        if not word.strip():
            raise VerbalizerError(f"{what}: a label word is empty or blank ({word!r})")
        if word != word.strip():
            raise VerbalizerError(f"{what}: label word {word!r} has surrounding whitespace")
        if len(word) > MAX_LABEL_WORD_CHARS:
            raise VerbalizerError(
                f"{what}: label word of {len(word)} characters; at most {MAX_LABEL_WORD_CHARS}"
            )
    repeated = sorted({w for w in words if words.count(w) > 1})
    if repeated:
        raise VerbalizerError(
            f"{what}: label word(s) {repeated} name more than one label; each class needs its "
            "own word"
        )
    if len(words) < 2:
        raise VerbalizerError(f"{what}: {len(words)} label word(s); a task needs at least two")
    return list(words)
