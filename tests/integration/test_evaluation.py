"""Cluster-scale evaluation end to end: LPIPS and Inception features computed by the workers, FID / KID
by the driver, over 2 workers, 3 shards and a resumed driver; `report --html` checked in a real
headless browser; `compare` of two runs with different steps.

Weights are random files of the exact architectures, made here (nothing is downloaded). Images are
32x32 (LPIPS alex needs >= 31 px) restored by the small prior in 2-3 steps.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import torch
from PIL import Image

from jobs import features as feats_mod
from jobs.cli import main
from tests.unit.test_perceptual import _random_inception

pytestmark = [pytest.mark.integration,
              pytest.mark.filterwarnings("ignore:.*(pretrained|weight enum).*:UserWarning")]
KEYS = [f"img{i}.png" for i in range(6)]


def _save_inputs(folder):
    folder.mkdir(parents=True)
    for i, key in enumerate(KEYS):
        rng = np.random.default_rng(i)
        small = Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8), "RGB")
        small.resize((32, 32), Image.BILINEAR).save(folder / key)


def _random_lpips(path) -> str:
    """One combined random LPIPS (alex backbone + heads) state dict, the form load_lpips also takes."""
    import lpips

    from ddnm.perceptual import import_torchvision

    import_torchvision()
    torch.manual_seed(0)
    model = lpips.LPIPS(pretrained=False, net="alex", pnet_rand=True, verbose=False)
    for k, v in model.state_dict().items():
        if k.startswith("lin") and v.is_floating_point():
            v.copy_(torch.rand(v.shape))  # non-negative heads, as trained ones
    torch.save(model.state_dict(), path)
    return str(path)


def _run(src, out, lpips_w, inc_w, *, steps, extra=()):
    return main(["run", "--mode", "evaluate",
                 "--input", str(src), "--output", str(out), "--task", "sr_avgpool", "--set", "scale=2",
                 "--model", "small-prior", "--steps", str(steps), "--samples", "2", "--panels",
                 "--workers", "2", "--gpus-per-worker", "1", "--shard-size", "2", "--threads", "1",
                 "--lpips-weights", lpips_w, "--inception-weights", inc_w, *extra])


@pytest.fixture(scope="module")
def runs(tmp_path_factory, s3_server, _ray_session):
    """Run A (3 steps) over 3 shards on 2 workers, its driver 'killed' after committing shard 2's
    features but before its rows, then resumed; run B (2 steps) on the same inputs."""
    import ray

    from cluster.runtime import init_ray

    if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) < 2:
        ray.shutdown()
    init_ray(num_cpus=2, num_gpus=2)
    from ddnm.perceptual import import_torchvision

    import_torchvision()  # before torch_fidelity is imported by the weights helper
    tmp = tmp_path_factory.mktemp("evaluation")
    src = tmp / "truth"
    _save_inputs(src)
    lpips_w = _random_lpips(tmp / "lpips-alex.pth")
    inc_w = _random_inception(tmp / "weights-inception.pth")
    a, b = tmp / "run-a", tmp / "run-b"
    assert _run(src, a, lpips_w, inc_w, steps=3) == 0
    kept = {i: os.stat(a / "features" / f"shard-{i:06d}.npz").st_mtime_ns for i in (0, 1)}
    (a / "shards" / "shard-000002.parquet").unlink()  # the driver died between the two writes
    (a / "_manifest.json").unlink()
    (a / "metrics.parquet").unlink()
    assert _run(src, a, lpips_w, inc_w, steps=3) == 0
    # committed shards were not run again: their features were not computed twice
    assert {i: os.stat(a / "features" / f"shard-{i:06d}.npz").st_mtime_ns for i in (0, 1)} == kept
    assert _run(src, b, lpips_w, inc_w, steps=2) == 0
    return {"src": src, "a": a, "b": b, "lpips": lpips_w, "inception": inc_w, "tmp": tmp}


def _png(path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), np.float32) / 255).permute(2, 0, 1)


def test_job_lpips_and_features_equal_the_library_on_the_same_images(runs):
    from ddnm.perceptual import load_inception, load_lpips

    a = runs["a"]
    df = pd.read_parquet(a / "metrics.parquet").set_index("key")
    assert list(df.index) == KEYS and (df["status"] == "ok").all() and df["lpips"].notna().all()
    restored = torch.stack([_png(a / "images" / k) for k in KEYS])
    truth = torch.stack([_png(runs["src"] / k) for k in KEYS])
    want_lpips = load_lpips(runs["lpips"], net="alex")(restored, truth).numpy()
    np.testing.assert_allclose(df["lpips"].to_numpy(), want_lpips, rtol=1e-5, atol=1e-7)
    inc = load_inception(runs["inception"])
    keys, f_restored, f_truth = feats_mod.collect(str(a), {}, __import__("pyarrow").Table.from_pandas(
        df.reset_index()[["key", "shard_id", "status"]]))
    assert keys == KEYS
    for got, want in ((f_restored, inc(restored).numpy()), (f_truth, inc(truth).numpy())):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    spec = json.loads((a / "_spec.json").read_text())
    for name in ("lpips", "inception"):
        digest = hashlib.sha256(open(runs[name], "rb").read()).hexdigest()
        assert spec["weights_hashes"][f"{name}_weights"] == f"sha256:{digest}"


def _direct_fid(x, y):
    """FID from the features in scipy, independently of ddnm.set_metrics. With n << D images the
    covariances are singular and ``sqrtm(S1 @ S2)`` is inaccurate (scipy warns), so the trace term uses
    the identity tr((S1 S2)^(1/2)) = ||Xc Yc^T||_* / sqrt((n-1)(m-1)) (the nonzero eigenvalues of S1 S2
    are the squared singular values of Xc Yc^T / sqrt((n-1)(m-1)))."""
    xc, yc = x - x.mean(0), y - y.mean(0)
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    tr_covmean = scipy.linalg.svdvals(xc @ yc.T).sum() / np.sqrt((len(x) - 1) * (len(y) - 1))
    return float(((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def _direct_kid(x, y, subsets, m, seed=0):
    rng, d, out = np.random.RandomState(seed), x.shape[1], []
    for _ in range(subsets):
        p, q = x[rng.choice(len(x), m, replace=False)], y[rng.choice(len(y), m, replace=False)]
        off = ~np.eye(m, dtype=bool)
        k = lambda u, v: (u @ v.T / d + 1) ** 3  # noqa: E731
        out.append(k(p, p)[off].mean() + k(q, q)[off].mean() - 2 * k(p, q).mean())
    return float(np.mean(out)), float(np.std(out))


def test_fid_kid_of_the_resumed_two_worker_job_equal_direct_and_one_process_values(runs):
    from ddnm.perceptual import load_inception

    a = runs["a"]
    manifest = json.loads((a / "_manifest.json").read_text())
    sm = manifest["set_metrics"]
    assert sm["images"] == 6 and sm["kid_subset_size"] == 6 and sm["kid_subsets"] == 100
    npz = [np.load(a / "features" / f"shard-{i:06d}.npz") for i in range(3)]
    x = np.concatenate([z["restored"] for z in npz])
    y = np.concatenate([z["truth"] for z in npz])
    assert sm["fid"] == pytest.approx(_direct_fid(x, y), rel=1e-6)
    assert (sm["kid"], sm["kid_std"]) == pytest.approx(_direct_kid(x, y, 100, 6), rel=1e-9, abs=1e-12)
    # the one-process value: every image through the Inception here, in one batch
    inc = load_inception(runs["inception"])
    one = inc(torch.stack([_png(a / "images" / k) for k in KEYS])).numpy()
    truth = inc(torch.stack([_png(runs["src"] / k) for k in KEYS])).numpy()
    assert sm["fid"] == pytest.approx(_direct_fid(one, truth), rel=1e-5)
    runs["fid_values"] = (sm["fid"], _direct_fid(x, y), _direct_fid(one, truth))
    print("FID job / direct from committed features / one process:", runs["fid_values"])


def test_missing_weights_file_is_one_line_naming_it(runs, capsys, tmp_path):
    code = main(["run", "--mode", "evaluate",
                 "--input", str(runs["src"]), "--output", str(tmp_path / "o"), "--task", "sr_avgpool",
                 "--set", "scale=2", "--model", "small-prior", "--steps", "2",
                 "--inception-weights", str(tmp_path / "weights-inception-2015-12-05-6726825d.pth")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1
    assert "inception_weights=" in err and "not found (download once: torch-fidelity" in err
    shutil.rmtree(tmp_path / "o", ignore_errors=True)


# ------------------------------------------------------------------------------ pages in a browser
def _browser():
    """Debian's chromium driven by Playwright; skipped (saying why) only when either is missing."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("no chromium binary: .ci/run installs it with `apt-get install -y chromium`, which "
                    "needs root and a Debian mirror; without them the page cannot be checked in a browser")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the test extra")
    return sync_api.sync_playwright, path


