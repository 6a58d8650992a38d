"""Write ``ddnm/models/weights/MODEL_CARD.md`` from a training run and an evaluation printout.

    .venv/bin/python -m train.model_card --run runs/prior [runs/finetune ...] --eval eval.txt

Each ``--run`` holds ``ckpt.pt`` (its arguments, step, wall time and loss history), in training
order (a fine-tune started with ``--init`` from the previous run's weights); ``--eval`` is the
output of ``python -m train.eval_prior`` on the committed weights, copied verbatim into the card.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ddnm.models.small_prior import SMALL_PRIOR_CONFIG, WEIGHTS, build_small_prior
from train.data import HELD_OUT, SCALES, TRAIN_PHOTOS

CARD = WEIGHTS.parent / "MODEL_CARD.md"


def curve(history: list[dict], rows: int = 16, *, step0: int = 0, minutes0: float = 0.0) -> list[str]:
    """Loss vs step as markdown table rows; each row averages the log windows since the previous
    row. ``step0`` and ``minutes0`` offset a fine-tune's counters to the whole training's."""
    n = max(1, len(history) // rows)
    out = []
    for i in range(0, len(history), n):
        chunk = history[i:i + n]
        loss = sum(h["loss"] for h in chunk) / len(chunk)
        last = chunk[-1]
        out.append(f"| {step0 + last['step']} | {minutes0 + last['minutes']:.1f} | {loss:.4f} | "
                   f"{last.get('lr', 0):.2e} |")
    return out


def command(a: dict) -> str:
    """The training command of one run, from its recorded arguments."""
    parts = [f"--steps {a['steps']}", f"--time-limit {a['time_limit']:g}", f"--batch {a['batch']}",
             f"--lr {a['lr']:g}", f"--warmup {a['warmup']}", f"--seed {a['seed']}", f"--crop {a['crop']}"]
    if a.get("init") not in (None, "None"):
        parts.append("--init <previous run>/small_prior.safetensors")
    if a.get("grey_share") is not None:
        parts.append(f"--grey-share {a['grey_share']:g}")
    return "OMP_NUM_THREADS=2 .venv/bin/python -m train.train_prior " + " ".join(parts) + " --out <run>"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, nargs="+", required=True, help="training runs, in order")
    p.add_argument("--eval", type=Path, required=True)
    p.add_argument("--notes", default="", help="extra text for the Results section")
    args = p.parse_args(argv)
    cks = [torch.load(r / "ckpt.pt", map_location="cpu", weights_only=False) for r in args.run]
    params = sum(v.numel() for v in cks[-1]["ema"].values())
    final = sum(h["loss"] for h in cks[-1]["history"][-8:]) / max(1, len(cks[-1]["history"][-8:]))
    photos = ", ".join(f"{k} ({v:g})" for k, v in TRAIN_PHOTOS.items())
    scales = ", ".join(f"{s:g} ({w:.0%})" for s, w in SCALES.items())
    steps = sum(ck["step"] for ck in cks)
    minutes = sum(ck["wall"] for ck in cks) / 60
    rows = ["| step | minutes | loss (mean over the rows' log windows) | lr |", "|---:|---:|---:|---:|"]
    stages, step0, min0 = [], 0, 0.0
    for n, ck in enumerate(cks, 1):
        a = ck["args"]
        rows += curve(ck["history"], 12, step0=step0, minutes0=min0)
        grey = "the photos' own weights" if a.get("grey_share") is None else f"{a['grey_share']:.0%}"
        stages.append(f"{n}. {ck['step']:,} steps of batch {a['batch']} ({ck['wall'] / 60:.0f} min), "
                      f"{a['crop']}x{a['crop']} crops, grey photos' share of draws: {grey}, lr {a['lr']:g} "
                      f"with {a['warmup']} warm-up steps and a cosine decay to 10 % over "
                      f"{a['time_limit']:g} min:\n\n       {command(a)}\n")
        step0, min0 = step0 + ck["step"], min0 + ck["wall"] / 60
    dc = build_small_prior().dc_prior
    from safetensors import safe_open

    with safe_open(str(WEIGHTS), framework="pt") as f:
        dc_fit = (f.metadata() or {}).get("dc_prior", "unknown")
    dc_rows = "\n".join(
        f"| {int(size)} | {', '.join(f'{v:+.3f}' for v in mu.tolist())} | "
        f"{', '.join(f'{v:.3f}' for v in cov.diagonal().sqrt().tolist())} |"
        for size, mu, cov in zip(dc.sizes, dc.mean, dc.cov, strict=True)) if dc is not None else "(none)"
    stage_text = "\n".join(stages)
    curve_text = "\n".join(rows)
    text = f"""# Model card: small-prior

