"""The deployment files in deploy/ are valid, complete, and reference only what this repository has.

What is validated, and how:
- Core Kubernetes objects (ServiceAccount, Role, RoleBinding, ConfigMap, CronJob) strictly against the
  Kubernetes OpenAPI schemas shipped inside the `kubernetes-validate` package (offline, no cluster;
  strict mode rejects unknown fields).
- KubeRay objects (RayCluster, RayJob, and the RayJob template inside the nightly ConfigMap): their
  CRD schemas are not in the core schemas, so every pod template inside them (head and each worker
  group) is validated strictly as a core v1 PodTemplate, and the CRD-level fields are checked
  structurally here (known field names of ray.io/v1, types, and the fields issue 5 requires).
- The Ray cluster launcher config against Ray's own cluster-config schema (ray-schema.json, shipped in
  the installed ray package), via ``ray.autoscaler._private.util.validate_config``.
- Every `ddnm-batch` command line in the manifests, the Dockerfile and deploy/README.md is parsed by the
  real CLI parser (``jobs.cli.build_parser``); unknown flags fail; full entrypoints are also turned
  into a job spec (``JobSpec.build``) so bad values (unknown task or model) fail too.
"""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import pytest
import yaml

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERAY = DEPLOY / "kuberay"
LAUNCHER = DEPLOY / "launcher" / "cluster-aws.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
README = DEPLOY / "README.md"
K8S_VERSION = "1.33"
RUN_DATE = "20260102"  # what the nightly launcher substitutes for __RUN_DATE__

CORE_KINDS = {"ServiceAccount", "Role", "RoleBinding", "ConfigMap", "CronJob"}
RAY_KINDS = {"RayCluster", "RayJob"}
# Field names of the ray.io/v1 CRDs (KubeRay 1.4/1.5) this repository may use; a typo fails.
RAYJOB_SPEC_FIELDS = {
    "activeDeadlineSeconds", "backoffLimit", "clusterSelector", "deletionStrategy", "entrypoint",
    "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "jobId", "managedBy", "metadata",
    "preRunningDeadlineSeconds", "rayClusterSpec", "runtimeEnvYAML", "shutdownAfterJobFinishes",
    "submissionMode", "submitterConfig", "submitterPodTemplate", "suspend", "ttlSecondsAfterFinished",
}
RAYCLUSTER_SPEC_FIELDS = {
    "authOptions", "autoscalerOptions", "enableInTreeAutoscaling", "gcsFaultToleranceOptions",
    "headGroupSpec", "headServiceAnnotations", "managedBy", "networkPolicy", "rayVersion", "suspend",
    "upgradeStrategy", "workerGroupSpecs",
}
HEAD_GROUP_FIELDS = {"enableIngress", "headService", "rayStartParams", "serviceType", "template", "resources",
                     "labels"}
