"""The "simple" DDPM UNet of Ho et al. (2020) as ported to PyTorch by SDEdit / DDIM.

Our own implementation whose ``state_dict`` matches ``celeba_hq.ckpt`` (and the LSUN checkpoints of
the same family) key for key: 450 keys, 113,673,219 parameters for the CelebA-HQ 256 configuration.
Keys: ``temb.dense``, ``conv_in``, ``down``, ``mid``, ``up``, ``norm_out``, ``conv_out``.
Attention is single-head and runs through ``scaled_dot_product_attention``; GroupNorm (eps 1e-6)
computes in float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ddnm.models.adm import GroupNorm32

__all__ = ["DDPMConfig", "DDPMUNet", "ddpm_timestep_embedding"]


@dataclass(frozen=True, kw_only=True)
class DDPMConfig:
    """Architecture of the DDPM UNet; the defaults are the CelebA-HQ 256 checkpoint."""

    image_size: int = 256
    """Side of the training images in pixels; only used to place attention."""
    in_channels: int = 3
    """Channels of ``x_t``."""
    out_channels: int = 3
    """Output channels (3: eps only, fixed variance)."""
    ch: int = 128
    """Base width; level ``i`` has ``ch * ch_mult[i]`` channels."""
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    """Width multiplier per level; ``len - 1`` downsamplings."""
    num_res_blocks: int = 2
    """Residual blocks per level on the way down (``+1`` on the way up)."""
    attn_resolutions: tuple[int, ...] = (16,)
    """Feature-map sides (pixels) at which single-head attention blocks sit."""
    resamp_with_conv: bool = True
    """Convolutions in the up/down-sampling layers (else nearest / average pooling only)."""
    dropout: float = 0.0
    """Dropout in the residual blocks (0 at inference)."""

    def __post_init__(self) -> None:
        for name in ("image_size", "in_channels", "out_channels", "ch", "num_res_blocks"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"DDPMConfig.{name} must be a positive int, got {value!r}")
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(self.attn_resolutions))
        if not self.ch_mult or any(m < 1 for m in self.ch_mult):
            raise ValueError(f"DDPMConfig.ch_mult must be positive ints, got {self.ch_mult!r}")
        if self.image_size % (2 ** (len(self.ch_mult) - 1)):
            raise ValueError(
                f"DDPMConfig.image_size {self.image_size} is not divisible by "
                f"2**{len(self.ch_mult) - 1} (ch_mult={self.ch_mult})"
            )
        if any((self.ch * m) % 32 for m in self.ch_mult):
            raise ValueError(f"DDPMConfig.ch * ch_mult must be multiples of 32, got ch={self.ch}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"DDPMConfig.dropout must be in [0, 1), got {self.dropout!r}")


def ddpm_timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """DDPM sinusoidal embedding ``[sin(t f_i), cos(t f_i)]``, ``f_i = 10000^(-i / (dim/2 - 1))``.

    Note the order (sin first) and the ``dim/2 - 1`` denominator, both unlike ADM.
    t: (B,) -> (B, dim) float32.
    """
    half = dim // 2
    freqs = torch.exp(
        torch.arange(half, dtype=torch.float32, device=t.device) * (-math.log(10000.0) / (half - 1))
    )
    args = t.to(torch.float32)[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _norm(channels: int) -> GroupNorm32:
    return GroupNorm32(channels, eps=1e-6)


class _ResnetBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, temb_ch: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = _norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.temb_proj = nn.Linear(temb_ch, out_ch)
        self.norm2 = _norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        if in_ch != out_ch:
            self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1)
        else:
            self.nin_shortcut = nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb_proj(F.silu(temb)).to(h.dtype)[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class _AttnBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = _norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, T, C) layout: unit stride on channels for SDPA; 1x1 conv weights applied as linear maps.
        b, c, hh, ww = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)  # (B, T, C)
        q, k, v = (F.linear(h, m.weight.flatten(1), m.bias).unsqueeze(1) for m in (self.q, self.k, self.v))
        h = F.scaled_dot_product_attention(q, k, v).squeeze(1)  # (B, T, C), one head, scale 1/sqrt(C)
        h = F.linear(h, self.proj_out.weight.flatten(1), self.proj_out.bias)
        return x + h.transpose(1, 2).reshape(b, c, hh, ww)


class _Downsample(nn.Module):
    def __init__(self, channels: int, with_conv: bool) -> None:
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_conv:
            return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric padding, as in the TF original
        return F.avg_pool2d(x, 2, stride=2)


class _Upsample(nn.Module):
    def __init__(self, channels: int, with_conv: bool) -> None:
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.with_conv else x


class _Level(nn.Module):
    """One resolution level: ``block`` (ResnetBlocks), ``attn`` (possibly empty), resampler."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()


