"""The ADM UNet of OpenAI's guided-diffusion (Dhariwal & Nichol, 2021), written from its description.

Our own implementation whose ``state_dict`` matches the released checkpoints key for key and shape
for shape (``256x256_diffusion_uncond.pt``: 566 keys, 552,814,086 parameters; the class-conditional
``256x256_diffusion.pt``: 567 keys; ``ffhq_10m.pt`` of DPS / DiffPIR). Module names therefore follow
the checkpoint: ``time_embed``, ``label_emb``, ``input_blocks``, ``middle_block``,
``output_blocks``, ``out``.

Differences from the reference that do not change the numbers: attention runs through
``torch.nn.functional.scaled_dot_product_attention`` (the checkpoints' "legacy" per-head q/k/v
layout is unpacked by a reshape), and GroupNorm always computes in float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ADMConfig", "ADMUNet", "GroupNorm32", "timestep_embedding", "zero_init_"]


@dataclass(frozen=True, kw_only=True)
class ADMConfig:
    """Architecture of an ADM UNet; the defaults are the 256x256 ImageNet unconditional model."""

    image_size: int = 256
    """Side of the (square) training images in pixels; only used to place attention."""
    in_channels: int = 3
    """Channels of ``x_t``."""
    model_channels: int = 256
    """Base width; level ``i`` has ``model_channels * channel_mult[i]`` channels."""
    out_channels: int | None = None
    """Output channels; ``None`` -> ``in_channels * (2 if learn_sigma else 1)``."""
    num_res_blocks: int = 2
    """Residual blocks per level on the way down (``+1`` on the way up)."""
    attention_resolutions: tuple[int, ...] = (32, 16, 8)
    """Feature-map sides (pixels, e.g. 32 = 256 / 8) at which self-attention blocks sit."""
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    """Width multiplier per level; ``len - 1`` downsamplings."""
    num_heads: int = 4
    """Attention heads, used only when ``num_head_channels == -1``."""
    num_head_channels: int = 64
    """Channels per head (overrides ``num_heads``); ``-1`` to use a fixed ``num_heads``."""
    num_heads_upsample: int = -1
    """Heads in the decoder's attention when ``num_head_channels == -1``; ``-1`` -> ``num_heads``."""
    learn_sigma: bool = True
    """Whether the network also outputs the variance interpolation (doubles the output channels)."""
    use_scale_shift_norm: bool = True
    """FiLM-style ``norm(h) * (1 + scale) + shift`` time conditioning instead of ``h + emb``."""
    resblock_updown: bool = True
    """Resample with residual blocks (True) or with plain (conv) resampling layers (False)."""
    conv_resample: bool = True
    """With ``resblock_updown=False``: 3x3 convolution in the resampling layers."""
    num_classes: int | None = None
    """Classes of the class-conditional model (adds ``label_emb``); ``None`` = unconditional."""
    dropout: float = 0.0
    """Dropout in the residual blocks (0 at inference)."""
    use_new_attention_order: bool = False
    """q/k/v split before heads (True) or the released checkpoints' per-head "legacy" order."""
    norm_groups: int = 32
    """GroupNorm groups (32 in every released checkpoint; fewer for tiny test models)."""

    def __post_init__(self) -> None:
        for name in ("image_size", "in_channels", "model_channels", "num_res_blocks"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ADMConfig.{name} must be a positive int, got {value!r}")
        if self.out_channels is None:
            object.__setattr__(self, "out_channels", self.in_channels * (2 if self.learn_sigma else 1))
        elif self.out_channels < 1:
            raise ValueError(f"ADMConfig.out_channels must be >= 1, got {self.out_channels!r}")
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        object.__setattr__(self, "attention_resolutions", tuple(self.attention_resolutions))
        if not self.channel_mult or any(m < 1 for m in self.channel_mult):
            raise ValueError(f"ADMConfig.channel_mult must be positive ints, got {self.channel_mult!r}")
        if self.image_size % (2 ** (len(self.channel_mult) - 1)):
            raise ValueError(
                f"ADMConfig.image_size {self.image_size} is not divisible by "
                f"2**{len(self.channel_mult) - 1} (channel_mult={self.channel_mult})"
            )
        if self.norm_groups < 1:
            raise ValueError(f"ADMConfig.norm_groups must be >= 1, got {self.norm_groups!r}")
        for width in {self.model_channels * m for m in self.channel_mult}:
            if width % self.norm_groups:
                raise ValueError(
                    f"ADMConfig.model_channels * channel_mult must be multiples of "
                    f"norm_groups={self.norm_groups}, got width {width}"
                )
            if self.num_head_channels != -1 and width % self.num_head_channels:
                raise ValueError(
                    f"ADMConfig.num_head_channels={self.num_head_channels} does not divide width {width}"
                )
        if self.num_head_channels == -1 and self.num_heads < 1:
            raise ValueError(f"ADMConfig.num_heads must be >= 1, got {self.num_heads!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ADMConfig.dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def attention_ds(self) -> frozenset[int]:
        """Downsampling factors (1, 2, 4, ...) at which attention blocks sit."""
        return frozenset(self.image_size // r for r in self.attention_resolutions)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[cos(t f_i), sin(t f_i)]``, ``f_i = max_period^(-i / (dim // 2))``.

    t: (B,) int or float timesteps -> (B, dim) float32 (zero-padded when ``dim`` is odd).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.to(torch.float32)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm (32 groups by default) computed in float32 whatever the input and parameter dtypes."""

    def __init__(self, channels: int, eps: float = 1e-5, groups: int = 32) -> None:
        super().__init__(groups, channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps)
        return out.to(x.dtype)


class _Down(nn.Module):
    """Halve the resolution: strided 3x3 conv (key ``op``) or 2x2 average pooling."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = out_channels or channels
        if use_conv:
            self.op = nn.Conv2d(channels, out_channels, 3, stride=2, padding=1)
        else:
            if out_channels != channels:
                raise ValueError("pooling cannot change the channel count")
            self.op = nn.AvgPool2d(2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class _Up(nn.Module):
    """Double the resolution: nearest neighbour, then an optional 3x3 conv (key ``conv``)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = out_channels or channels
        self.conv = nn.Conv2d(channels, out_channels, 3, padding=1) if use_conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return x if self.conv is None else self.conv(x)


class ResBlock(nn.Module):
    """Residual block with time conditioning, optionally resampling (``up`` / ``down``)."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        out_channels: int,
        *,
        dropout: float,
        use_scale_shift_norm: bool,
        up: bool = False,
        down: bool = False,
        groups: int = 32,
    ) -> None:
        super().__init__()
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            GroupNorm32(channels, groups=groups), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = _Up(channels, False), _Up(channels, False)
        elif down:
            self.h_upd, self.x_upd = _Down(channels, False), _Down(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        emb_out = 2 * out_channels if use_scale_shift_norm else out_channels
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, emb_out))
        self.out_layers = nn.Sequential(
            GroupNorm32(out_channels, groups=groups),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        if out_channels == channels:
            self.skip_connection = nn.Identity()
        else:
            self.skip_connection = nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            h = self.in_layers[1](self.in_layers[0](x))
            h = self.in_layers[2](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        e = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            for layer in self.out_layers[1:]:
                h = layer(h)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all pixels, residual, with 1x1 Conv1d q/k/v and projection.

    The released checkpoints store q/k/v per head ("legacy" order): the 3C output rows of ``qkv``
    are ``[q_0, k_0, v_0, q_1, k_1, v_1, ...]`` with ``C / heads`` rows each. With
    ``new_order=True`` they are ``[q_0..q_H, k_0..k_H, v_0..v_H]``. Both orders scale by
    ``1/sqrt(C / heads)``, the default of scaled_dot_product_attention.
    """

    def __init__(self, channels: int, num_heads: int, new_order: bool = False, groups: int = 32) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.new_order = new_order
        self.norm = GroupNorm32(channels, groups=groups)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Work in (B, T, C) so that q, k, v reach SDPA with unit stride on the head dimension (what
        # the fused kernels want) and a channels_last input needs no copy; the 1x1 Conv1d weights
        # (out, in, 1) of the checkpoint are applied as linear maps.
        b, c, *spatial = x.shape
        heads = self.num_heads
        ch = c // heads
        h = self.norm(x.reshape(b, c, -1)).transpose(1, 2)  # (B, T, C)
        qkv = F.linear(h, self.qkv.weight.squeeze(-1), self.qkv.bias)  # (B, T, 3C)
        n = qkv.shape[1]
        if self.new_order:
            q, k, v = qkv.view(b, n, 3, heads, ch).unbind(2)  # (B, T, H, ch) each
        else:
            q, k, v = qkv.view(b, n, heads, 3 * ch).split(ch, dim=-1)
        h = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        h = h.transpose(1, 2).reshape(b, n, c)  # (B, T, C)
        h = F.linear(h, self.proj_out.weight.squeeze(-1), self.proj_out.bias)
        return x + h.transpose(1, 2).reshape(b, c, *spatial)


class _EmbSequential(nn.Sequential):
    """Sequential that hands the embedding to the residual blocks among its layers."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class ADMUNet(nn.Module):
    """ADM UNet: ``forward(x (B, C, H, W), timesteps (B,), y (B,) | None) -> (B, out_channels, H, W)``.

    ``timesteps`` are integer (or float) diffusion steps in [0, 1000); ``y`` holds class indices and is
    required exactly when ``config.num_classes`` is set. With ``learn_sigma`` the first
    ``in_channels`` output channels are the noise prediction eps.
    """

    def __init__(self, config: ADMConfig) -> None:
        super().__init__()
        self.config = cfg = config
        mc = cfg.model_channels
        emb_dim = 4 * mc
        attn_ds = cfg.attention_ds

        def res(ch_in: int, ch_out: int, **kw: bool) -> ResBlock:
            return ResBlock(
                ch_in,
                emb_dim,
                ch_out,
                dropout=cfg.dropout,
                use_scale_shift_norm=cfg.use_scale_shift_norm,
                groups=cfg.norm_groups,
                **kw,
            )

        def attn(ch: int, heads: int) -> AttentionBlock:
            if cfg.num_head_channels != -1:
                heads = ch // cfg.num_head_channels
            return AttentionBlock(ch, heads, cfg.use_new_attention_order, cfg.norm_groups)

        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if cfg.num_classes is not None:
            self.label_emb = nn.Embedding(cfg.num_classes, emb_dim)

        ch = mc * cfg.channel_mult[0]
        self.input_blocks = nn.ModuleList([_EmbSequential(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))])
        skip_chans, ds = [ch], 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [res(ch, mult * mc)]
                ch = mult * mc
                if ds in attn_ds:
                    layers.append(attn(ch, cfg.num_heads))
                self.input_blocks.append(_EmbSequential(*layers))
                skip_chans.append(ch)
            if level != len(cfg.channel_mult) - 1:
                if cfg.resblock_updown:
                    down: nn.Module = res(ch, ch, down=True)
                else:
                    down = _Down(ch, cfg.conv_resample)
                self.input_blocks.append(_EmbSequential(down))
                skip_chans.append(ch)
                ds *= 2

        self.middle_block = _EmbSequential(res(ch, ch), attn(ch, cfg.num_heads), res(ch, ch))

        heads_up = cfg.num_heads if cfg.num_heads_upsample == -1 else cfg.num_heads_upsample
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [res(ch + skip_chans.pop(), mc * mult)]
                ch = mc * mult
                if ds in attn_ds:
                    layers.append(attn(ch, heads_up))
                if level and i == cfg.num_res_blocks:
                    layers.append(res(ch, ch, up=True) if cfg.resblock_updown else _Up(ch, cfg.conv_resample))
                    ds //= 2
                self.output_blocks.append(_EmbSequential(*layers))

        self.out = nn.Sequential(
            GroupNorm32(ch, groups=cfg.norm_groups), nn.SiLU(), nn.Conv2d(ch, cfg.out_channels, 3, padding=1)
        )

    def forward(
        self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        cfg = self.config
        if (y is None) != (cfg.num_classes is None):
            raise ValueError(
                "y (class labels) must be given exactly when the model is class-conditional "
                f"(num_classes={cfg.num_classes}), got y={'None' if y is None else 'a tensor'}"
            )
        emb_dtype = self.time_embed[0].weight.dtype
        emb = self.time_embed(timestep_embedding(timesteps, cfg.model_channels).to(emb_dtype))
        if y is not None:
            emb = emb + self.label_emb(y)
        h = x.to(self.input_blocks[0][0].weight.dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)


def zero_init_(model: ADMUNet) -> ADMUNet:
    """Zero the last conv of every residual branch, attention projection and output, as ADM trains.

    ``ADMUNet`` itself keeps PyTorch's default (non-zero) init so that a random model is a
    meaningful test function; call this before training from scratch. Returns ``model``.
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, ResBlock):
                targets = [module.out_layers[-1]]
            elif isinstance(module, AttentionBlock):
                targets = [module.proj_out]
            else:
                continue
            for layer in targets:
                layer.weight.zero_()
                layer.bias.zero_()
        model.out[-1].weight.zero_()
        model.out[-1].bias.zero_()
    return model
