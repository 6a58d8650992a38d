"""Write ``ddnm/models/weights/MODEL_CARD.md`` from a training run and an evaluation printout.

    .venv/bin/python -m train.model_card --run runs/prior --eval eval.txt

``--run`` holds ``ckpt.pt`` (its arguments, step, wall time and loss history); ``--eval`` is the
output of ``python -m train.eval_prior`` on the committed weights, copied verbatim into the card.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ddnm.models.small_prior import SMALL_PRIOR_CONFIG, WEIGHTS
from train.data import HELD_OUT, SCALES, TRAIN_PHOTOS

CARD = WEIGHTS.parent / "MODEL_CARD.md"


def curve(history: list[dict], rows: int = 16) -> str:
    """Loss vs step as a markdown table; each row averages the log windows since the previous row."""
    if not history:
        return "(no history)"
    n = max(1, len(history) // rows)
    out = ["| step | minutes | loss (mean over the rows' log windows) | lr |", "|---:|---:|---:|---:|"]
    for i in range(0, len(history), n):
        chunk = history[i:i + n]
        loss = sum(h["loss"] for h in chunk) / len(chunk)
        last = chunk[-1]
        out.append(f"| {last['step']} | {last['minutes']:.1f} | {loss:.4f} | {last.get('lr', 0):.2e} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--eval", type=Path, required=True)
    p.add_argument("--notes", default="", help="extra text for the Results section")
    args = p.parse_args(argv)
    ck = torch.load(args.run / "ckpt.pt", map_location="cpu", weights_only=False)
    a, hist = ck["args"], ck["history"]
    params = sum(v.numel() for v in ck["ema"].values())
    final = sum(h["loss"] for h in hist[-8:]) / max(1, len(hist[-8:]))
    photos = ", ".join(f"{k} ({v:g})" for k, v in TRAIN_PHOTOS.items())
    scales = ", ".join(f"{s:g} ({w:.0%})" for s, w in SCALES.items())
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

## Data
scikit-image's bundled photos (`skimage.data`, offline), converted to RGB (grey images replicated),
as a pyramid at scales {scales} (box downsampling; the share is the probability of drawing that
level), random {a['crop']}x{a['crop']} crops and horizontal flips, seeded (`train/data.py`).
Photos and weights (a level's draw probability is its photo's weight times its scale's share,
whatever its size; colour photos weigh more so the prior keeps colour statistics):
{photos}.
Held out entirely: {", ".join(HELD_OUT)} (== cat): the evaluation set and the demo images.
Licences: public domain / CC0 per scikit-image's docstrings, except the Middlebury 2014 stereo pair
(`stereo_motorcycle`), distributed with scikit-image for research use.

## Training
Command (`train/train_prior.py`, resumable with `--resume`):

    OMP_NUM_THREADS=1 .venv/bin/python -m train.train_prior --steps {a['steps']} \\
        --time-limit {a['time_limit']:g} --batch {a['batch']} --lr {a['lr']:g} --seed {a['seed']} \\
        --crop {a['crop']} --threads {a['threads']} --log-every {a['log_every']} --out runs/prior

- Loss: MSE between eps and the prediction, t uniform in [0, 1000) (DDPM, eq. 14).
- AdamW (weight decay 0), lr {a['lr']:g}, {a['warmup']} warm-up steps, cosine decay to 10 % over
  the time limit ({a['time_limit']:g} min) or `--steps`, whichever comes first; grad-norm clip 1.0;
  EMA decay {a['ema']}; residual branches' last layers and the output conv zero-initialised.
- Ran {ck['step']:,} steps of batch {a['batch']} ({ck['step'] * a['batch']:,} crops) in
  {ck['wall'] / 60:.0f} minutes of wall time on a 2-core CPU shared with ~7 other processes
  (one or two threads; 0.2-3.5 it/s depending on the load). It was stopped and resumed from its
  checkpoint (`--resume`) three times (thread count changed with the load; an evaluation of the
  85-minute weights in between); resumed runs log exactly the losses the uninterrupted run logs.
  Final loss (mean of the last 8 log
  windows): {final:.4f}.

Training curve:

{curve(hist)}

## Evaluation
Printed by `OMP_NUM_THREADS=2 .venv/bin/python -m train.eval_prior --threads 2` from the committed weights
(`train/eval_prior.py`: fixed seeded 64x64 patches of the held-out photos, DDNM 50 steps, eta 0.85):

```
{args.eval.read_text().rstrip()}
```
{args.notes}
## Limitations
A 1.7 M-parameter prior trained for about an hour on a few photos: it knows local texture and
colour statistics, not objects. It is for demos, CI and tests; production restoration uses the
public 256x256 checkpoints (`adm-256-uncond`, ...). A single posterior sample scores below the
MMSE-optimal mean in PSNR by design (samples carry the posterior's variance).
"""
    CARD.write_text(text)
    print(CARD)


if __name__ == "__main__":
    main()
