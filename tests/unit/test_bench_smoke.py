"""bench/gpu_throughput.py keeps working on a CPU, counts FLOPs right, and bf16 stays close to fp32."""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench" / "gpu_throughput.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("gpu_throughput", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_smoke_mode_prints_the_table(bench, capsys):
    torch.set_num_threads(1)
    assert bench.main(["--smoke", "--no-bf16-check", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("tiny | ")]
    variants = {ln.split(" | ")[1] for ln in lines}
    assert {"reference", "ours"} <= variants
    assert "model | variant | batch | images/s | TFLOP/s | % peak | peak GiB | x ref" in out
    for ln in lines:
        cells = ln.split(" | ")
        assert float(cells[3]) > 0 and float(cells[4]) > 0, ln  # images/s, TFLOP/s
        assert float(cells[7]) > 0, ln  # ratio to the reference-style loop
    assert re.search(r"automatic batch size on this device: \d+", out)


def test_reference_loop_is_the_same_ddnm_as_the_sampler(bench):
    """The reference-style loop does the same work as ddnm_sample: equal noise gives equal output."""
    from ddnm import models
    from ddnm.sampling import ddnm_sample, linear_schedule

    torch.set_num_threads(1)
    model = models.build("tiny", device="cpu")
    op, y, _ = bench._problem((3, 16, 16), 1, torch.device("cpu"))
    ours = ddnm_sample(model, y, op, linear_schedule(1000), steps=3, eta=bench.ETA,
                       generators=[torch.Generator().manual_seed(7)]).x
    ref = bench.reference_loop(model, op, y, steps=3, seed=7)
    torch.testing.assert_close(ref, ours, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, gmac", [("adm-256-uncond", 1119.8), ("ddpm-celebahq-256", 248.5)])
def test_flop_count_matches_the_published_cost_per_forward(bench, name, gmac):
    """FlopCounterMode on the meta device (no weights, no compute) gives REFERENCE.md's GMAC."""
    from ddnm import models

    model = models.build(name, "random", device="meta")
    flops = bench.flops_per_forward(model, (3, 256, 256), torch.device("meta"))
    assert math.isclose(flops / 2e9, gmac, rel_tol=1e-3)


def test_bf16_is_within_0_1_db_of_fp32_on_the_same_seed(bench):
    torch.set_num_threads(1)
    gap = bench.bf16_psnr_gap(steps=4, images=4, device="cpu")
    if (BENCH.parents[1] / "ddnm" / "models" / "weights" / "small_prior.safetensors").exists():
        assert gap["model"] == "small-prior"  # the tiny model is only the fallback
    assert len(gap["psnr_fp32"]) == 4 and all(math.isfinite(v) for v in gap["psnr_bf16"])
    assert gap["psnr_fp32"] != gap["psnr_bf16"], "bf16 must actually run in bf16"
    assert gap["max_gap_db"] <= 0.1, gap
