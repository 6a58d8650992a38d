"""Cost of one DDNM step relative to the bare model forward, per operator (target <= 1.03).

    .venv/bin/python bench/step_overhead.py [--batch 8] [--size 64] [--steps 10] [--repeats 5] [--direct]

Model: the project's small prior architecture (1.7 M-parameter ADM) with random weights, float32, on
the CPU. A DDNM step is the model forward plus the sampler's own work (noise from per-image
generators, ``x0_t``, ``A``, ``A_pinv``, the update). On a CPU these run one after the other, so

    ratio = (forward + overhead) / forward

where ``overhead`` is timed by running ``ddnm_sample`` with a stand-in model that returns a cached
``eps`` at no cost (per step, best of ``repeats`` runs of ``steps`` steps) and ``forward`` is the best
single ``model(x_t, t)`` call. Best-of timings keep a busy, shared machine from inflating either side.
``--direct`` also times whole ``ddnm_sample`` runs with the real model (noisy on a shared machine).
Columns: DDNM (noiseless) and DDNM+ (sigma_y > 0, the per-singular-value SVD path).
"""

from __future__ import annotations

import argparse
import time

import torch

from ddnm.models import build as build_model
from ddnm.operators import TASKS
from ddnm.operators import build as build_op
from ddnm.sampling import ddnm_sample, image_generator, linear_schedule

ABAR = linear_schedule(1000)
TASK_SETTINGS = {"sr_bicubic": {"scale": 4}, "sr_avgpool": {"scale": 4}, "old_photo": {"scale": 2}}


class CachedEps(torch.nn.Module):
    """Returns one precomputed eps: the sampler's work without the network's."""

    def __init__(self, eps: torch.Tensor):
        super().__init__()
        self.eps = eps

    def forward(self, x, t):
        return self.eps


def best_forward(model, x, calls: int) -> float:
    t = torch.full((x.shape[0],), 500, dtype=torch.long)
    best = float("inf")
    with torch.no_grad():
        for _ in range(calls):
            start = time.perf_counter()
            model(x, t)
            best = min(best, time.perf_counter() - start)
    return best


def best_step(model, op, y, steps: int, repeats: int, sigma_y: float) -> float:
    best = float("inf")
    for _ in range(repeats):
        gens = [image_generator(0, str(i)) for i in range(y.shape[0])]
        start = time.perf_counter()
        ddnm_sample(model, y, op, ABAR, steps=steps, sigma_y=sigma_y, generators=gens)
        best = min(best, (time.perf_counter() - start) / steps)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--direct", action="store_true", help="also time whole runs with the real model")
    p.add_argument("--tasks", nargs="*", default=sorted(TASKS))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = build_model("small-prior", "random")
    shape = (3, args.size, args.size)
    x = torch.rand(args.batch, *shape) * 2 - 1
    with torch.no_grad():
        eps = model(x, torch.full((args.batch,), 500, dtype=torch.long))
    fwd = best_forward(model, x, max(args.repeats, 3))
    print(f"model small-prior (random weights), {model.num_params / 1e6:.2f} M params, batch {args.batch}, "
          f"{args.size}x{args.size}, {args.threads} thread(s); forward {fwd * 1e3:.1f} ms (best of "
          f"{max(args.repeats, 3)})", flush=True)
    head = f"{'task':16s} {'DDNM ovh ms':>11s} {'ratio':>6s} {'DDNM+ ovh ms':>12s} {'ratio+':>6s}"
    print(head + (f" {'direct':>7s}" if args.direct else ""), flush=True)
    null = CachedEps(eps)
    for task in args.tasks:
        op = build_op(task, x_shape=shape, **TASK_SETTINGS.get(task, {}))
        y = op.A(x)
        plain = best_step(null, op, y, args.steps, args.repeats, 0.0)
        plus = best_step(null, op, y, args.steps, args.repeats, 0.1)
        line = (f"{task:16s} {plain * 1e3:11.2f} {(fwd + plain) / fwd:6.3f} {plus * 1e3:12.2f} "
                f"{(fwd + plus) / fwd:6.3f}")
        if args.direct:
            line += f" {best_step(model, op, y, args.steps, 2, 0.0) / best_forward(model, x, 3):7.3f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