def _open(page_path):
    """Load a page from disk in headless chromium; -> (requests made, images, [data-metric] cells)."""
    sync_playwright, exe = _browser()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            requests = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(page_path.as_uri(), wait_until="load")
            images = page.evaluate("Array.from(document.images).map(i => [i.getAttribute('src'), i.complete,"
                                   " i.naturalWidth])")
            cells = page.evaluate("Array.from(document.querySelectorAll('[data-metric]')).map(e => [e.dataset"
                                  ".metric, e.dataset.key || null, e.dataset.value, e.textContent])")
        finally:
            browser.close()
    return requests, images, cells


def test_report_html_renders_offline_with_the_tables_numbers(runs, capsys):
    from jobs.html_report import METRICS, fmt

    a = runs["a"]
    assert main(["report", str(a), "--html"]) == 0
    assert "report.html" in capsys.readouterr().err
    requests, images, cells = _open(a / "report.html")
    folder = a.as_uri() + "/"
    assert requests and all(u.startswith(folder) for u in requests), [u for u in requests if not
                                                                      u.startswith(folder)]
    assert len(images) >= 4 * 4 and all(ok and w > 0 for _, ok, w in images), images
    assert {src.split("-")[-1] for src, _, _ in images} == {"observation.png", "restored.png", "truth.png",
                                                            "uncertainty.png"}
    df = pd.read_parquet(a / "metrics.parquet").set_index("key")
    sm = json.loads((a / "_manifest.json").read_text())["set_metrics"]
    seen = set()
    for metric, key, value, text in cells:
        if key:  # a key's own number in the grids
            assert float(value) == df.loc[key, metric], (metric, key)
            assert text.endswith(fmt(float(df.loc[key, metric]), METRICS[metric][1]))
        elif metric.endswith(("_mean", "_median")):
            m, stat = metric.rsplit("_", 1)
            assert float(value) == getattr(df[m], stat)(), metric
            assert text == fmt(float(value), METRICS[m][1])
        elif metric in ("fid", "kid"):
            assert float(value) == sm[metric]
        seen.add(metric)
    assert {"psnr", "lpips", "psnr_mean", "lpips_median", "fid", "kid"} <= seen


