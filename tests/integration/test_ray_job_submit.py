"""The RayJob's entrypoint, submitted for real through the Ray Jobs API of a local Ray head.

A private head is started with `ray start --head --block` on 127.0.0.1 (every port chosen free, its own
temp dir and HOME, Ray 2.60 token authentication on with a token made here), and
`ray job submit --submission-id ID --address http://127.0.0.1:PORT -- <entrypoint>` runs the
entrypoint of deploy/kuberay/rayjob.yaml with only its data flags swapped for a small local job
(tiny model, random weights, 16 px images, 2 steps, one worker on a logical GPU). Then:
- the output table holds one ok row per input image, and the PNGs exist;
- a second submission with the same id is refused and runs nothing;
- a resubmission with --incremental (what the nightly template adds) under a new id processes nothing.

Teardown never uses `ray stop` (it would stop every Ray on the machine, other tests' too): it ends
the head's process group and then any process left whose command line names this test's temp dir.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

ROOT = Path(__file__).resolve().parents[2]
RAYJOB = ROOT / "deploy" / "kuberay" / "rayjob.yaml"
BIN = Path(sys.executable).parent
IMAGES = 4


def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _kill_leftovers(marker: str) -> None:
    """SIGKILL processes (by pid) whose command line contains `marker` (this test's temp dir)."""
    me = os.getpid()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == me:
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture(scope="module")
def ray_head():
    if shutil.which("ray", path=str(BIN)) is None or shutil.which("ddnm-batch", path=str(BIN)) is None:
        pytest.skip("ray / ddnm-batch are not installed next to this Python")
    root = Path(tempfile.mkdtemp(prefix="ddnm-rjs-", dir="/tmp"))  # short: Ray's socket paths
    (root / "home").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", HOME=str(root / "home"),
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0",
        RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16),
        OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT),
    )
    gcs, dash, agent, client, metrics, env_agent = _free_ports(6)
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
           "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={agent}",
           f"--ray-client-server-port={client}", f"--metrics-export-port={metrics}",
           f"--runtime-env-agent-port={env_agent}", "--num-cpus=2", "--num-gpus=2",
           f"--temp-dir={root / 'ray'}", "--disable-usage-stats"]
    log = open(root / "ray-start.log", "w")
    head = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            cwd=root)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 120
        while True:
            probe = subprocess.run([str(BIN / "ray"), "job", "list", "--address", address], env=env,
                                   capture_output=True, text=True, timeout=60)
            if probe.returncode == 0:
                break
            if head.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the Ray head did not come up:\n{(root / 'ray-start.log').read_text()[-3000:]}")
            time.sleep(2)
        yield {"address": address, "env": env, "root": root}
    finally:
        try:
            os.killpg(head.pid, signal.SIGTERM)
            head.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            try:
                os.killpg(head.pid, signal.SIGKILL)
            except OSError:
                pass
        _kill_leftovers(str(root))
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def _entrypoint(inp: Path, out: Path, *extra: str) -> list[str]:
    """The RayJob's entrypoint with its data flags pointed at a small local job."""
    argv = shlex.split(yaml.safe_load(RAYJOB.read_text())["spec"]["entrypoint"])
    swap = {"--input": str(inp), "--output": str(out), "--model": "tiny", "--checkpoint": "random",
            "--steps": "2", "--workers": "1"}
    for flag, value in swap.items():
        argv[argv.index(flag) + 1] = value
    assert argv[argv.index("--address") + 1] == "auto"
    return argv + list(extra)


def _submit(head, sid: str, argv: list[str], *, wait: bool = True) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "ray"), "job", "submit", "--submission-id", sid, "--address", head["address"]]
    cmd += [] if wait else ["--no-wait"]
    return subprocess.run([*cmd, "--", *argv], env=head["env"], capture_output=True, text=True, timeout=300)


def _job_ids(head) -> list[str]:
    from ray.job_submission import JobSubmissionClient

    auth = {"Authorization": f"Bearer {head['env']['RAY_AUTH_TOKEN']}"}  # this process is not in token mode
    return [j.submission_id for j in JobSubmissionClient(head["address"], headers=auth).list_jobs()]


def _make_images(folder: Path) -> list[str]:
    from PIL import Image

    folder.mkdir(parents=True)
    rng = __import__("numpy").random.default_rng(0)
    keys = []
    for i in range(IMAGES):
        img = (rng.random((16, 16, 3)) * 255).astype("uint8")
        Image.fromarray(img).save(folder / f"img{i}.png")
        keys.append(f"img{i}.png")
    return keys


def test_the_cluster_requires_the_token(ray_head):
    env = {k: v for k, v in ray_head["env"].items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE")}
    env["RAY_AUTH_MODE"], env["RAY_AUTH_TOKEN"] = "token", "not-the-token"
    r = subprocess.run([str(BIN / "ray"), "job", "list", "--address", ray_head["address"]], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "token" in (r.stdout + r.stderr).lower()


def test_rayjob_entrypoint_through_ray_job_submit(ray_head):
    import pyarrow.parquet as pq

    data = ray_head["root"] / "data"
    keys = _make_images(data / "in")
    out = data / "out"
    argv = _entrypoint(data / "in", out)

    first = _submit(ray_head, "ddnm-it-1", argv)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "succeeded" in (first.stdout + first.stderr).lower()
    table = pq.read_table(out / "metrics.parquet").to_pandas()
    assert sorted(table["key"]) == keys
    assert (table["status"] == "ok").all(), table[["key", "error"]]
    assert table["psnr"].notna().all() and (table["steps"] == 2).all()
    for url in table["output"]:
        assert Path(url.removeprefix("file://")).is_file()
    shards = {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    assert shards

    # the same submission id again: Ray refuses it and nothing runs
    again = _submit(ray_head, "ddnm-it-1", argv, wait=False)
    assert again.returncode != 0 or "already exists" in (again.stdout + again.stderr)
    assert "already exists" in (again.stdout + again.stderr)
    assert _job_ids(ray_head).count("ddnm-it-1") == 1

    # the nightly's --incremental under a new id: nothing new to restore, the table is unchanged
    inc = _submit(ray_head, "ddnm-it-2", [*argv, "--incremental"])
    assert inc.returncode == 0, inc.stdout[-3000:] + inc.stderr[-3000:]
    manifest = json.loads((out / "_manifest.json").read_text())
    assert manifest["run"]["images"] == 0 and manifest["run"]["incremental"] is True
    assert manifest["counts"]["ok"] == IMAGES
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()} == shards
    after = pq.read_table(out / "metrics.parquet").to_pandas()
    assert sorted(after["key"]) == keys and len(after) == IMAGES
    from jobs.report import job_status  # what `ddnm-batch status OUTPUT --json` prints

    st = job_status(str(out), {})
    assert st["complete"] and st["images"]["ok"] == IMAGES and st["images"]["pending"] == 0
