"""Adapter for a diffusers ``UNet2DModel`` saved in a LOCAL folder (optional extra ``diffusers``).

The folder is what ``UNet2DModel.save_pretrained`` writes (``config.json`` + weights), e.g. the
``unet/`` folder of a downloaded ``google/ddpm-celebahq-256`` pipeline. Nothing is downloaded here.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ddnm.models.base import EpsModel

__all__ = ["DiffusersEps", "load_diffusers_unet"]


def _import_unet2d():
    try:
        from diffusers import UNet2DModel
    except ImportError as exc:
        raise ImportError(
            "the 'diffusers' model family needs the optional dependency diffusers: "
            "pip install 'ddnm-batch[diffusers]' (or pip install diffusers)"
        ) from exc
    return UNet2DModel


class DiffusersEps(EpsModel):
    """``eps = model(x_t, t)`` for a diffusers ``UNet2DModel`` predicting epsilon."""

    family = "diffusers"

    def _run(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x, t).sample


def load_diffusers_unet(
    folder: str | Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> DiffusersEps:
    """Load ``UNet2DModel`` from ``folder`` (local files only) and wrap it as a ``DiffusersEps``.

    A folder holding a whole pipeline (with a ``unet/`` subfolder) is accepted too.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"checkpoint for 'diffusers' must be a local folder, got {str(folder)!r}")
    if not (folder / "config.json").is_file() and (folder / "unet" / "config.json").is_file():
        folder = folder / "unet"
    unet_cls = _import_unet2d()
    net: nn.Module = unet_cls.from_pretrained(str(folder), local_files_only=True)
    config = net.config
    prediction = getattr(config, "prediction_type", None)
    if prediction not in (None, "epsilon"):
        raise ValueError(f"diffusers model in {str(folder)!r} predicts {prediction!r}, not epsilon")
    size = config.sample_size
    image_size = size if isinstance(size, int) else int(size[0])
    net = net.to(device=device, dtype=dtype)  # diffusers handles its norms in low precision
    return DiffusersEps(
        net,
        name="diffusers",
        image_size=image_size,
        in_channels=int(config.in_channels),
        dtype=dtype,
        channels_last=channels_last,
        checkpoint=str(folder),
    )
