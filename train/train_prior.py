"""Train the small diffusion prior (an ADM UNet, eps prediction, linear schedule, T = 1000).

Reproducible and resumable::

    .venv/bin/python -m train.train_prior --steps 20000 --batch 16 --lr 1e-3 --seed 0 \\
        --out runs/prior --threads 2 [--resume] [--time-limit 70]

Data: random crops of scikit-image's bundled photos (``train/data.py``; chelsea and coffee held out).
Loss: ``|| eps - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t) ||^2`` with ``t`` uniform in
``[0, T)`` (DDPM, Ho et al. 2020, eq. 14). AdamW with a linear warm-up and a cosine decay to 10 %
of ``--lr`` over ``--steps``; an exponential moving average (EMA) of the weights is what ships.

Writes into ``--out``: ``ckpt.pt`` (model, EMA, optimizer, step, every generator's state, loss
history; written atomically every ``--ckpt-every`` seconds and at the end), ``history.json`` and,
at the end, ``small_prior.safetensors`` (the EMA weights, float32).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from ddnm.models.small_prior import SMALL_PRIOR_CONFIG, small_prior_unet
from train.data import CropSampler

T = 1000


def linear_alpha_bar(T: int = T) -> torch.Tensor:
    """(T,) float64 alpha_bar of the public linear schedule (betas 1e-4 .. 0.02)."""
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, dim=0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=20000, help="optimizer steps (the cosine decay spans them)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200, help="linear warm-up steps")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay (warmed up as (1+n)/(10+n))")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--crop", type=int, default=32)
    p.add_argument("--out", type=Path, default=Path("runs/prior"))
    p.add_argument("--resume", action="store_true", help="continue from --out/ckpt.pt")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--ckpt-every", type=float, default=300.0, help="seconds between checkpoints")
    p.add_argument("--stop-at", type=int, default=0,
                   help="pause after this many steps (the schedule still spans --steps; 0 = no pause)")
    p.add_argument("--time-limit", type=float, default=0.0, help="minutes; stop early (0 = none)")
    p.add_argument("--export-only", action="store_true", help="write the EMA safetensors from ckpt.pt")
    p.add_argument("--init", type=Path, default=None,
                   help="start model and EMA from these weights (.safetensors or ckpt.pt): fine-tuning")
    p.add_argument("--dc-crops", type=int, default=4096, help="crops per side for the image-mean prior")
    p.add_argument("--grey-share", type=float, default=None,
                   help="share of draws from grey photos (default: their weights in train/data.py)")
    return p.parse_args(argv)


def lr_at(step: int, minutes: float, args: argparse.Namespace) -> float:
    """Warm-up, then cosine decay to 10 %; progress is steps done or, with a time limit, time
    spent, whichever is further along (so a time-limited run still ends at the low rate)."""
    warm = min(1.0, (step + 1) / max(1, args.warmup))
    frac = min(1.0, step / max(1, args.steps))
    if args.time_limit:
        frac = max(frac, min(1.0, minutes / args.time_limit))
    return args.lr * warm * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * frac)))


def zero_init_outputs(unet: torch.nn.Module) -> None:
    """Zero the last layer of every residual branch and the output conv (as guided-diffusion
    initializes them): the untrained net is the identity plus a zero eps, which trains faster."""
    for name, module in unet.named_modules():
        last_conv = name.endswith("out_layers.3") or name.endswith("proj_out") or name == "out.2"
        if last_conv and isinstance(module, (torch.nn.Conv1d, torch.nn.Conv2d)):
            torch.nn.init.zeros_(module.weight)
            torch.nn.init.zeros_(module.bias)


def save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def export(ema: torch.nn.Module, path: Path, meta: dict) -> None:
    tensors = {k: v.detach().float().contiguous() for k, v in ema.state_dict().items()}
    save_file(tensors, str(path), metadata={k: str(v) for k, v in meta.items()})


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt_path = args.out / "ckpt.pt"

    model = small_prior_unet()
    zero_init_outputs(model)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    data = CropSampler(crop=args.crop, seed=args.seed, grey_share=args.grey_share)
    gen = torch.Generator().manual_seed(args.seed + 1)
    abar = linear_alpha_bar().float()
    sa, s1 = abar.sqrt(), (1.0 - abar).sqrt()
    step, history, wall = 0, [], 0.0

    if args.init is not None and not args.resume:
        from ddnm.models.small_prior import load_small_prior_weights

        load_small_prior_weights(model, args.init)
        ema.load_state_dict(model.state_dict())
        print(f"initialised from {args.init}", flush=True)

    if args.resume or args.export_only:
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        opt.load_state_dict(ck["opt"])
        data.set_state(ck["data_rng"])
        gen.set_state(ck["gen_rng"])
        step, history, wall = ck["step"], ck["history"], ck["wall"]
        print(f"resumed at step {step} ({wall / 60:.1f} min trained)", flush=True)

    nparams = sum(p.numel() for p in model.parameters())
    meta = {"params": nparams, "config": SMALL_PRIOR_CONFIG, "batch": args.batch, "lr": args.lr,
            "crop": args.crop, "seed": args.seed, "ema": args.ema,
            "init": str(args.init), "grey_share": args.grey_share}
    print(f"params {nparams:,}  config {SMALL_PRIOR_CONFIG}", flush=True)

    def checkpoint() -> None:
        run_args = vars(args) | {"out": str(args.out), "init": str(args.init)}
        save_checkpoint(ckpt_path, {"model": model.state_dict(), "ema": ema.state_dict(),
                                    "opt": opt.state_dict(), "data_rng": data.state(),
                                    "gen_rng": gen.get_state(), "step": step, "history": history,
                                    "wall": wall, "args": run_args})
        (args.out / "history.json").write_text(json.dumps(history, indent=0))

    t_start, t_ckpt = time.time(), time.time()
    wall0, window, t_log = wall, [], time.time()
    model.train()
    while step < args.steps and not args.export_only:
        for group in opt.param_groups:
            group["lr"] = lr_at(step, wall / 60, args)
        x0 = data.batch(args.batch)
        t = torch.randint(0, T, (args.batch,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        xt = sa[t].view(-1, 1, 1, 1) * x0 + s1[t].view(-1, 1, 1, 1) * noise
        loss = torch.nn.functional.mse_loss(model(xt, t), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters(), strict=True):
                pe.lerp_(pm, 1.0 - decay)
            for be, bm in zip(ema.buffers(), model.buffers(), strict=True):
                be.copy_(bm)
        window.append(loss.item())
        wall = wall0 + time.time() - t_start
        if step % args.log_every == 0:
            rate = len(window) / max(1e-9, time.time() - t_log)
            avg = sum(window) / len(window)
            history.append({"step": step, "loss": round(avg, 5), "minutes": round(wall / 60, 2),
                            "lr": lr_at(step, wall / 60, args)})
            print(f"step {step:6d}  loss {avg:.4f}  lr {lr_at(step, wall / 60, args):.2e}  {rate:.2f} it/s  "
                  f"{wall / 60:.1f} min", flush=True)
            window, t_log = [], time.time()
        if time.time() - t_ckpt > args.ckpt_every:
            checkpoint()
            t_ckpt = time.time()
        if args.stop_at and step >= args.stop_at:
            print(f"paused at step {step}; continue with --resume", flush=True)
            break
        if args.time_limit and wall / 60 > args.time_limit:
            print(f"time limit reached at step {step}", flush=True)
            break

    if not args.export_only:
        checkpoint()
    final = history[-1]["loss"] if history else float("nan")
    weights = args.out / "small_prior.safetensors"
    export(ema, weights, meta | {"steps": step, "minutes": round(wall / 60, 1), "final_loss": final})
    from train.dc_prior import fit_dc_prior, write_dc_prior  # the image-mean prior ships with the net

    dc = fit_dc_prior(crops=args.dc_crops, seed=args.seed, grey_share=args.grey_share)
    write_dc_prior(weights, dc, {"dc_prior": f"train.dc_prior: {args.dc_crops} crops per side, "
                                             f"seed {args.seed}, grey_share {args.grey_share}"})
    print(f"done: step {step}, {wall / 60:.1f} min, final loss {final}, "
          f"weights {weights}", flush=True)


if __name__ == "__main__":
    main()