A small diffusion prior trained for this project so that the demo, CI and every test run on a CPU
without downloads. Load it by name: `ddnm.models.build("small-prior")` (or `--model small-prior`).

## Model
- Architecture: the ADM UNet of `ddnm/models/adm.py` (guided-diffusion layout), configuration
  `SMALL_PRIOR_CONFIG` in `ddnm/models/small_prior.py`:
  `{SMALL_PRIOR_CONFIG}`
- Parameters: {params:,}; weights: `small_prior.safetensors`, float32,
  {WEIGHTS.stat().st_size / 2**20:.1f} MiB (the EMA of the training weights).
- Predicts eps for the public linear schedule (betas 1e-4 .. 0.02, T = 1000), 3 output channels
  (no learned sigma); images RGB in [-1, 1]. Fully convolutional (plus attention at 1/4 and 1/8 of
  the input side): trained on 32x32 crops, it samples any side divisible by 8.
- The adapter (`SmallPriorEps`) adds two things to the network's eps, both documented in
  `ddnm/models/small_prior.py`:
  - **The image-mean prior.** The UNet cannot see its input's per-channel means: its last
    GroupNorm has one channel per group. So eps's per-channel mean is replaced by the Bayes
    estimate under a Gaussian prior on the image's channel means, fitted on the training crops
    (`train/dc_prior.py`; this file's: {dc_fit}) and stored in the weights file under `dc_prior.*`.
  - **The clamp.** eps is made consistent with the x0 estimate clamped to [-1, 1].

  The Gaussian's mean and standard deviation per channel (R, G, B, in [-1, 1]):

  | crop side | mean | std |
  |---:|---|---|
{chr(10).join("  " + r for r in dc_rows.splitlines())}

## Data
scikit-image's bundled photos (`skimage.data`, offline), converted to RGB (grey images replicated),
as a pyramid at scales {scales} (box downsampling; the share is the probability of drawing that
level), random crops and horizontal flips, seeded (`train/data.py`).
Photos and weights (a level's draw probability is its photo's weight times its scale's share,
whatever its size; `--grey-share` rescales the grey photos' total):
{photos}.
Held out entirely: {", ".join(HELD_OUT)} (== cat): the evaluation set and the demo images.
Licences: public domain / CC0 per scikit-image's docstrings, except the Middlebury 2014 stereo pair
(`stereo_motorcycle`), distributed with scikit-image for research use.

## Training
`train/train_prior.py`: seeded and resumable (`--resume`; a resumed run logs exactly the losses of
an uninterrupted one, which a test checks). Loss: MSE between eps and the prediction, t uniform in
[0, 1000) (DDPM, eq. 14). AdamW (weight decay 0), grad-norm clip 1.0, EMA decay 0.999 (the EMA
ships); residual branches' last layers and the output conv zero-initialised. In {len(cks)} stage(s),
{steps:,} steps and {minutes:.0f} minutes of wall time in all on a 2-core CPU:

{stage_text}
Stage 1 shared the CPU with up to 7 other processes (0.2-3.5 it/s); later stages ran with the
machine mostly to themselves. Final loss (mean of the last 8 log windows): {final:.4f}.

Training curve (steps and minutes counted across the stages):

{curve_text}

## Evaluation
Printed by `OMP_NUM_THREADS=2 .venv/bin/python -m train.eval_prior --threads 2` from the committed weights
(`train/eval_prior.py`: fixed seeded 64x64 patches of the held-out photos, DDNM 50 steps, eta 0.85):

```
{args.eval.read_text().rstrip()}
```
{args.notes}
## Limitations
A 1.7 M-parameter prior trained for a few hours on a few photos: it knows local texture and
colour statistics, not objects. It is for demos, CI and tests; production restoration uses the
public 256x256 checkpoints (`adm-256-uncond`, ...). A single posterior sample scores below the
MMSE-optimal mean in PSNR by design (samples carry the posterior's variance). The global colour a
colorization sample picks comes from the image-mean prior conditioned on brightness, not from
what the image shows: six colour photos cannot teach that cats are brown.
"""
    CARD.write_text(text)
    print(CARD)


if __name__ == "__main__":
    main()
