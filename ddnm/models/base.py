"""One call for every checkpoint family: ``eps = model(x_t, t)``.

``EpsModel`` wraps a network, casts ``x_t`` to the network's compute dtype (and memory format), keeps
only the first ``in_channels`` output channels (models trained with learned sigma return
``2 * in_channels``: eps, then the variance interpolation), and returns eps in ``x_t``'s dtype.
One small subclass per family says how its network is called.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ADMEps", "DDPMEps", "EpsModel", "cast_network"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def cast_network(net: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Put ``net`` in ``dtype`` for inference; returns ``net``.

    float32 / float64: every parameter. float16 / bfloat16: only the convolutions (where nearly all
    the work is), as guided-diffusion's fp16 mode does: GroupNorm, the time-embedding MLPs, the
    per-block embedding projections and the label embedding stay float32 (cheap, precision-critical).
    The networks cast activations where the two meet.
    """
    if dtype not in (torch.float32, torch.float64, *_LOW_PRECISION):
        raise ValueError(f"dtype must be float32, float64, bfloat16 or float16, got {dtype!r}")
    if dtype not in _LOW_PRECISION:
        return net.to(dtype)
    net.float()
    for module in net.modules():
        if isinstance(module, nn.Conv1d | nn.Conv2d):
            module.to(dtype)
    return net


class EpsModel(nn.Module):
    """``forward(x_t (B, C, H, W), t (B,) int64 in [0, T)) -> eps (B, C, H, W)`` in ``x_t``'s dtype.

    Attributes: ``image_size`` (training resolution), ``in_channels`` (C), ``family``, ``name``,
    ``dtype`` (compute dtype), ``num_params``, ``checkpoint`` (path, "random" or None), and the noise
    schedule the network was trained with: ``schedule`` ("linear" or "cosine") over ``num_timesteps``
    steps, as ``alpha_bar()``.
    """

    family = "generic"
    schedule = "linear"
    num_timesteps = 1000

    def __init__(
        self,
        net: nn.Module,
        *,
        image_size: int,
        in_channels: int | None = None,
        name: str | None = None,
        family: str | None = None,
        dtype: torch.dtype | None = None,
        channels_last: bool = False,
        checkpoint: str | None = None,
    ) -> None:
        """``in_channels`` defaults to ``net.config.in_channels``; ``dtype`` (the dtype ``x_t`` is
        cast to) to that of the first convolution weight; ``family`` to the class's."""
        super().__init__()
        self.net = net
        config = getattr(net, "config", None)
        if in_channels is None:
            in_channels = getattr(config, "in_channels", None)
            if in_channels is None:
                raise ValueError("in_channels must be given for a network without config.in_channels")
        if dtype is None:
            weights = [p for p in net.parameters() if p.dim() == 4] or list(net.parameters())
            dtype = weights[0].dtype
        self.name = name or type(net).__name__
        if family is not None:
            self.family = family
        self.image_size = image_size
        self.any_size = False  # set by ddnm.models.build from the registry (ModelInfo.any_size)
        self.in_channels = int(in_channels)
        self.dtype = dtype
        self.checkpoint = checkpoint
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.eval().requires_grad_(False)

    def alpha_bar(self) -> torch.Tensor:
        """``(T,)`` float64 ``alpha_bar_t`` of the schedule the network was trained with."""
        from ddnm.sampling.schedule import schedule_alpha_bar

        return schedule_alpha_bar(self.schedule, self.num_timesteps)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.net.parameters())

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def _run(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x, t)

    def _inputs(self, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cast ``x_t`` to the compute dtype / memory format; ``t`` to (B,) on ``x_t``'s device."""
        x = x_t.to(dtype=self.dtype, memory_format=self.memory_format)
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        return x, t

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x, t = self._inputs(x_t, t)
        out = self._run(x, t)
        return out[:, : self.in_channels].to(x_t.dtype)

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, family={self.family!r}, image_size={self.image_size}, "
            f"dtype={self.dtype}, checkpoint={self.checkpoint!r}"
        )


class ADMEps(EpsModel):
    """guided-diffusion ADM; class-conditional models use one fixed ``class_label`` for every image.

    ``forward(x_t, t, class_labels=None)``: per-image labels (B,) int64 override the fixed label.
    """

    family = "adm"

    def __init__(self, net: nn.Module, *, class_label: int | None = None, **kw) -> None:
        super().__init__(net, **kw)
        num_classes = net.config.num_classes
        if num_classes is None and class_label is not None:
            raise ValueError(f"class_label={class_label!r} given for an unconditional model")
        if num_classes is not None:
            label = 0 if class_label is None else class_label
            if not isinstance(label, int) or not 0 <= label < num_classes:
                raise ValueError(f"class_label must be an int in [0, {num_classes}), got {class_label!r}")
            self.class_label = label
            self.register_buffer("_label", torch.tensor([label], device=self.device), persistent=False)
        else:
            self.class_label = None

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        x, t = self._inputs(x_t, t)
        y = None
        if self.class_label is not None:
            y = self._label.expand(x.shape[0]) if class_labels is None else class_labels
        return self.net(x, t, y)[:, : self.in_channels].to(x_t.dtype)


class DDPMEps(EpsModel):
    """The DDPM "simple" UNet of SDEdit / DDIM (celeba_hq.ckpt, LSUN)."""

    family = "ddpm"