class DDPMUNet(nn.Module):
    """DDPM UNet: ``forward(x (B, C, H, W), t (B,)) -> eps (B, out_channels, H, W)``."""

    def __init__(self, config: DDPMConfig) -> None:
        super().__init__()
        self.config = cfg = config
        ch, temb_ch, n_levels = cfg.ch, 4 * cfg.ch, len(cfg.ch_mult)
        in_mult = (1, *cfg.ch_mult)
        self.temb = nn.Module()
        self.temb.dense = nn.ModuleList([nn.Linear(ch, temb_ch), nn.Linear(temb_ch, temb_ch)])
        self.conv_in = nn.Conv2d(cfg.in_channels, ch, 3, padding=1)

        res = cfg.image_size
        self.down = nn.ModuleList()
        for i in range(n_levels):
            level = _Level()
            block_in, block_out = ch * in_mult[i], ch * cfg.ch_mult[i]
            for _ in range(cfg.num_res_blocks):
                level.block.append(_ResnetBlock(block_in, block_out, temb_ch, cfg.dropout))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    level.attn.append(_AttnBlock(block_in))
            if i != n_levels - 1:
                level.downsample = _Downsample(block_in, cfg.resamp_with_conv)
                res //= 2
            self.down.append(level)

        self.mid = nn.Module()
        self.mid.block_1 = _ResnetBlock(block_in, block_in, temb_ch, cfg.dropout)
        self.mid.attn_1 = _AttnBlock(block_in)
        self.mid.block_2 = _ResnetBlock(block_in, block_in, temb_ch, cfg.dropout)

        up: list[_Level] = []
        for i in reversed(range(n_levels)):
            level = _Level()
            block_out = ch * cfg.ch_mult[i]
            for j in range(cfg.num_res_blocks + 1):
                skip_in = ch * (in_mult[i] if j == cfg.num_res_blocks else cfg.ch_mult[i])
                level.block.append(_ResnetBlock(block_in + skip_in, block_out, temb_ch, cfg.dropout))
                block_in = block_out
                if res in cfg.attn_resolutions:
                    level.attn.append(_AttnBlock(block_in))
            if i != 0:
                level.upsample = _Upsample(block_in, cfg.resamp_with_conv)
                res *= 2
            up.insert(0, level)
        self.up = nn.ModuleList(up)

        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        dense = self.temb.dense
        temb = ddpm_timestep_embedding(t, cfg.ch).to(dense[0].weight.dtype)
        temb = dense[1](F.silu(dense[0](temb)))

        hs = [self.conv_in(x.to(self.conv_in.weight.dtype))]
        for i, level in enumerate(self.down):
            for j, block in enumerate(level.block):
                h = block(hs[-1], temb)
                if len(level.attn):
                    h = level.attn[j](h)
                hs.append(h)
            if i != len(self.down) - 1:
                hs.append(level.downsample(hs[-1]))

        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(hs[-1], temb)), temb)

        for i in reversed(range(len(self.up))):
            level = self.up[i]
            for j, block in enumerate(level.block):
                h = block(torch.cat([h, hs.pop()], dim=1), temb)
                if len(level.attn):
                    h = level.attn[j](h)
            if i != 0:
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