WORKER_GROUP_FIELDS = {"groupName", "idleTimeoutSeconds", "maxReplicas", "minReplicas", "numOfHosts",
                       "rayStartParams", "replicas", "scaleStrategy", "suspend", "template", "resources",
                       "labels"}
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
QUANTITY = re.compile(r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$")
SECRET_NAME = re.compile(r"(KEY|SECRET|TOKEN|PASSWORD|CREDENTIAL)", re.I)
EXTERNAL_IMAGES = {"alpine/k8s"}  # the nightly launcher's kubectl image, documented in deploy/README.md


# ----------------------------------------------------------------------------------------- loading

def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _k8s_files() -> list[Path]:
    return sorted(KUBERAY.glob("*.yaml"))


def _objects() -> list[tuple[str, dict]]:
    """(where, object) for every Kubernetes object, the nightly RayJob template included."""
    out = []
    for path in _k8s_files():
        for doc in _docs(path):
            out.append((path.name, doc))
            if doc.get("kind") == "ConfigMap":
                for key, text in doc.get("data", {}).items():
                    if key.endswith(".yaml"):
                        out.append((f"{path.name}:{key}", _template(text)))
    return out


def _template(text: str) -> dict:
    assert "__RUN_DATE__" in text, "the nightly template must be dated by the launcher"
    return yaml.safe_load(text.replace("__RUN_DATE__", RUN_DATE))


def _by_kind(kind: str) -> list[tuple[str, dict]]:
    return [(w, o) for w, o in _objects() if o.get("kind") == kind]


def _one(kind: str, name: str | None = None) -> dict:
    found = [o for _, o in _by_kind(kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _cluster_specs() -> list[tuple[str, dict]]:
    """Every RayCluster spec: the RayCluster's own and each RayJob's rayClusterSpec."""
    specs = [(w, o["spec"]) for w, o in _by_kind("RayCluster")]
    specs += [(w, o["spec"]["rayClusterSpec"]) for w, o in _by_kind("RayJob")]
    return specs


def _pod_templates(spec: dict) -> list[tuple[str, dict]]:
    out = [("head", spec["headGroupSpec"]["template"])]
    out += [(g["groupName"], g["template"]) for g in spec["workerGroupSpecs"]]
    return out


def _walk(value, path=()):
    """Yield (path, value) for every node of a parsed YAML tree."""
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk(v, (*path, i))


def _quantity(q) -> float:
    """A Kubernetes quantity ('8', '500m', '48Gi') as a float in base units."""
    s = str(q)
    m = QUANTITY.match(s)
    assert m, f"not a Kubernetes quantity: {q!r}"
    num, suffix = float(m.group(1)), m.group(2)
    mult = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20,
            "Gi": 2**30, "Ti": 2**40}
    assert suffix in mult, f"unexpected quantity suffix in {q!r}"
    return num * mult[suffix]


# ------------------------------------------------------------------------------------------ parsing

def test_every_yaml_parses_and_each_kubernetes_file_holds_one_object():
    files = [*_k8s_files(), LAUNCHER]
    assert len(files) >= 8
    for path in files:
        docs = _docs(path)
        assert docs, f"{path} is empty"
        assert all(isinstance(d, dict) for d in docs), path
    for path in _k8s_files():
        docs = _docs(path)
        assert len(docs) == 1, f"{path.name}: one concern per file, found {len(docs)} objects"
        d = docs[0]
        assert d.get("apiVersion") and d.get("kind") and d["metadata"].get("name"), path.name
        assert d["metadata"].get("namespace") == "ddnm", f"{path.name}: every object in namespace ddnm"
    kinds = {o["kind"] for _, o in _objects()}
    assert kinds == CORE_KINDS | RAY_KINDS


# ------------------------------------------------------------------------------- schema validation

def test_core_objects_validate_strictly_against_kubernetes_schemas():
    kv = pytest.importorskip("kubernetes_validate")
    validated = set()
    for _where, obj in _objects():
        if obj["kind"] in RAY_KINDS:
            continue
        kv.validate(obj, K8S_VERSION, strict=True)  # raises ValidationError naming the field
        validated.add(obj["kind"])
    assert validated == CORE_KINDS


def test_ray_pod_templates_validate_strictly_as_core_pod_templates():
    kv = pytest.importorskip("kubernetes_validate")
    count = 0
    for _where, spec in _cluster_specs():
        for group, template in _pod_templates(spec):
            wrapped = {"apiVersion": "v1", "kind": "PodTemplate",
                       "metadata": {"name": f"{group}", "namespace": "ddnm"}, "template": template}
            kv.validate(wrapped, K8S_VERSION, strict=True)
            count += 1
    assert count == 6  # head + gpu in the RayCluster, the RayJob and the nightly template


def test_the_validator_rejects_a_broken_object():
    kv = pytest.importorskip("kubernetes_validate")
    cron = copy.deepcopy(_one("CronJob"))
    cron["spec"]["concurrencyPolcy"] = cron["spec"].pop("concurrencyPolicy")
    with pytest.raises(kv.ValidationError, match="concurrencyPolcy"):
        kv.validate(cron, K8S_VERSION, strict=True)
    template = copy.deepcopy(_cluster_specs()[0][1]["workerGroupSpecs"][0]["template"])
    template["spec"]["containers"][0]["volumeMount"] = []
    with pytest.raises(kv.ValidationError, match="volumeMount"):
        kv.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "x"},
                     "template": template}, K8S_VERSION, strict=True)


