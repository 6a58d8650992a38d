"""The nightly launcher script, exactly as cronjob-nightly.yaml deploys it, run against a stand-in kubectl.

The stand-in (a bash script first on PATH) fails the first call of each kind (`get rayjob`, `get
rayjobs`, `create`, `delete`), as an API server blip would, and answers `get rayjob NAME` from a list of
"jobDeploymentStatus,jobStatus" lines, one per call, the last one repeated; a line ERROR fails that call.
It records every call. Sleeps are set to 0 s, the give-up time to a few seconds.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "deploy" / "kuberay"

FAKE_KUBECTL = r"""#!/usr/bin/env bash
# Stand-in for kubectl. State lives in $FAKE_DIR: calls (one line per call), exists (the night's
# RayJob is there), states (its status, one line per get), deleted, created.yaml, nights (the list).
set -u
d="$FAKE_DIR"
echo "$*" >> "$d/calls"
key="$1-$2"
if [ ! -e "$d/blip-$key" ]; then
  touch "$d/blip-$key"
  echo "Unable to connect to the server: EOF" >&2
  exit 1
fi
case "$1 $2" in
  "get rayjobs")
    cat "$d/nights" 2>/dev/null || true ;;
  "get rayjob")
    echo "$3" > "$d/name"
    [ -e "$d/exists" ] || exit 0
    line="$(head -n 1 "$d/states")"
    if [ "$(wc -l < "$d/states")" -gt 1 ]; then sed -i 1d "$d/states"; fi
    if [ "$line" = ERROR ]; then echo "Error from server: etcdserver: request timed out" >&2; exit 1; fi
    printf '%s,%s' "$3" "$line" ;;
  "create -n")
    cp "${@: -1}" "$d/created.yaml"
    touch "$d/exists"
    echo "rayjob.ray.io/created created" ;;
  "delete rayjob")
    echo "$3" >> "$d/deleted"
    if [ "$3" = "$(cat "$d/name" 2>/dev/null)" ]; then rm -f "$d/exists"; fi ;;
  *)
    echo "stand-in kubectl: unexpected call: $*" >&2
    exit 2 ;;
