"""Perceptual scores on the worker: LPIPS per image and the Inception features that FID / KID need.

The networks are ``ddnm.perceptual``'s, loaded once per actor from the job's weight files (a URL is
fetched once per node into the checkpoint cache, ``cluster.checkpoints.local_checkpoint``). Both score
the restored image *as written* (rounded to 8 bits exactly as ``encode_png`` does), so the committed
numbers equal what anyone computes from ``images/*.png`` and the inputs. FID and KID themselves are
computed by the driver over all committed features (``jobs.results.finalize``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cluster.checkpoints import local_checkpoint
from cluster.config import WorkerConfig


def as_png(x: torch.Tensor) -> torch.Tensor:
    """``[0, 1]`` images -> the float32 values their 8-bit PNG decodes to (``encode_png``'s rounding)."""
    return torch.round(x.float().clamp(0, 1) * 255.0) / 255.0


@dataclass(frozen=True)
class Scores:
    """Per image of a batch, on the CPU; a field is None when its weights were not given."""

    lpips: torch.Tensor | None  # (B,) float64
    features: torch.Tensor | None  # (B, 2048) float64, of the restored images
    truth_features: torch.Tensor | None  # (B, 2048) float64, of the ground truth


class PerceptualScorer:
    """LPIPS and / or Inception from the config's weight files, on `device`.

    Raises FileNotFoundError / ValueError (one line naming the file and where it comes from) for a
    missing or wrong file, so the actor fails to start with that line.
    """

    def __init__(self, config: WorkerConfig, device: torch.device):
        from ddnm import perceptual

        so = config.storage_options
        self.lpips = self.inception = None
        if config.lpips_weights:
            path = local_checkpoint(config.lpips_weights, so)
            self.lpips = perceptual.load_lpips(path, net=config.lpips_net, device=device)
        if config.inception_weights:
            self.inception = perceptual.load_inception(local_checkpoint(config.inception_weights, so), device)

    @staticmethod
    def wanted(config: WorkerConfig) -> bool:
        return bool(config.lpips_weights or config.inception_weights)

    def __call__(self, restored: torch.Tensor, truth: torch.Tensor) -> Scores:
        """restored, truth: (B, C, H, W) on [0, 1] (truth as decoded from its file)."""
        x = as_png(restored)
        return Scores(
            lpips=None if self.lpips is None else self.lpips(x, truth),
            features=None if self.inception is None else self.inception(x),
            truth_features=None if self.inception is None else self.inception(truth),
        )
