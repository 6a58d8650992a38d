"""Fit the small prior's image-mean prior (``ddnm.models.small_prior.DCPrior``) on the training crops
and store it in a weights file.

    .venv/bin/python -m train.dc_prior ddnm/models/weights/small_prior.safetensors --grey-share 0.15

For each crop side in ``--sizes``, ``--crops`` seeded crops are drawn exactly as training draws them
(``train.data.CropSampler``); the mean and covariance of their per-channel means are written under
the ``dc_prior.`` keys. The network's tensors and the file's metadata are kept.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ddnm.models.small_prior import DCPrior
from train.data import CropSampler


def fit_dc_prior(*, sizes: tuple[int, ...] = (32, 64, 128), crops: int = 4096, seed: int = 0,
                 grey_share: float | None = None) -> DCPrior:
    """Mean and covariance of the per-channel crop means at each side in ``sizes`` (float64)."""
    means, covs = [], []
    for size in sizes:
        data = CropSampler(crop=size, seed=seed, grey_share=grey_share)
        dc = torch.cat([data.batch(256).double().mean((2, 3)) for _ in range(-(-crops // 256))])
        means.append(dc.mean(0))
        covs.append(torch.cov(dc.T) + 1e-6 * torch.eye(dc.shape[1], dtype=torch.float64))
    return DCPrior(torch.tensor(sizes, dtype=torch.float64), torch.stack(means), torch.stack(covs))


def write_dc_prior(path: Path, prior: DCPrior, extra_meta: dict[str, str] | None = None) -> None:
    """Rewrite the safetensors file ``path`` with ``prior``'s tensors (replacing any earlier ones)."""
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys() if not k.startswith("dc_prior.")}
    tensors.update(prior.state())
    save_file(tensors, str(path), metadata=meta | (extra_meta or {}))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("weights", type=Path)
    p.add_argument("--sizes", default="32,64,128")
    p.add_argument("--crops", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grey-share", type=float, default=None)
    args = p.parse_args(argv)
    sizes = tuple(int(s) for s in args.sizes.split(","))
    prior = fit_dc_prior(sizes=sizes, crops=args.crops, seed=args.seed, grey_share=args.grey_share)
    write_dc_prior(args.weights, prior, {"dc_prior": f"sizes {list(sizes)}, {args.crops} crops each, "
                                          f"seed {args.seed}, grey_share {args.grey_share}"})
    for size, mu, cov in zip(sizes, prior.mean, prior.cov, strict=True):
        std = cov.diagonal().sqrt()
        mean_s, std_s = [round(v, 3) for v in mu.tolist()], [round(v, 3) for v in std.tolist()]
        print(f"{size:4d}px  mean {mean_s}  std {std_s}")
    print(f"wrote {args.weights}")


if __name__ == "__main__":
    main()
