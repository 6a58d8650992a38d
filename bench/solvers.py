"""Every registered solver on the same images, operator, noise and prior: one comparison table.

Each solver runs in its own process (so peak memory is its own) through ``ddnm.restore`` on the same
held-out photos (scikit-image's ``chelsea`` and ``coffee``, which the bundled small prior did not see
in training), cut into 64x64 crops, with the bundled small prior, float32, seed 0. Steps: each
solver's ``paper_steps`` (``--steps paper``, the default) or one number for all. Prints PSNR, SSIM,
consistency ``||A x - y||`` (mean over images), model calls per image, seconds per image, peak
memory (CUDA: max allocated; CPU: the process's peak RSS) and time / PSNR against DDNM.

    OMP_NUM_THREADS=1 .venv/bin/python bench/solvers.py [--task sr_avgpool --set scale=4]
        [--sigma-y 0.0] [--steps paper] [--solvers ddnm,ddrm,...] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def crops(size: int = 64):
    """4 crops of two held-out photos, (4, 3, size, size) on [0, 1]."""
    import numpy as np
    import torch
    from PIL import Image
    from skimage import data

    out = []
    for photo in (data.chelsea(), data.coffee()):
        img = Image.fromarray(photo)
        short = min(img.size)
        img = img.resize((round(img.size[0] * 2 * size / short), round(img.size[1] * 2 * size / short)),
                         Image.BICUBIC)
        a = np.asarray(img, dtype=np.float32) / 255.0
        h, w = a.shape[:2]
        for top, left in ((h // 2 - size, w // 2 - size), (h // 2, w // 2)):
            out.append(torch.from_numpy(a[top:top + size, left:left + size]).permute(2, 0, 1))
    return torch.stack(out)


def one(args) -> dict:
    """Run one solver in this process -> its row."""
    import torch

    import ddnm
    from ddnm.solvers import get_solver

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    solver = get_solver(args.one)
    steps = (solver.paper_steps or 100) if args.steps == "paper" else int(args.steps)
    images = crops().to(args.device)
    settings = dict(kv.split("=", 1) for kv in args.set)
    task_settings = {k: (int(v) if v.isdigit() else v) for k, v in settings.items()}
    solver_settings = dict(kv.split("=", 1) for kv in args.set_solver if kv.startswith(args.one + ":"))
    solver_settings = {k.split(":", 1)[1]: v for k, v in solver_settings.items()}
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    res = ddnm.restore(images, args.task, "small-prior", device=args.device, mode="evaluate", steps=steps,
                       sigma_y=args.sigma_y, solver=solver.name, solver_settings=solver_settings, seed=0,
                       **task_settings)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    secs = (time.perf_counter() - t0) / images.shape[0]
    rows = res.metrics
    mean = lambda k: sum(float(r[k]) for r in rows) / len(rows)  # noqa: E731
    return {"solver": solver.name, "steps": steps, "psnr": mean("psnr"), "ssim": mean("ssim"),
            "consistency": mean("consistency"), "model_calls": int(rows[0]["model_calls"]),
            "s_per_image": secs, "peak_mb": peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", default="sr_avgpool")
    p.add_argument("--set", action="append", default=[], metavar="K=V", help="task setting (scale=4 default)")
    p.add_argument("--set-solver", action="append", default=[], metavar="SOLVER:K=V")
    p.add_argument("--sigma-y", type=float, default=0.0)
    p.add_argument("--steps", default="paper")
    p.add_argument("--solvers", default=None, help="comma-separated (default: every registered solver)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--one", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.task == "sr_avgpool" and not any(s.startswith("scale=") for s in a.set):
        a.set.append("scale=4")
    if a.one:
        print(json.dumps(one(a)))
        return
    from ddnm.solvers import SOLVERS

    names = a.solvers.split(",") if a.solvers else list(SOLVERS)
    rows = []
    for name in names:
        cmd = [sys.executable, __file__, "--one", name, "--task", a.task, "--sigma-y", str(a.sigma_y),
               "--steps", a.steps, "--device", a.device] + [f"--set={s}" for s in a.set] + \
              [f"--set-solver={s}" for s in a.set_solver]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        if proc.returncode != 0:
            print(f"{name}: failed\n{proc.stderr[-1500:]}", file=sys.stderr)
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"  {name} done ({rows[-1]['s_per_image']:.2f} s/image)", file=sys.stderr)
    base = next((r for r in rows if r["solver"] == "ddnm"), None)
    print(f"task {a.task} {' '.join(a.set)}, sigma_y {a.sigma_y}, device {a.device}, 4 held-out 64x64 crops")
    print("| solver | steps | model calls | PSNR dB | SSIM | consistency | s/image | peak MB | "
          "time / DDNM | PSNR - DDNM |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        tr = f"{r['s_per_image'] / base['s_per_image']:.2f}" if base else "-"
        dp = f"{r['psnr'] - base['psnr']:+.2f}" if base else "-"
        print(f"| {r['solver']} | {r['steps']} | {r['model_calls']} | {r['psnr']:.2f} | {r['ssim']:.3f} | "
              f"{r['consistency']:.2e} | {r['s_per_image']:.2f} | {r['peak_mb']:.0f} | {tr} | {dp} |")


if __name__ == "__main__":
    main()