def test_ray_custom_resources_use_only_known_fields_of_the_v1_crds():
    for where, obj in _by_kind("RayJob"):
        assert obj["apiVersion"] == "ray.io/v1", where
        assert set(obj["spec"]) <= RAYJOB_SPEC_FIELDS, f"{where}: {set(obj['spec']) - RAYJOB_SPEC_FIELDS}"
    for where, obj in _by_kind("RayCluster"):
        assert obj["apiVersion"] == "ray.io/v1", where
    for where, spec in _cluster_specs():
        assert set(spec) <= RAYCLUSTER_SPEC_FIELDS, f"{where}: {set(spec) - RAYCLUSTER_SPEC_FIELDS}"
        assert set(spec["headGroupSpec"]) <= HEAD_GROUP_FIELDS, where
        for g in spec["workerGroupSpecs"]:
            assert set(g) <= WORKER_GROUP_FIELDS, f"{where}: {set(g) - WORKER_GROUP_FIELDS}"
            for k in ("replicas", "minReplicas", "maxReplicas"):
                assert isinstance(g[k], int), f"{where}: {k} must be an integer"
        params = [spec["headGroupSpec"]["rayStartParams"]]
        params += [g["rayStartParams"] for g in spec["workerGroupSpecs"]]
        for p in params:  # KubeRay wants string values here
            assert all(isinstance(v, str) for v in p.values()), f"{where}: rayStartParams values are strings"


def test_resource_quantities_are_well_formed():
    for _where, obj in _objects():
        for path, value in _walk(obj):
            if len(path) >= 2 and path[-2] in ("requests", "limits"):
                _quantity(value)
            if path and path[-1] == "sizeLimit":
                _quantity(value)


# ---------------------------------------------------------------------------- what issue 5 requires

@pytest.mark.parametrize("where", [w for w, _ in _cluster_specs()])
def test_cluster_has_a_cpu_head_and_a_gpu_worker_group_sized_for_decoding(where):
    spec = dict(_cluster_specs())[where]
    assert spec["rayVersion"] == _ray_version()
    assert spec.get("authOptions", {}).get("mode") == "token", "Ray 2.60 token authentication"
    head = spec["headGroupSpec"]
    assert head["rayStartParams"].get("num-cpus") == "0", "no restoration work on the head"
    head_res = head["template"]["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in head_res.get("limits", {}) | head_res.get("requests", {})
    groups = [g for g in spec["workerGroupSpecs"] if _gpus(g["template"]) > 0]
    assert groups, f"{where}: no GPU worker group"
    for g in groups:
        assert _gpus(g["template"]) == 1, "one GPU per worker"
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], f"{where}: replica bounds"
        assert g["maxReplicas"] >= 2
        c = g["template"]["spec"]["containers"][0]
        for kind in ("requests", "limits"):
            assert _quantity(c["resources"][kind]["cpu"]) >= 4, "CPUs for decoding next to the GPU"
            assert _quantity(c["resources"][kind]["memory"]) >= 16 * 2**30
    for group, template in _pod_templates(spec):
        _assert_shm(template, where, group)


def _gpus(template: dict) -> int:
    res = template["spec"]["containers"][0]["resources"]
    lim, req = res.get("limits", {}).get("nvidia.com/gpu"), res.get("requests", {}).get("nvidia.com/gpu")
    if lim is None:
        return 0
    assert req is None or str(req) == str(lim), "GPU requests must equal limits"
    return int(lim)


def _assert_shm(template: dict, where: str, group: str) -> None:
    vols = {v["name"]: v for v in template["spec"].get("volumes", [])}
    mounts = {m["mountPath"]: m["name"] for m in template["spec"]["containers"][0].get("volumeMounts", [])}
    assert "/dev/shm" in mounts, f"{where}/{group}: /dev/shm not mounted"
    vol = vols[mounts["/dev/shm"]]
    assert vol.get("emptyDir", {}).get("medium") == "Memory", f"{where}/{group}: /dev/shm must be in memory"
    assert _quantity(vol["emptyDir"]["sizeLimit"]) >= 2**30


@pytest.mark.parametrize("where", [w for w, _ in _by_kind("RayJob")])
def test_rayjob_runs_ddnm_batch_and_cleans_up(where):
    job = dict(_by_kind("RayJob"))[where]["spec"]
    assert job["shutdownAfterJobFinishes"] is True
    assert isinstance(job["backoffLimit"], int) and job["backoffLimit"] >= 0
    assert isinstance(job["activeDeadlineSeconds"], int) and job["activeDeadlineSeconds"] > 0
    assert job["submissionMode"] in SUBMISSION_MODES
    assert job["jobId"], "a fixed submission id: Ray refuses a second submission with the same id"
    argv = shlex.split(job["entrypoint"])
    assert argv[:2] == ["ddnm-batch", "run"]
    assert argv[argv.index("--address") + 1] == "auto", "the driver must join the job's cluster"
    # with autoscaling from zero GPUs the driver cannot count GPUs: workers and GPUs are explicit
    assert "--workers" in argv and "--gpus-per-worker" in argv