esac
"""


def _cronjob() -> dict:
    return yaml.safe_load((KUBERAY / "cronjob-nightly.yaml").read_text())


def _launcher() -> dict:
    return _cronjob()["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]


def _template_text() -> str:
    cm = yaml.safe_load((KUBERAY / "configmap-nightly-rayjob.yaml").read_text())
    return cm["data"]["rayjob.yaml"]


def _today() -> str:
    return time.strftime("%Y%m%d", time.gmtime())


class Launcher:
    """The deployed command and its environment, with kubectl replaced and the clock shortened."""

    def __init__(self, tmp_path: Path):
        self.dir = tmp_path / "fake"
        self.dir.mkdir()
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        kubectl = bin_dir / "kubectl"
        kubectl.write_text(FAKE_KUBECTL)
        kubectl.chmod(0o755)
        template = tmp_path / "rayjob.yaml"
        template.write_text(_template_text())
        container = _launcher()
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        env |= {"NAMESPACE": "ddnm", "TEMPLATE": str(template), "HOME": str(tmp_path),
                "TMPDIR": str(tmp_path), "POLL_SECONDS": "0", "RETRY_SECONDS": "0",
                "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_DIR": str(self.dir)}
        self.env = env
        self.argv = [*container["command"], *container["args"]]

    def states(self, *lines: str) -> Launcher:
        (self.dir / "states").write_text("".join(f"{s}\n" for s in lines))
        return self

    def existing(self) -> Launcher:
        (self.dir / "exists").touch()
        return self

    def nights(self, *lines: str) -> Launcher:
        (self.dir / "nights").write_text("".join(f"{s}\n" for s in lines))
        return self

    def run(self, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv, env=self.env | env, capture_output=True, text=True, timeout=60)

    def calls(self, prefix: str) -> list[str]:
        path = self.dir / "calls"
        lines = path.read_text().splitlines() if path.exists() else []
        return [c for c in lines if c.startswith(prefix)]

    def deleted(self) -> list[str]:
        path = self.dir / "deleted"
        return path.read_text().split() if path.exists() else []

    def created(self) -> dict | None:
        path = self.dir / "created.yaml"
        return yaml.safe_load(path.read_text()) if path.exists() else None


@pytest.fixture
def launcher(tmp_path) -> Launcher:
    return Launcher(tmp_path)


def test_the_deployed_launcher_is_a_posix_shell_script():
    container = _launcher()
    assert container["command"] == ["/bin/sh", "-c"]
    assert len(container["args"]) == 1
    result = subprocess.run(["sh", "-n", "-c", container["args"][0]], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# Every terminal RayJob: (jobDeploymentStatus, jobStatus) -> the launcher's exit status.
TERMINAL = [
    ("Complete", "SUCCEEDED", 0),
    ("Complete", "STOPPED", 1),  # `ray job stop`: KubeRay says Complete, the night did not succeed
    ("Failed", "FAILED", 1),  # the application failed on its last attempt (reason AppFailed)
    ("Failed", "RUNNING", 1),  # activeDeadlineSeconds passed (DeadlineExceeded)
    ("Failed", "", 1),  # no GPUs within preRunningDeadlineSeconds, or the submission failed
    ("ValidationFailed", "", 1),  # KubeRay rejected the spec
]


@pytest.mark.parametrize(("deployment", "job", "code"), TERMINAL)
def test_launcher_retries_api_calls_and_ends_on_every_terminal_state(launcher, deployment, job, code):
    launcher.states("ERROR", ",", "Initializing,PENDING", "Retrying,FAILED", "Running,RUNNING",
                    f"{deployment},{job}")
    before = _today()
    result = launcher.run()
    assert result.returncode == code, result.stdout + result.stderr
    created = launcher.created()
    assert created is not None, "the night's RayJob was not created"
    assert created["metadata"]["name"] in (f"ddnm-nightly-{before}", f"ddnm-nightly-{_today()}")
    assert created["spec"]["jobId"] == created["metadata"]["name"]
    assert len(launcher.calls("create")) == 2, "one blip, one retry"
    assert f"deployment {deployment}, job {job}" in result.stdout
    assert "Unable to connect" in result.stderr  # the blips really happened
    assert launcher.deleted() == [], "a finished night stays for KEEP_DAYS"


def test_launcher_gives_up_in_time_and_deletes_the_rayjob(launcher):
    launcher.states("Running,RUNNING")
    started = time.monotonic()
    result = launcher.run(GIVE_UP_SECONDS="2", POLL_SECONDS="1")
    assert result.returncode == 1, result.stdout + result.stderr
    assert time.monotonic() - started < 30
    assert "not finished after 2 s" in result.stderr
    assert launcher.deleted() == [launcher.created()["metadata"]["name"]]


def test_launcher_outlasts_an_api_outage_longer_than_its_retries(launcher):
    launcher.states("Running,RUNNING", *["ERROR"] * 5, "Complete,SUCCEEDED")
    result = launcher.run(API_TRIES="2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "cannot read RayJob" in result.stderr


def test_rerunning_a_failed_night_replaces_its_rayjob(launcher):
    launcher.existing().states("Failed,FAILED", "Running,RUNNING", "Complete,SUCCEEDED")
    result = launcher.run()
    assert result.returncode == 0, result.stdout + result.stderr
    name = launcher.created()["metadata"]["name"]
    assert launcher.deleted() == [name]
    assert "deleting it to run the night again" in result.stdout


def test_rerunning_a_running_or_succeeded_night_creates_nothing(launcher):
    launcher.existing().states("Running,RUNNING", "Complete,SUCCEEDED")
    result = launcher.run()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "waiting on it instead of creating another" in result.stdout
    assert launcher.created() is None and launcher.deleted() == []
    result = launcher.run()
    assert result.returncode == 0 and "already succeeded" in result.stdout
    assert launcher.created() is None and launcher.deleted() == []


def test_finished_nights_older_than_keep_days_are_deleted(launcher):
    old = time.strftime("%Y%m%d", time.gmtime(time.time() - 30 * 86400))
    recent = time.strftime("%Y%m%d", time.gmtime(time.time() - 2 * 86400))
    launcher.nights(f"ddnm-nightly-{old},{old},Complete", f"ddnm-nightly-{recent},{recent},Failed",
                    "no-date-label,,ValidationFailed").states("Complete,SUCCEEDED")
    result = launcher.run()
    assert result.returncode == 0, result.stdout + result.stderr
    assert launcher.deleted() == [f"ddnm-nightly-{old}"]


def test_no_night_starts_while_an_earlier_one_is_unfinished(launcher):
    launcher.nights("ddnm-nightly-20000101,20000101,Running").states("Complete,SUCCEEDED")
    result = launcher.run()
    assert result.returncode == 1
    assert "an earlier night is still running: ddnm-nightly-20000101" in result.stderr
    assert launcher.created() is None and launcher.deleted() == []
