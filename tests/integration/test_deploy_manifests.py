"""The deployment files in deploy/ are valid, complete, and reference only what this repository has.

What is validated, and how:
- Core Kubernetes objects (ServiceAccount, Role, RoleBinding, ConfigMap, CronJob) strictly against the
  Kubernetes OpenAPI schemas shipped inside the `kubernetes-validate` package (offline, no cluster;
  strict mode rejects unknown fields).
- KubeRay objects (RayCluster, RayJob, and the RayJob template inside the nightly ConfigMap): their
  CRD schemas are not in the core schemas, so every pod template inside them (head, each worker group,
  the RayJob submitter) is validated strictly as a core v1 PodTemplate, and the CRD-level fields are
  checked here against the field names of the ray.io/v1 CRDs of KubeRay 1.6.0, the version
  deploy/README.md requires (types, enums, and the fields issue 5 requires).
- Every pod, including the containers KubeRay adds (autoscaler sidecar, submitter), meets the
  "restricted" Pod Security Standard.
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
# The KubeRay operator deploy/README.md requires, and the field names of its ray.io/v1 CRDs
# (ray-operator/config/crd/bases at tag v1.6.0); a typo, or a field of a later KubeRay, fails.
KUBERAY_VERSION = "1.6.0"
RAYJOB_SPEC_FIELDS = {
    "activeDeadlineSeconds", "backoffLimit", "clusterSelector", "deletionStrategy", "entrypoint",
    "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "jobId", "managedBy", "metadata",
    "preRunningDeadlineSeconds", "rayClusterSpec", "runtimeEnvYAML", "shutdownAfterJobFinishes",
    "submissionMode", "submitterConfig", "submitterPodTemplate", "suspend", "ttlSecondsAfterFinished",
}
RAYCLUSTER_SPEC_FIELDS = {
    "authOptions", "autoscalerOptions", "enableInTreeAutoscaling", "gcsFaultToleranceOptions",
    "headGroupSpec", "headServiceAnnotations", "managedBy", "rayVersion", "suspend", "upgradeStrategy",
    "workerGroupSpecs",
}
HEAD_GROUP_FIELDS = {"enableIngress", "headService", "rayStartParams", "serviceType", "template", "resources",
                     "labels"}
WORKER_GROUP_FIELDS = {"groupName", "idleTimeoutSeconds", "maxReplicas", "minReplicas", "numOfHosts",
                       "rayStartParams", "replicas", "scaleStrategy", "suspend", "template", "resources",
                       "labels"}
AUTH_OPTIONS_FIELDS = {"enableK8sTokenAuth", "mode", "secretName"}
AUTOSCALER_OPTIONS_FIELDS = {"env", "envFrom", "idleTimeoutSeconds", "image", "imagePullPolicy", "resources",
                             "securityContext", "upscalingMode", "version", "volumeMounts"}
SUBMITTER_CONFIG_FIELDS = {"backoffLimit"}
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"}
# Fields used here that older operators lack: KubeRay 1.5 rejects them under strict kubectl validation,
# and tools that do not validate silently drop them (token authentication included).
KUBERAY_FIELD_SINCE = {"preRunningDeadlineSeconds": "1.6.0", "authOptions": "1.5.1"}
# The "restricted" Pod Security Standard allows only these volume types.
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                           "persistentVolumeClaim", "projected", "secret"}
RAY_UID = 1000  # user `ray` in Ray's images (deploy/Dockerfile's base); its name alone cannot be checked
# How long KubeRay may take between two attempts of a RayJob (deleting the cluster and submitter,
# creating the next ones) and, after the launcher gives up, how long its last delete may take.
RETRY_GAP_SECONDS = 1800
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
    templates = [t for _, spec in _cluster_specs() for t in _pod_templates(spec)]
    templates += [("submitter", o["spec"]["submitterPodTemplate"]) for _, o in _by_kind("RayJob")]
    for group, template in templates:
        wrapped = {"apiVersion": "v1", "kind": "PodTemplate",
                   "metadata": {"name": f"{group}", "namespace": "ddnm"}, "template": template}
        kv.validate(wrapped, K8S_VERSION, strict=True)
        count += 1
    # head + gpu in the RayCluster, the RayJob and the nightly template; both RayJobs' submitters
    assert count == 8


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


def test_ray_custom_resources_use_only_fields_of_the_stated_kuberay_version():
    for where, obj in _by_kind("RayJob"):
        assert obj["apiVersion"] == "ray.io/v1", where
        assert set(obj["spec"]) <= RAYJOB_SPEC_FIELDS, f"{where}: {set(obj['spec']) - RAYJOB_SPEC_FIELDS}"
        assert set(obj["spec"].get("submitterConfig", {})) <= SUBMITTER_CONFIG_FIELDS, where
        for key in ("activeDeadlineSeconds", "preRunningDeadlineSeconds", "ttlSecondsAfterFinished"):
            value = obj["spec"].get(key, 1)
            assert isinstance(value, int) and value >= 1, f"{where}: {key} is a positive integer"
    for where, obj in _by_kind("RayCluster"):
        assert obj["apiVersion"] == "ray.io/v1", where
    for where, spec in _cluster_specs():
        assert set(spec) <= RAYCLUSTER_SPEC_FIELDS, f"{where}: {set(spec) - RAYCLUSTER_SPEC_FIELDS}"
        auth = spec.get("authOptions", {})
        assert set(auth) <= AUTH_OPTIONS_FIELDS and auth.get("mode", "token") in ("disabled", "token"), where
        autoscaler = spec.get("autoscalerOptions", {})
        unknown = set(autoscaler) - AUTOSCALER_OPTIONS_FIELDS
        assert not unknown, f"{where}: autoscalerOptions {unknown}"
        assert autoscaler.get("upscalingMode", "Default") in ("Default", "Aggressive", "Conservative"), where
        assert set(spec["headGroupSpec"]) <= HEAD_GROUP_FIELDS, where
        for g in spec["workerGroupSpecs"]:
            assert set(g) <= WORKER_GROUP_FIELDS, f"{where}: {set(g) - WORKER_GROUP_FIELDS}"
            for k in ("replicas", "minReplicas", "maxReplicas"):
                assert isinstance(g[k], int), f"{where}: {k} must be an integer"
        params = [spec["headGroupSpec"]["rayStartParams"]]
        params += [g["rayStartParams"] for g in spec["workerGroupSpecs"]]
        for p in params:  # KubeRay wants string values here
            assert all(isinstance(v, str) for v in p.values()), f"{where}: rayStartParams values are strings"


def test_readme_states_the_kuberay_and_ray_versions_the_fields_need():
    text = README.read_text()
    assert f"KubeRay {KUBERAY_VERSION}" in text, "deploy/README.md must state the KubeRay version"
    assert f"Ray {_ray_version()}" in text, "deploy/README.md must state the Ray version"
    used = {key for _, obj in _by_kind("RayJob") for key in obj["spec"]}
    used |= {key for _, spec in _cluster_specs() for key in spec}
    version = tuple(int(x) for x in KUBERAY_VERSION.split("."))
    for field, since in KUBERAY_FIELD_SINCE.items():
        if field in used:
            assert tuple(int(x) for x in since.split(".")) <= version, f"{field} needs KubeRay {since}"


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
    # the template comes from the ConfigMap, mounted where the script reads it ($TEMPLATE)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    cm_volume = next(n for n, v in volumes.items() if "configMap" in v)
    cm = _one("ConfigMap", volumes[cm_volume]["configMap"]["name"])
    (key,) = [k for k in cm["data"] if k.endswith(".yaml")]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TEMPLATE"] == f"{mounts[cm_volume]}/{key}" and '"$TEMPLATE"' in script
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
    # create the night, read it, list earlier nights, delete finished or abandoned ones; nothing more
    assert sorted(rule["verbs"]) == ["create", "delete", "get", "list"]
    script = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"][0]
    uses = {"create": "kubectl create", "get": "k get rayjob ", "list": "k get rayjobs", "delete": "k delete"}
    for verb in rule["verbs"]:
        assert uses[verb] in script, f"the launcher never uses {verb}"


def test_the_nightly_rayjobs_whole_run_ends_before_the_launcher_gives_up():
    """KubeRay restarts activeDeadlineSeconds with each attempt: all attempts together must end before
    the launcher gives up, and the launcher (and its last delete) before its Job's deadline."""
    job = _one("CronJob")["spec"]["jobTemplate"]["spec"]
    env = {e["name"]: e.get("value") for e in job["template"]["spec"]["containers"][0]["env"]}
    give_up = int(env["GIVE_UP_SECONDS"])
    nightly = _one("RayJob", f"ddnm-nightly-{RUN_DATE}")["spec"]
    retries = nightly["backoffLimit"]
    per_attempt = nightly["activeDeadlineSeconds"]
    assert nightly["preRunningDeadlineSeconds"] < per_attempt, "both clocks start with the attempt"
    whole_run = (retries + 1) * per_attempt + retries * RETRY_GAP_SECONDS
    assert whole_run < give_up, f"the RayJob may run {whole_run} s, the launcher gives up after {give_up} s"
    last_delete = int(env["API_TRIES"]) * int(env["RETRY_SECONDS"]) + int(env["POLL_SECONDS"])
    assert give_up + last_delete + RETRY_GAP_SECONDS <= job["activeDeadlineSeconds"] < 24 * 3600
    assert job["backoffLimit"] == 0, "a retried launcher would outlive the night"