def test_nightly_cronjob_creates_a_dated_incremental_rayjob_and_never_overlaps():
    cron = _one("CronJob")
    spec = cron["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert len(spec["schedule"].split()) == 5
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    script = " ".join(container.get("command", []) + container.get("args", []))
    assert "kubectl create" in script and "__RUN_DATE__" in script and "date -u" in script
    # the template comes from the ConfigMap, mounted where the script reads it
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    cm_volume = next(n for n, v in volumes.items() if "configMap" in v)
    cm = _one("ConfigMap", volumes[cm_volume]["configMap"]["name"])
    (key,) = [k for k in cm["data"] if k.endswith(".yaml")]
    assert f"{mounts[cm_volume]}/{key}" in script
    nightly = _template(cm["data"][key])
    assert nightly["kind"] == "RayJob"
    assert nightly["metadata"]["name"] == f"ddnm-nightly-{RUN_DATE}"
    assert nightly["spec"]["jobId"] == f"ddnm-nightly-{RUN_DATE}"
    assert "--incremental" in shlex.split(nightly["spec"]["entrypoint"])
    # the launcher waits for the RayJob, and outlives it, so Forbid really prevents overlap
    assert "jobDeploymentStatus" in script
    assert spec["jobTemplate"]["spec"]["activeDeadlineSeconds"] > nightly["spec"]["activeDeadlineSeconds"]
    assert spec["jobTemplate"]["spec"]["activeDeadlineSeconds"] < 24 * 3600


def test_nightly_launcher_has_exactly_the_rbac_it_needs():
    cron = _one("CronJob")
    sa_name = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["serviceAccountName"]
    _one("ServiceAccount", sa_name)
    bindings = [o for _, o in _by_kind("RoleBinding")
                if any(s["kind"] == "ServiceAccount" and s["name"] == sa_name for s in o["subjects"])]
    assert len(bindings) == 1
    role = _one("Role", bindings[0]["roleRef"]["name"])
    assert bindings[0]["roleRef"]["kind"] == "Role"
    (rule,) = role["rules"]
    assert rule["apiGroups"] == ["ray.io"] and rule["resources"] == ["rayjobs"]
    assert {"create", "get"} <= set(rule["verbs"]) and "delete" not in rule["verbs"]


def test_credentials_come_only_from_the_platform():
    for where, obj in _objects():
        assert obj["kind"] != "Secret", f"{where}: no Secret objects in the repository"
        for path, value in _walk(obj):
            if isinstance(value, str):
                assert not re.search(r"AKIA[0-9A-Z]{16}", value), f"{where}: an AWS access key id"
                assert "aws_secret_access_key" not in value.lower(), where
            if path and path[-1] == "env" and isinstance(value, list):
                for e in value:
                    if SECRET_NAME.search(e["name"]):
                        assert "value" not in e and "secretKeyRef" in e.get("valueFrom", {}), (
                            f"{where}: {e['name']} must come from a secretKeyRef")
    # every Ray pod runs as the workload-identity service account
    sa = _one("ServiceAccount", "ddnm-batch")
    ann = sa["metadata"].get("annotations", {})
    assert "eks.amazonaws.com/role-arn" in ann or "iam.gke.io/gcp-service-account" in ann
    for where, spec in _cluster_specs():
        for group, template in _pod_templates(spec):
            assert template["spec"]["serviceAccountName"] == "ddnm-batch", f"{where}/{group}"
    text = DOCKERFILE.read_text()
    assert not re.search(r"^\s*(ENV|ARG)\s+\S*(KEY|SECRET|TOKEN|PASSWORD)", text, re.M | re.I)
    launcher = LAUNCHER.read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}|aws_secret_access_key", launcher, re.I)


