"""DDNM throughput on one accelerator: a reference-style loop against the batch system's path.

One run prints one table. For each model (random weights: the same cost as the released ones), 100
DDNM steps of 4x average-pool super-resolution:

  (a) ``reference``: the public code's style: fp16 UNet, batch 1, x_t and x0 copied to the host at
      every step (a device synchronisation per step);
  (b) ``ours``: the path the batch worker runs (``ddnm.api.sample_batch``), bf16 model (convolutions
      in bf16, norms in fp32, as ``ddnm.models.build(dtype="bf16")`` makes it), channels_last, no host
      synchronisation in the loop, over a batch sweep; with torch.compile, and with compile + CUDA
      graphs (``mode="reduce-overhead"``) at the largest batches; plus the batch the worker picks
      automatically (``cluster.restorer.BatchRestorer.batch_size``).

Columns: images/s; model TFLOP/s achieved (FLOPs of one batch-1 forward counted once per model with
``torch.utils.flop_counter.FlopCounterMode``, times model calls and images, over the wall time); % of
``--peak-tflops`` (790: H200 dense bf16); peak accelerator memory; ratio to (a).
Also printed: the bf16-vs-fp32 PSNR gap on the small prior (or the tiny model), same seed.

    python bench/gpu_throughput.py                 # on a GPU: ADM-256 and CelebA-HQ, 100 steps
    python bench/gpu_throughput.py --smoke         # on a CPU in seconds: tiny model, 16 px, 2 steps
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from ddnm import models  # noqa: E402
from ddnm.api import Sampling, sample_batch  # noqa: E402
from ddnm.metrics import psnr  # noqa: E402
from ddnm.operators import build as build_operator  # noqa: E402
from ddnm.sampling import linear_schedule, travel_steps  # noqa: E402

ETA = 0.85
SCALE = 4


@dataclass(frozen=True, kw_only=True)
class Row:
    """One measured configuration."""

    model: str
    variant: str  # "reference" | "ours" | "ours+compile" | "ours+compile+graphs" | "ours (auto)"
    batch: int
    images_per_s: float | None
    tflops: float | None
    peak_mem_gib: float | None
    error: str | None = None


# ------------------------------------------------------------------------------------ measurement

def flops_per_forward(model, x_shape, device) -> int:
    """FLOPs of one batch-1 forward (matmuls, convolutions, attention), counted by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, *x_shape, device=device)
    t = torch.full((1,), 500, dtype=torch.long, device=device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x, t)
    return int(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _problem(x_shape, batch: int, device, seed: int = 0):
    """An SR x4 operator and observations y = A x of `batch` smooth random images on `device`."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = x_shape
    low = torch.rand(batch, c, max(h // 8, 2), max(w // 8, 2), generator=g) * 2 - 1
    x = torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    op = build_operator("sr_avgpool", x_shape=tuple(x_shape), scale=SCALE).to(device)
    x = x.to(device)
    return op, op.A(x), x


def reference_loop(model, op, y, *, steps: int, seed: int = 0) -> torch.Tensor:
    """DDNM as the public code runs it: batch 1, x_t and x0 copied to the host after every step."""
    abar = [float(v) for v in linear_schedule(1000).tolist()]
    g = torch.Generator(device=y.device).manual_seed(seed)
    x = torch.randn((1, *op.x_shape), generator=g, device=y.device)
    xs, x0s = [x.to("cpu")], []
    for t, t_next in travel_steps(steps, 1000, 1, 1, 1):
        ab_next = 1.0 if t_next < 0 else abar[t_next]
        a, s = math.sqrt(ab_next), math.sqrt(1.0 - ab_next)
        eps = model(x, torch.full((1,), t, dtype=torch.long, device=x.device)).float()
        x0_t = (x - math.sqrt(1.0 - abar[t]) * eps) / math.sqrt(abar[t])
        x0 = x0_t - op.A_pinv(op.A(x0_t) - y)
        z = torch.randn(x.shape, generator=g, device=x.device)
        x = a * x0 + s * ETA * z + s * math.sqrt(1.0 - ETA**2) * eps
        x0s.append(x0.to("cpu"))
        xs.append(x.to("cpu"))
    return x0s[-1]


def _timed(fn, device) -> tuple[float, float | None]:
    """(seconds, peak GiB) of fn() on `device`."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return seconds, peak


def measure_reference(name, args, device, flops) -> Row:
    model = models.build(name, "random", device=device, dtype=torch.float16 if device.type == "cuda"
                         else torch.float32)
    op, y, _ = _problem((model.in_channels, args.size, args.size), 1, device)
    reference_loop(model, op, y, steps=args.warmup_steps)
    seconds, peak = _timed(lambda: [reference_loop(model, op, y, steps=args.steps)
                                    for _ in range(args.ref_images)], device)
    ips = args.ref_images / seconds
    return Row(model=name, variant="reference", batch=1, images_per_s=ips,
               tflops=ips * flops * _calls(args) / 1e12, peak_mem_gib=peak)


def measure_ours(name, model, batch, variant, args, device, flops) -> Row:
    op, y, _ = _problem((model.in_channels, args.size, args.size), batch, device)
    keys = [f"img{i:04d}" for i in range(batch)]

    def run(steps):
        return sample_batch(model, op, y, keys=keys, sampling=Sampling(steps=steps, eta=ETA,
                                                                      canvas="whole")).x

    try:
        for _ in range(2 if "graphs" in variant else 1):  # compile / record graphs outside the timing
            run(args.warmup_steps)
        seconds, peak = _timed(lambda: run(args.steps), device)
    except Exception as e:  # one failing variant (OOM, compile error) must not lose the whole table
        return Row(model=name, variant=variant, batch=batch, images_per_s=None, tflops=None,
                   peak_mem_gib=None, error=f"{type(e).__name__}: {str(e).splitlines()[0][:80]}")
    ips = batch / seconds
    return Row(model=name, variant=variant, batch=batch, images_per_s=ips,
               tflops=ips * flops * _calls(args) / 1e12, peak_mem_gib=peak)


def _calls(args) -> int:
    return args.steps  # no time travel: one model call per step


def auto_batch_size(name: str, size: int, device: torch.device, dtype: str) -> int:
    """The batch the batch worker would choose for this model on this device (its own probe)."""
    from cluster.config import WorkerConfig
    from cluster.restorer import BatchRestorer

    config = WorkerConfig.flat(input_url="", output_url="", task="sr_avgpool", task_settings={"scale": SCALE},
                          mode="evaluate", model=name, checkpoint="random", dtype=dtype, steps=1, eta=ETA)
    sampler = BatchRestorer(config, device)
    try:
        return int(sampler.batch_size((3, size, size)))
    finally:
        del sampler
        if device.type == "cuda":
            torch.cuda.empty_cache()


# ------------------------------------------------------------------------------- bf16 vs fp32 check

def bf16_psnr_gap(*, steps: int = 4, images: int = 4, device: str | torch.device = "cpu",
                  model: str | None = None) -> dict:
    """PSNR of bf16 and fp32 restorations (same weights, seed and keys) of SR x4 on the small prior.

    Falls back to the tiny model when the small prior is not available. Returns {"model", "size",
    "psnr_fp32" (list), "psnr_bf16" (list), "max_gap_db"}.
    """
    device = torch.device(device)
    names = [model] if model else ["small-prior", "tiny"]
    for name in names:
        try:
            fp32 = models.build(name, device=device, dtype=torch.float32)
        except ValueError:
            continue
        bf16 = models.build(name, device=device, dtype=torch.bfloat16)
        break
    else:
        raise ValueError(f"none of the models {names} could be built")
    size = int(fp32.image_size)
    op, y, x = _problem((fp32.in_channels, size, size), images, device, seed=1)
    keys = [f"k{i}" for i in range(images)]
    out = {}
    for tag, m in (("fp32", fp32), ("bf16", bf16)):
        restored = sample_batch(m, op, y, keys=keys, sampling=Sampling(steps=steps, eta=ETA,
                                                                      canvas="whole")).x
        out[tag] = psnr((restored.clamp(-1, 1) + 1) / 2, (x + 1) / 2).tolist()
    gap = max(abs(a - b) for a, b in zip(out["fp32"], out["bf16"], strict=True))
    return {"model": name, "size": size, "psnr_fp32": out["fp32"], "psnr_bf16": out["bf16"],
            "max_gap_db": gap}


# ------------------------------------------------------------------------------------------- table

def format_table(rows: list[Row], peak_tflops: float) -> str:
    ref = {r.model: r.images_per_s for r in rows if r.variant == "reference" and r.images_per_s}
    head = ("model", "variant", "batch", "images/s", "TFLOP/s", "% peak", "peak GiB", "x ref")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        if r.error:
            lines.append(" | ".join([r.model, r.variant, str(r.batch), f"failed: {r.error}", "", "", "", ""]))
            continue
        ratio = r.images_per_s / ref[r.model] if r.model in ref else None
        lines.append(" | ".join([
            r.model, r.variant, str(r.batch), f"{r.images_per_s:.4g}", f"{r.tflops:.4g}",
            f"{100 * r.tflops / peak_tflops:.3g}", "-" if r.peak_mem_gib is None else f"{r.peak_mem_gib:.2f}",
            "-" if ratio is None else f"{ratio:.2f}"]))
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny model, 16 px, 2 steps, CPU-sized")
    p.add_argument("--models", default="adm-256-uncond,ddpm-celebahq-256")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batches", default="1,4,8,16,32")
    p.add_argument("--compile-batches", default="32", help="also compiled ('' = none)")
    p.add_argument("--ref-images", type=int, default=2, help="images timed in the reference-style loop")
    p.add_argument("--peak-tflops", type=float, default=790.0, help="dense bf16 peak (H200: 790)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-auto-batch", action="store_true", help="skip the worker's automatic batch")
    p.add_argument("--no-bf16-check", action="store_true")
    args = p.parse_args(argv)
    if args.smoke:
        args.models, args.steps, args.batches, args.compile_batches, args.ref_images = "tiny", 2, "1,2", "", 1
    args.warmup_steps = min(3, args.steps)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    low = "bf16" if device.type == "cuda" else "fp32"  # CPU bf16 convolutions are slow, not representative
    print(f"device: {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"torch {torch.__version__}, {args.steps} steps, SR x{SCALE}, ours in {low}")
    rows: list[Row] = []
    for name in [m for m in args.models.split(",") if m]:
        info = models.REGISTRY[name]
        args.size = int(info.image_size)
        model = models.build(name, "random", device=device, dtype=low, channels_last=device.type == "cuda")
        flops = flops_per_forward(model, (model.in_channels, args.size, args.size), device)
        print(f"{name}: {args.size}x{args.size}, {model.num_params / 1e6:.2f} M params, "
              f"{flops / 1e9:.2f} GFLOP per forward, {flops * _calls(args) / 1e12:.4f} TFLOP per image")
        rows.append(measure_reference(name, args, device, flops))
        batches = [int(b) for b in args.batches.split(",") if b]
        for b in batches:
            rows.append(measure_ours(name, model, b, "ours", args, device, flops))
        for b in [int(b) for b in args.compile_batches.split(",") if b]:
            for variant, mode in (("ours+compile", "default"),
                                  ("ours+compile+graphs", "reduce-overhead")):
                torch._dynamo.reset()
                compiled = torch.compile(model, mode=mode, dynamic=False)
                rows.append(measure_ours(name, compiled, b, variant, args, device, flops))
            torch._dynamo.reset()
        if not args.no_auto_batch:
            auto = auto_batch_size(name, args.size, device, low)
            print(f"{name}: the worker's automatic batch size on this device: {auto}")
            if auto not in batches:
                rows.append(measure_ours(name, model, auto, "ours (auto)", args, device, flops))
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print()
    print(format_table(rows, args.peak_tflops))
    if not args.no_bf16_check:
        gap = bf16_psnr_gap(steps=2 if args.smoke else 10, device=device)
        print(f"\nbf16 vs fp32 ({gap['model']}, {gap['size']} px, same seed): PSNR fp32 "
              f"{[round(v, 3) for v in gap['psnr_fp32']]}, bf16 {[round(v, 3) for v in gap['psnr_bf16']]}, "
              f"max gap {gap['max_gap_db']:.4f} dB (limit 0.1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
