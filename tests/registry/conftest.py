"""Fixtures shared by the registry tests: a registry URI on each backend (a local directory and
S3, a real SeaweedFS server), and handles on it that each get a cache folder of their own, so two
handles behave like two services on different machines."""

from __future__ import annotations

import itertools
import uuid

import pytest

from softprompt.registry import open_registry


@pytest.fixture(scope="module")
def bucket(s3_server):
    return s3_server.create_bucket()


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def uri(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "registry")
    request.getfixturevalue("s3_env")
    return f"s3://{request.getfixturevalue('bucket')}/{uuid.uuid4().hex[:12]}"


@pytest.fixture()
def new_reg(uri, tmp_path):
    """Opens another handle on the same registry, with its own cache."""
    counter = itertools.count()
    return lambda: open_registry(uri, cache_dir=tmp_path / f"cache{next(counter)}")
