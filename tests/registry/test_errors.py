"""The registry's errors: one family, each also the builtin a generic handler would expect."""

from __future__ import annotations

import pytest

from softprompt.registry import errors


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (errors.InvalidNameError, ValueError),
        (errors.InvalidArtifactError, ValueError),
        (errors.NotFoundError, LookupError),
        (errors.AliasConflictError, errors.ConflictError),
        (errors.RegistryUnavailableError, ConnectionError),
        (errors.RegistryAccessError, PermissionError),
    ],
)
def test_errors_are_registry_errors_and_their_builtin(error, builtin):
    assert issubclass(error, errors.RegistryError) and issubclass(error, builtin)


def test_every_error_is_exported_by_the_package():
    import softprompt.registry

    names = [n for n in dir(errors) if n.endswith("Error")]
    assert len(names) == 10
    assert all(getattr(softprompt.registry, n) is getattr(errors, n) for n in names)