def test_checkpoints_are_mounted_or_fetched_at_start_never_baked():
    """Every job's local --checkpoint is provided in each GPU worker by a volume: a read-only PVC, or an
    emptyDir that an init container fills from object storage."""
    jobs = [(w, o["spec"]) for w, o in _by_kind("RayJob")]
    assert jobs
    for where, job in jobs:
        argv = shlex.split(job["entrypoint"])
        ckpt = argv[argv.index("--checkpoint") + 1]
        assert ckpt.startswith("/models/"), f"{where}: the checkpoint is a file under /models"
        for g in job["rayClusterSpec"]["workerGroupSpecs"]:
            _assert_provides(g["template"]["spec"], ckpt, f"{where}/{g['groupName']}")
    # the long-lived cluster mounts a read-only volume at /models for the same use
    spec = _one("RayCluster")["spec"]
    for g in spec["workerGroupSpecs"]:
        pod = g["template"]["spec"]
        mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
        assert mounts["/models"].get("readOnly") is True
        vol = next(v for v in pod["volumes"] if v["name"] == mounts["/models"]["name"])
        assert "persistentVolumeClaim" in vol


def _assert_provides(pod: dict, ckpt: str, where: str) -> None:
    folder = str(Path(ckpt).parent)
    mounts = {m["mountPath"]: m for m in pod["containers"][0].get("volumeMounts", [])}
    assert folder in mounts, f"{where}: nothing mounted at {folder}"
    assert mounts[folder].get("readOnly") is True, f"{where}: the worker mounts checkpoints read-only"
    vol = next(v for v in pod["volumes"] if v["name"] == mounts[folder]["name"])
    if "persistentVolumeClaim" in vol:
        return
    assert "emptyDir" in vol, f"{where}: checkpoints come from a PVC or a fetched emptyDir"
    fetchers = [c for c in pod.get("initContainers", [])
                if any(m["name"] == vol["name"] for m in c.get("volumeMounts", []))]
    assert len(fetchers) == 1, f"{where}: one init container fills {folder}"
    src, dst = fetchers[0]["args"]
    assert dst == ckpt and re.match(r"^(s3|gs)://", src), f"{where}: fetch {src} -> {dst}"