def _all_pod_specs() -> list[tuple[str, dict]]:
    """Every pod spec that will exist, with the containers KubeRay adds that carry our settings: the
    autoscaler sidecar in the head pod (autoscalerOptions.securityContext) and the RayJob submitter."""
    pods = []
    for where, spec in _cluster_specs():
        for group, template in _pod_templates(spec):
            pod = copy.deepcopy(template["spec"])
            if group == "head" and spec.get("enableInTreeAutoscaling"):
                sidecar = {"name": "autoscaler", **{k: v for k, v in spec["autoscalerOptions"].items()
                                                    if k == "securityContext"}}
                pod["containers"].append(sidecar)
            pods.append((f"{where}/{group}", pod))
    pods += [(f"{w}/submitter", o["spec"]["submitterPodTemplate"]["spec"]) for w, o in _by_kind("RayJob")]
    pods.append(("cronjob-nightly.yaml", _one("CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]))
    return pods


def _assert_restricted(pod: dict, where: str) -> None:
    """The "restricted" Pod Security Standard (its baseline and restricted controls) for one pod spec."""
    assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), f"{where}: host namespaces"
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        assert kinds <= RESTRICTED_VOLUME_TYPES, f"{where}: volume {volume['name']} is {kinds}"
    pod_sc = pod.get("securityContext", {})
    for c in pod["containers"] + pod.get("initContainers", []):
        sc, at = c.get("securityContext", {}), f"{where}/{c['name']}"
        assert sc.get("privileged") is not True, f"{at}: privileged"
        assert sc.get("allowPrivilegeEscalation") is False, f"{at}: allowPrivilegeEscalation must be false"
        caps = sc.get("capabilities", {})
        assert "ALL" in caps.get("drop", []), f"{at}: capabilities must drop ALL"
        assert set(caps.get("add", [])) <= {"NET_BIND_SERVICE"}, f"{at}: added capabilities"
        assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, f"{at}: runAsNonRoot"
        uid = sc.get("runAsUser", pod_sc.get("runAsUser"))
        assert isinstance(uid, int) and uid > 0, f"{at}: a numeric non-root runAsUser"
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
        assert seccomp.get("type") in ("RuntimeDefault", "Localhost"), f"{at}: seccompProfile"
        for port in c.get("ports", []):
            assert "hostPort" not in port, f"{at}: hostPort"


def test_every_pod_meets_the_restricted_pod_security_standard():
    pods = _all_pod_specs()
    assert len(pods) == 9  # 6 Ray pods, 2 submitters, the nightly launcher
    for where, pod in pods:
        _assert_restricted(pod, where)
        if any(c["image"].split(":")[0].endswith("/ddnm-batch") for c in pod["containers"] if "image" in c):
            assert pod["securityContext"]["runAsUser"] == RAY_UID, f"{where}: run as the image's user ray"


def test_the_restricted_check_catches_a_missing_field():
    where, pod = _all_pod_specs()[0]
    for path in (("securityContext", "seccompProfile"), ("securityContext", "runAsNonRoot")):
        broken = copy.deepcopy(pod)
        del broken[path[0]][path[1]]
        with pytest.raises(AssertionError, match=path[1]):
            _assert_restricted(broken, where)
    broken = copy.deepcopy(pod)
    broken["containers"][0]["securityContext"]["capabilities"] = {}
    with pytest.raises(AssertionError, match="drop ALL"):
        _assert_restricted(broken, where)
    broken = copy.deepcopy(pod)
    broken["containers"][-1].pop("securityContext")  # e.g. the autoscaler sidecar without its settings
    with pytest.raises(AssertionError, match="allowPrivilegeEscalation"):
        _assert_restricted(broken, where)


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
    m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py311-(cu12\d)", image)
    assert m, f"{image}: Ray's image pinned by its CUDA tag, not the moving -gpu alias"
    assert m.group(1) == _ray_version(), "image Ray == the Ray the package runs"
    # torch from PyTorch's index for the same CUDA as the base image (PyPI's torch is a CUDA 13 build)
    (index,) = [v.split("=", 1)[1] for k, v in ins if k == "ARG" and v.startswith("TORCH_INDEX=")]
    assert index == f"https://download.pytorch.org/whl/{m.group(2)}", index
    copies = [v for k, v in ins if k in ("COPY", "ADD")]
    assert copies
    for c in copies:
        parts = [p for p in c.split() if not p.startswith("--")]
        for src in parts[:-1]:
            assert (ROOT / src).exists(), f"COPY source {src} is not in the repository"
            assert not re.search(r"\.(pt|ckpt|pth|safetensors|bin)$|checkpoint", src), "no checkpoints"
    runs = " ".join(v for k, v in ins if k == "RUN")
    assert not re.search(r"(wget|curl)\s", runs), "nothing downloaded at build time but packages"
    assert '--index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}"' in runs, "a pinned torch, CUDA index"
    assert "torch.version.cuda" in runs and "CUDA_VERSION" in runs, "the build checks torch's CUDA"
    cmd = next(v for k, v in ins if k == "CMD")
    assert cmd.startswith("[") and "ddnm-batch" in cmd
    assert not [k for k, _ in ins if k == "ENTRYPOINT"], "KubeRay replaces the command; no ENTRYPOINT"
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert ".venv" in ignore and ".git" in ignore
    assert [v for k, v in ins if k == "USER"][-1] == "ray", "the image runs as ray (uid 1000)"


def test_dockerfile_installs_dependencies_in_a_layer_before_the_code():
    ins = _dockerfile_instructions()
    code = min(i for i, (k, v) in enumerate(ins) if k == "COPY" and re.search(r"\b(ddnm|cluster|jobs)\b", v))
    pyproject = next(i for i, (k, v) in enumerate(ins) if k == "COPY" and "pyproject.toml" in v)
    deps = next(i for i, (k, v) in enumerate(ins) if k == "RUN" and "pip install -r" in v)
    assert pyproject < deps < code, "copy pyproject.toml, install the dependencies, then copy the code"
    assert ins[pyproject][1].split()[1:-1] == ["pyproject.toml"], "only pyproject.toml before the deps"
    assert "'dependencies'" in ins[deps][1], "the dependencies come from pyproject.toml"
    after = [v for k, v in ins[code:] if k == "RUN" and "pip install" in v]
    assert after and all("--no-deps" in v for v in after), "installing the code must not reinstall deps"


def test_dockerfile_sets_no_unused_environment_variables():
    """Each ENV is read by the code, or is a setting of Python or pip."""
    names = []
    for k, v in _dockerfile_instructions():
        if k == "ENV":
            names += re.findall(r"(\w+)=", v)
    assert names
    code = " ".join(p.read_text() for d in ("ddnm", "cluster", "jobs") for p in (ROOT / d).rglob("*.py"))
    for name in names:
        assert name.startswith(("PYTHON", "PIP_")) or name in code, f"ENV {name} is set but never read"


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
        spec = JobSpec.build(ns.job, **cli.spec_flags(ns))
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
