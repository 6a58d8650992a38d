"""Evaluate a diffusion prior on the fixed held-out patches and print the table of the model card.

    .venv/bin/python -m train.eval_prior [--checkpoint PATH] [--steps 50] [--samples 8]

Patches: ``train.data.eval_patches`` (seeded 64x64 crops of chelsea and coffee, never trained on).
Tasks (``ddnm.operators``): ``sr_avgpool`` x4 (4x4 block mean), ``colorize`` (equal weights) and
``inpaint`` with a seeded random mask keeping 20 % of the pixels (80 % missing).
DDNM (``ddnm.sampling.ddnm_sample``, noiseless, eta 0.85): all K samples of every patch in one batched
pass, seeded per patch key as ``ddnm.api`` seeds them; K = 8 for SR (its bar is on the mean of 8),
1 for the other tasks by default (their bars are on one sample; CPU time). "one sample" is sample 0
(== a 1-sample run), "mean of K" the average of the K unclamped samples (the posterior-mean / MMSE estimate).
Baselines: nearest = ``A_pinv y``; bicubic (``F.interpolate``, antialias off) of the 16x16 observation;
bicubic + back-projection ``x - A_pinv(A x - y)`` (consistent with y); grey = ``A_pinv y``; mean fill
(each channel's mean of the kept pixels); biharmonic (``skimage.restoration.inpaint_biharmonic``).
PSNR on ``[0, 1]`` after clamping, averaged over the patches.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from ddnm.api import generators_for
from ddnm.metrics import psnr
from ddnm.models.small_prior import build_small_prior
from ddnm.operators import build as build_op
from ddnm.sampling import ddnm_sample, linear_schedule
from train.data import eval_patches

BARS = {  # task -> (method, baseline, margin dB) from issue 3
    "sr_avgpool": [("one sample", "nearest (A_pinv y)", 1.5), ("mean of K", "bicubic", 0.5)],
    "colorize": [("one sample", "grey (A_pinv y)", 4.0)],
    "inpaint": [("one sample", "mean fill", 8.0)],
}


def _to01(x: torch.Tensor) -> torch.Tensor:
    return ((x.clamp(-1, 1) + 1) / 2).float()


def baselines(task: str, op, y: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Classical reconstructions on the ``[-1, 1]`` scale, (B, 3, H, W)."""
    pinv = op.A_pinv(y).to(x.dtype)
    if task == "sr_avgpool":
        lr = y.reshape(x.shape[0], 3, x.shape[2] // 4, x.shape[3] // 4).to(x.dtype)
        bic = F.interpolate(lr, scale_factor=4, mode="bicubic", align_corners=False)
        bp = bic - op.A_pinv(op.A(bic) - y).to(x.dtype)
        return {"nearest (A_pinv y)": pinv, "bicubic": bic, "bicubic + back-projection": bp}
    if task == "colorize":
        return {"grey (A_pinv y)": pinv}
    if task == "inpaint":
        from skimage.restoration import inpaint_biharmonic

        keep = (op.A_pinv(op.A(torch.ones_like(x))) > 0.5).to(x.dtype)  # (B, 3, H, W) 1 = kept
        mean = (x * keep).sum((2, 3), keepdim=True) / keep.sum((2, 3), keepdim=True)
        fill = pinv * keep + mean * (1 - keep)
        bih = []
        for img, k in zip(x, keep, strict=True):
            arr = ((img.permute(1, 2, 0).double().numpy() + 1) / 2) * k[0].numpy()[..., None]
            out = inpaint_biharmonic(arr, k[0].numpy() < 0.5, channel_axis=-1)
            bih.append(torch.from_numpy(out).permute(2, 0, 1) * 2 - 1)
        return {"mean fill": fill, "biharmonic": torch.stack(bih).to(x.dtype)}
    raise ValueError(f"task must be one of {sorted(BARS)}, got {task!r}")


def make_op(task: str, shape: tuple[int, int, int]):
    if task == "sr_avgpool":
        return build_op("sr_avgpool", x_shape=shape, scale=4)
    if task == "colorize":
        return build_op("colorize", x_shape=shape)
    return build_op("inpaint", x_shape=shape, mask="random", keep=0.2, seed=0)


def evaluate(model, x: torch.Tensor, keys: list[str], *, task: str, steps: int, samples: int,
             eta: float, seed: int) -> dict[str, float]:
    """PSNR (dB, mean over patches) of every method for one task, and the max consistency."""
    b = x.shape[0]
    op = make_op(task, tuple(x.shape[1:]))
    y = op.A(x)
    idx = [i for i in range(b) for _ in range(samples)]
    op_k = op.select(idx) if hasattr(op, "select") else op
    out = ddnm_sample(model, y[idx], op_k, linear_schedule(1000), steps=steps, eta=eta,
                      generators=generators_for(keys, seed, samples, x.device))
    xs = out.x.view(b, samples, *x.shape[1:])
    ref = _to01(x)
    rows = {"DDNM one sample": psnr(_to01(xs[:, 0]), ref).mean().item()}
    if samples > 1:
        rows[f"DDNM mean of {samples}"] = psnr(_to01(xs.mean(1)), ref).mean().item()
    for name, rec in baselines(task, op, y, x).items():
        rows[name] = psnr(_to01(rec), ref).mean().item()
    cons = (op_k.A(out.x) - y[idx]).flatten(1).norm(dim=1).max().item()
    return rows | {"_consistency": cons}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default=None, help="weights (default: the bundled small prior)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--samples", type=int, default=8, help="K samples per patch for sr_avgpool")
    p.add_argument("--samples-other", type=int, default=1, help="K for the other tasks (CPU time)")
    p.add_argument("--eta", type=float, default=0.85)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-image", type=int, default=4, help="patches per held-out photo")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--tasks", default="sr_avgpool,colorize,inpaint")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    model = build_small_prior(args.checkpoint)
    x, keys = eval_patches(size=args.size, per_image=args.per_image, seed=0)
    where = os.path.relpath(model.checkpoint) if os.path.exists(model.checkpoint) else model.checkpoint
    print(f"model {where} ({model.num_params:,} params); {len(keys)} held-out "
          f"{args.size}x{args.size} patches: {', '.join(keys)}")
    print(f"DDNM: {args.steps} steps, eta {args.eta}, K = {args.samples} samples per patch for "
          f"sr_avgpool, {args.samples_other} otherwise, seed {args.seed}; "
          "PSNR (dB) on [0, 1], mean over patches\n")
    verdicts = []
    for task in args.tasks.split(","):
        t0 = time.time()
        k = args.samples if task == "sr_avgpool" else args.samples_other
        rows = evaluate(model, x, keys, task=task, steps=args.steps, samples=k,
                        eta=args.eta, seed=args.seed)
        print(f"{task}  ({time.time() - t0:.0f} s, max ||A x - y|| before clamp "
              f"{rows.pop('_consistency'):.1e})")
        for name, value in rows.items():
            print(f"  {name:<28} {value:6.2f}")
        for method, base, margin in BARS.get(task, []):
            row = f"DDNM mean of {k}" if method == "mean of K" else "DDNM one sample"
            if row not in rows:  # K = 1: there is no mean of several samples to judge
                verdicts.append(f"  {task}: {method} - {base}: not measured (K = {k})")
                continue
            got = rows[row]
            gap = got - rows[base]
            verdicts.append(f"  {task}: {method} - {base} = {gap:+.2f} dB (bar {margin:+.1f}): "
                            f"{'met' if gap >= margin else 'NOT met'}")
    print("\nbars (issue 3)")
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()