def test_the_checkpoint_fetch_command_really_copies(tmp_path):
    """Run the init container's command here, on a file:// URL instead of s3:// (fsspec either way)."""
    import subprocess
    import sys

    job = _one("RayJob", "ddnm-eval-imagenet-sr4")["spec"]
    (fetch,) = job["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["initContainers"]
    assert fetch["command"][0] == "python"
    src = tmp_path / "bucket" / "ckpt.pt"
    src.parent.mkdir()
    src.write_bytes(bytes(range(256)) * 1000)
    dst = tmp_path / "models" / "ckpt.pt"
    dst.parent.mkdir()
    subprocess.run([sys.executable, *fetch["command"][1:], src.as_uri(), str(dst)], check=True, timeout=120)
    assert dst.read_bytes() == src.read_bytes()


# -------------------------------------------------------------------- images, commands and flags

def _ray_version() -> str:
    import ray

    return ray.__version__


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_builds_from_this_repository_without_checkpoints():
    ins = _dockerfile_instructions()
    args = [v.split("=", 1)[1] for k, v in ins if k == "ARG" and v.startswith("RAY_IMAGE=")]
    assert len(args) == 1, "the base image is one ARG (RAY_IMAGE)"
    assert ("FROM", "${RAY_IMAGE}") in ins
    image = args[0]
    assert re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py311-gpu", image), image
    assert image.split(":")[1].split("-")[0] == _ray_version(), "image Ray == the Ray the package runs"
    copies = [v for k, v in ins if k in ("COPY", "ADD")]
    assert copies
    for c in copies:
        parts = [p for p in c.split() if not p.startswith("--")]
        for src in parts[:-1]:
            assert (ROOT / src).exists(), f"COPY source {src} is not in the repository"
            assert not re.search(r"\.(pt|ckpt|pth|safetensors|bin)$|checkpoint", src), "no checkpoints"
    runs = " ".join(v for k, v in ins if k == "RUN")
    assert not re.search(r"(wget|curl)\s", runs), "nothing downloaded at build time but packages"
    assert "torch==" in runs, "a pinned torch"
    cmd = next(v for k, v in ins if k == "CMD")
    assert cmd.startswith("[") and "ddnm-batch" in cmd
    assert not [k for k, _ in ins if k == "ENTRYPOINT"], "KubeRay replaces the command; no ENTRYPOINT"
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert ".venv" in ignore and ".git" in ignore


def test_the_ddnm_batch_command_exists():
    scripts = _project()["scripts"]
    assert scripts["ddnm-batch"] == "jobs.cli:main"
    from jobs import cli

    assert callable(cli.main)


def test_every_image_is_ours_or_a_pinned_external_one():
    version = _project()["version"]
    images = [v for where, obj in _objects() for p, v in _walk(obj) if p and p[-1] == "image"]
    launcher = yaml.safe_load(LAUNCHER.read_text())
    images.append(launcher["docker"]["image"])
    assert len(images) >= 8
    for image in images:
        name, _, tag = image.rpartition(":")
        assert tag and tag != "latest", f"{image}: pin the tag"
        if name.split("/")[-1] == "ddnm-batch":
            assert tag == version, f"{image}: tag must be the package version {version} (deploy/Dockerfile)"
        else:
            assert name in EXTERNAL_IMAGES, f"{image}: not ours nor a listed external image"


def _commands() -> list[tuple[str, list[str]]]:
    """(where, argv) for each `ddnm-batch ...` command line in deploy/."""
    out = []
    for where, obj in _by_kind("RayJob"):
        out.append((where, shlex.split(obj["spec"]["entrypoint"])))
    for k, v in _dockerfile_instructions():
        if k == "CMD":
            import json

            out.append(("Dockerfile CMD", json.loads(v)))
    return out


def _readme_commands() -> list[tuple[str, list[str]]]:
    """`ddnm-batch` lines inside deploy/README.md's code blocks (continuations joined, placeholders kept)."""
    text = README.read_text()
    out = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        block = re.sub(r"\\\n\s*", " ", block)
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            m = re.search(r"(^|\s--\s)(ddnm-batch\s.*)$", line)  # a command, not a name inside one
            if m:
                out.append(("deploy/README.md", shlex.split(m.group(2))))
    return out


def _check_flags(argv: list[str], where: str):
    from jobs.cli import build_parser

    assert argv[0] == "ddnm-batch", where
    parser = build_parser()
    try:
        ns, unknown = parser.parse_known_args(argv[1:])
    except SystemExit as exc:  # argparse rejected a value or a missing argument
        raise AssertionError(f"{where}: the CLI rejects {argv[1:]}") from exc
    assert not unknown, f"{where}: flags the CLI does not know: {unknown}"
    return ns


def test_every_ddnm_batch_command_uses_only_real_cli_flags():
    commands = _commands() + _readme_commands()
    assert len(commands) >= 4
    for where, argv in commands:
        if argv[1:] == ["--help"]:
            continue
        _check_flags(argv, where)


def test_full_entrypoints_make_valid_job_specs():
    from jobs import cli
    from jobs.spec import JobSpec

    for where, argv in _commands():
        if argv[1:2] != ["run"]:
            continue
        ns = _check_flags(argv, where)
        spec = JobSpec.build(ns.job, **{k: getattr(ns, k) for k in cli._RUN_FLAGS})
        assert spec.model in ("adm-256-uncond", "ddpm-celebahq-256", "adm-ffhq-256", "adm-256-cond")
        assert spec.checkpoint and spec.checkpoint != "random", f"{where}: a real checkpoint"


def test_the_flag_check_catches_an_unknown_flag():
    with pytest.raises(AssertionError, match="--no-such-flag"):
        _check_flags(["ddnm-batch", "run", "--input", "a", "--no-such-flag", "1"], "test")
    with pytest.raises(AssertionError, match="rejects"):
        _check_flags(["ddnm-batch", "run", "--mode", "sideways"], "test")


# --------------------------------------------------------------------------------- cluster launcher

def test_launcher_config_validates_against_rays_schema_and_has_gpu_autoscaling():
    from ray.autoscaler._private.util import validate_config

    config = yaml.safe_load(LAUNCHER.read_text())
    validate_config(config)  # ray-schema.json from the installed ray; raises on unknown fields
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "no restoration work on the head"
    gpu = [t for n, t in types.items() if t.get("resources", {}).get("GPU", 0) >= 1]
    assert len(gpu) == 1
    assert 0 <= gpu[0]["min_workers"] <= gpu[0]["max_workers"] <= config["max_workers"]
    assert gpu[0]["node_config"]["InstanceType"].split(".")[0] in ("p5en", "p5", "p4d", "g5", "g6e", "g6")
    assert "IamInstanceProfile" in gpu[0]["node_config"], "S3 access from the instance profile"
    starts = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=0.0.0.0" not in starts, "the dashboard stays on loopback (use ray dashboard)"