def test_compare_two_runs_with_different_steps(runs, capsys):
    page = runs["tmp"] / "compare.html"
    assert main(["compare", str(runs["a"]), str(runs["b"]), "--html", str(page)]) == 0
    out = capsys.readouterr().out
    assert "B vs A: paired over 6 keys" in out and "95% bootstrap CI" in out
    assert out.count("\npsnr ") == 1 and "\nlpips " in out and "FID" in out
    a, b = (pd.read_parquet(runs[r] / "metrics.parquet").set_index("key") for r in ("a", "b"))
    requests, images, cells = _open(page)
    assert all(u.startswith(runs["tmp"].as_uri() + "/compare") for u in requests)
    assert len(images) == 6 * 3 and all(ok and w > 0 for _, ok, w in images)
    cell = {(m, k): float(v) for m, k, v, _ in cells if v}
    assert cell[("psnr_diff", None)] == pytest.approx((b["psnr"] - a["psnr"]).mean(), rel=1e-12)
    fid_b = json.loads((runs["b"] / "_manifest.json").read_text())["set_metrics"]["fid"]
    assert cell[("fid_1", None)] == fid_b
    for k in a.index:
        if ("psnr_delta", k) in cell:
            assert cell[("psnr_delta", k)] == pytest.approx(b.loc[k, "psnr"] - a.loc[k, "psnr"], abs=1e-12)
