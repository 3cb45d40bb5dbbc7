"""A throwaway task catalogue as a team keeps one: a git repository with DVC, whose remote is a
bucket on the real SeaweedFS S3 server (tests/s3server.py).

    cat = DvcCatalogue(tmp_path / "catalogue", s3_server)
    sha = cat.add_task("alpha")            # spec + data, `dvc add`, `dvc push`, git commit
    cat.version("alpha")                   # the DVC hash in data/alpha.dvc

Every command runs as a person would run it (`dvc`, `git` from the test environment), with the
AWS variables of the S3 server and nothing else from the caller's environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

BIN = Path(sys.executable).parent


def toy_rows(name: str, n: int, seed: int) -> list[dict]:
    from conftest import _toy_rows

    return _toy_rows(n, seed + sum(map(ord, name)))


class DvcCatalogue:
    """tasks/<name>.yaml (git) and data/<name>/ (DVC, pushed to an S3 bucket)."""

    def __init__(self, root: Path, s3_server, bucket: str | None = None) -> None:
        self.root = root
        self.s3 = s3_server
        self.bucket = bucket or s3_server.create_bucket()
        self.remote = f"s3://{self.bucket}/dvc"
        root.mkdir(parents=True)
        (root / "tasks").mkdir()
        (root / "data").mkdir()
        self.git("init", "-q", "-b", "main")
        self.run("dvc", "init", "-q")
        self.run("dvc", "remote", "add", "-d", "storage", self.remote)
        self.run("dvc", "config", "core.analytics", "false")
        self.git("add", "-A")
        self.git("commit", "-q", "-m", "empty catalogue")

    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SOFTPROMPT_"))}
        # dvc-s3 reads AWS_CONFIG_FILE itself and rejects /dev/null (not a regular file).
        empty = self.root.parent / "aws-config-empty"
        empty.touch()
        env.update(self.s3.env(), AWS_CONFIG_FILE=str(empty),
                   AWS_SHARED_CREDENTIALS_FILE=str(empty),
                   PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
                   DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="t@example.com",
                   GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="t@example.com")
        return env

    def run(self, *cmd: str) -> str:
        exe = str(BIN / "dvc") if cmd[0] == "dvc" else cmd[0]
        proc = subprocess.run([exe, *cmd[1:]], cwd=self.root, env=self.env(), capture_output=True,
                              text=True)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{output}"
        return output

    def git(self, *args: str) -> str:
        return self.run("git", *args)

    def head(self) -> str:
        return self.git("rev-parse", "HEAD").strip()

    def write_task(self, name: str, n_train: int = 24, spec_overrides: dict | None = None) -> None:
        """The toy sentiment task `name`: its spec and its data folder (not yet tracked)."""
        from conftest import TOY_SPEC

        folder = self.root / "data" / name
        folder.mkdir(parents=True, exist_ok=True)
        for split, (n, seed) in {"train": (n_train, 1), "dev": (8, 2), "test": (8, 3)}.items():
            rows = toy_rows(name, n, seed)
            (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        spec = TOY_SPEC | {"name": name, "splits": {s: f"{name}/{s}.jsonl"
                                                    for s in ("train", "dev", "test")}}
        spec |= spec_overrides or {}
        (self.root / "tasks" / f"{name}.yaml").write_text(yaml.safe_dump(spec))

    def add_task(self, name: str, **kwargs) -> str:
        """Writes the task, then `dvc add`, `dvc push` and a git commit; returns the commit."""
        self.write_task(name, **kwargs)
        self.run("dvc", "add", "-q", f"data/{name}")
        self.run("dvc", "push")
        self.git("add", "-A")
        self.git("commit", "-q", "-m", f"task {name}")
        return self.head()

    def version(self, name: str) -> str:
        """The DVC hash that data/<name>.dvc records."""
        record = yaml.safe_load((self.root / "data" / f"{name}.dvc").read_text())
        return record["outs"][0]["md5"]

    def object_key(self, md5: str) -> str:
        """The S3 key of a content-addressed object in the remote (DVC 3 layout)."""
        return f"dvc/files/md5/{md5[:2]}/{md5[2:]}"

    def file_objects(self, name: str) -> list[str]:
        """The S3 keys of the files of data/<name>/ (not of its .dir listing)."""
        client = self.s3.client()
        listing = client.get_object(Bucket=self.bucket, Key=self.object_key(self.version(name)))
        return [self.object_key(entry["md5"]) for entry in json.loads(listing["Body"].read())]
