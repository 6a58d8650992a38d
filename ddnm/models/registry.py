"""Named models: ``build(name, checkpoint, ...)`` and the ``REGISTRY`` of ``models --json``."""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ddnm.models.adm import ADMConfig, ADMUNet
from ddnm.models.base import ADMEps, DDPMEps, EpsModel, cast_network
from ddnm.models.checkpoint import load_checkpoint
from ddnm.models.ddpm import DDPMConfig, DDPMUNet

__all__ = ["REGISTRY", "TINY_CONFIG", "ModelInfo", "build", "list_models", "resolve_dtype"]

TINY_CONFIG = ADMConfig(
    image_size=16,
    model_channels=16,
    num_res_blocks=1,
    channel_mult=(1, 2),
    attention_resolutions=(8,),
    num_head_channels=16,
    norm_groups=8,
    learn_sigma=True,
)
"""A 209,382-parameter ADM for tests (16-32 px inputs; attention on the half-resolution level)."""


@dataclass(frozen=True, kw_only=True)
class ModelInfo:
    """What ``build`` knows about a model name."""

    name: str
    """Registry key, e.g. ``adm-256-uncond``."""
    family: str
    """Adapter family: adm, ddpm, diffusers or small-prior."""
    image_size: int | None
    """Training resolution in pixels (None: read from the checkpoint)."""
    description: str
    """One line for humans, naming the public checkpoint file."""
    config: ADMConfig | DDPMConfig | None = None
    """Architecture (None: defined by the checkpoint folder or another module)."""
    default_weights: str | None = None
    """What ``checkpoint=None`` means: "bundled" (shipped weights), "random" (test models), or None
    (a checkpoint must be given)."""
    schedule: str = "linear"
    """The noise schedule the network was trained with (travels with the built model)."""
    num_timesteps: int = 1000
    """T of that schedule."""
    any_size: bool = False
    """Whether the network was trained to run whole canvases of other sizes than its native one (fully
    convolutional, trained on crops); else other sizes are restored on tiles of the native size."""

    @property
    def params(self) -> int | None:
        """Parameter count of the released configuration (built on the meta device, instant)."""
        return _count_params(self.name)


_DATASETS = "ImageNet 256x256"
REGISTRY: dict[str, ModelInfo] = {
    info.name: info
    for info in [
        ModelInfo(
            name="adm-256-uncond",
            family="adm",
            image_size=256,
            description=f"guided-diffusion ADM, {_DATASETS} unconditional (256x256_diffusion_uncond.pt)",
            config=ADMConfig(),
        ),
        ModelInfo(
            name="adm-256-cond",
            family="adm",
            image_size=256,
            description=f"guided-diffusion ADM, {_DATASETS} class-conditional (256x256_diffusion.pt); "
            "one fixed class_label for all images (default 0)",
            config=ADMConfig(num_classes=1000),
        ),
        ModelInfo(
            name="adm-ffhq-256",
            family="adm",
            image_size=256,
            description="ADM trained on FFHQ 256 by DPS, used by DiffPIR and deepinv (ffhq_10m.pt)",
            config=ADMConfig(model_channels=128, num_res_blocks=1, attention_resolutions=(16,), num_heads=4),
        ),
        ModelInfo(
            name="ddpm-celebahq-256",
            family="ddpm",
            image_size=256,
            description="DDPM 'simple' UNet, CelebA-HQ 256 of SDEdit / DDIM (celeba_hq.ckpt); "
            "the LSUN bedroom and church 256 checkpoints share this architecture",
            config=DDPMConfig(),
        ),
        ModelInfo(
            name="diffusers",
            family="diffusers",
            image_size=None,
            description="any diffusers UNet2DModel predicting epsilon, from a local folder "
            "(optional extra: diffusers)",
        ),
        ModelInfo(
            name="small-prior",
            family="small-prior",
            image_size=None,
            description="small ADM trained for this project, weights bundled (ddnm/models/weights)",
            default_weights="bundled",
            any_size=True,
        ),
        ModelInfo(
            name="tiny",
            family="adm",
            image_size=TINY_CONFIG.image_size,
            description="tiny random ADM for tests (deterministic from a seed, no checkpoint)",
            config=TINY_CONFIG,
            default_weights="random",
        ),
    ]
}

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float64": torch.float64, "fp64": torch.float64,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
}  # fmt: skip


def resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """``torch.bfloat16`` or one of "fp32", "float32", "bf16", "bfloat16", "fp16", "float16", "fp64"."""
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.lower().removeprefix("torch.")]
    raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")


def _network(config: ADMConfig | DDPMConfig) -> nn.Module:
    return ADMUNet(config) if isinstance(config, ADMConfig) else DDPMUNet(config)


def _small_prior_module():
    try:
        small_prior = importlib.import_module("ddnm.models.small_prior")
    except ImportError as exc:
        raise ValueError(
            "model 'small-prior' is not available: ddnm/models/small_prior.py is missing"
        ) from exc
    return small_prior


@functools.cache
def _count_params(name: str) -> int | None:
    config = REGISTRY[name].config
    if REGISTRY[name].family == "small-prior":
        model = _meta_small_prior()
        return None if model is None else model.num_params
    if config is None:
        return None
    with torch.device("meta"):
        return sum(p.numel() for p in _network(config).parameters())


@functools.cache
def _meta_small_prior() -> EpsModel | None:
    """The small prior built with random weights on the meta device, or None if unavailable."""
    try:
        return _build_small_prior("random", torch.device("meta"), torch.float32, False)
    except Exception:  # optional module of another owner: never break the listing
        return None


def accepted_sizes(info: ModelInfo, image_size: int | None) -> str:
    """What sizes a model takes, in words (``models`` listing): every size, and how."""
    native = f"{image_size}x{image_size}" if image_size else "its native size"
    if info.any_size:
        return f"any: whole canvas up to 512x512 px, tiled ({native} tiles) above"
    return f"any: whole at {native}, tiled ({native} tiles) otherwise"


def list_models() -> list[dict]:
    """``[{"name", "family", "params", "image_size", "accepts", "description"}]`` for
    ``python -m ddnm models`` (``image_size``: the native size)."""
    rows = []
    for info in REGISTRY.values():
        image_size = model_facts(info.name).image_size
        rows.append(
            {
                "name": info.name,
                "family": info.family,
                "params": info.params,
                "image_size": image_size,
                "accepts": accepted_sizes(info, image_size),
                "description": info.description,
            }
        )
    return rows


@dataclass(frozen=True, kw_only=True)
class ModelFacts:
    """What the job layer needs to know about a registered model before building it."""

    name: str
    image_size: int | None
    """Native (training) size in px; None: known only from the checkpoint the user gives."""
    in_channels: int
    """Channels the network takes (3 for RGB priors, 1 for grey ones)."""
    stride: int
    """Downsampling factor of the network: tiles and whole canvases must be multiples of it."""
    any_size: bool
    """Whether whole canvases of other sizes than the native one are restored whole (``ModelInfo``)."""
    num_timesteps: int
    schedule: str
    default_weights: str | None
    """``"bundled"``, ``"random"`` or None (a checkpoint must be given)."""


def model_facts(name: str) -> ModelFacts:
    """A registered model's facts (native size, channels, stride, any-size, schedule), read from its
    registry entry, or from the small prior's own definition; ValueError naming unknown models."""
    from ddnm.sampling.tiling import config_stride, model_stride

    info = REGISTRY.get(name)
    if info is None:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(sorted(REGISTRY))}")
    size, channels, stride = info.image_size, getattr(info.config, "in_channels", None), None
    if info.config is not None:
        stride = config_stride(info.config)
    elif info.family == "small-prior" and _meta_small_prior() is not None:
        meta = _meta_small_prior()
        size = size or meta.image_size
        channels = channels or meta.in_channels
        stride = model_stride(meta)
    return ModelFacts(name=name, image_size=size, in_channels=int(channels or 3), stride=int(stride or 1),
                      any_size=info.any_size, num_timesteps=info.num_timesteps, schedule=info.schedule,
                      default_weights=info.default_weights)


def _random_network(config: ADMConfig | DDPMConfig, device: torch.device, seed: int) -> nn.Module:
    """Build with PyTorch's default init from ``seed`` without touching the global RNG state."""
    cuda = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), torch.device(device):
        torch.manual_seed(seed)
        return _network(config)


def build(
    name: str,
    checkpoint: str | Path | None = None,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | str = torch.float32,
    channels_last: bool = False,
    class_label: int | None = None,
    seed: int = 0,
) -> EpsModel:
    """Build model ``name`` as ``eps = model(x_t, t)``, in eval mode with gradients off.

    checkpoint: a local file (``.pt``/``.ckpt`` via ``torch.load(weights_only=True)``, or
    ``.safetensors``); for ``diffusers`` a local folder; ``"random"`` for random weights on purpose
    (PyTorch's default init from ``seed``, same cost as the real model); ``None`` only where the
    family has default weights (``small-prior``: bundled; ``tiny``: random from ``seed``).
    dtype: compute dtype (float32, bfloat16, float16 or float64, or its name); in low precision only
    convolutions are cast, norms and embeddings stay float32 (see ``cast_network``).
    class_label: the fixed ImageNet class for ``adm-256-cond`` (default 0); rejected elsewhere.
    """
    if name not in REGISTRY:
        raise ValueError(f"unknown model name {name!r}; known: {sorted(REGISTRY)}")
    info = REGISTRY[name]
    device = torch.device(device)
    dtype = resolve_dtype(dtype)
    if class_label is not None and getattr(info.config, "num_classes", None) is None:
        raise ValueError(f"class_label={class_label!r} only applies to a class-conditional model, "
                         f"not {name!r}")
    builder = _BUILDERS[info.family]
    model = builder(info, checkpoint, device=device, dtype=dtype, channels_last=channels_last,
                    class_label=class_label, seed=seed)
    model.schedule, model.num_timesteps = info.schedule, info.num_timesteps
    model.any_size = info.any_size
    return model


def _build_diffusers(info: ModelInfo, checkpoint, *, device, dtype, channels_last, **_) -> EpsModel:
    if checkpoint is None or checkpoint == "random":
        raise ValueError(f"model {info.name!r} needs checkpoint= a local UNet2DModel folder")
    from ddnm.models.diffusers import load_diffusers_unet

    return load_diffusers_unet(checkpoint, device=device, dtype=dtype, channels_last=channels_last)


def _build_network(info: ModelInfo, checkpoint, *, device, dtype, channels_last, class_label,
                   seed) -> EpsModel:
    """ADM and DDPM families: the registry's architecture, random or loaded weights."""
    config = info.config
    assert config is not None
    if checkpoint is None and info.default_weights is None:
        raise ValueError(
            f"model {info.name!r} needs checkpoint= a local path to its weights ({info.description}), "
            "or checkpoint='random' for random weights"
        )
    if checkpoint is None or checkpoint == "random":
        net = _random_network(config, device, seed)
        source = "random"
    else:
        with torch.device("meta"):
            net = _network(config)
        net = load_checkpoint(net, checkpoint).to(device)
        source = str(checkpoint)
    net = cast_network(net, dtype)
    common = dict(
        name=info.name,
        image_size=config.image_size,
        in_channels=config.in_channels,
        dtype=dtype,
        channels_last=channels_last,
        checkpoint=source,
    )
    if isinstance(config, ADMConfig):
        return ADMEps(net, class_label=class_label, **common)
    return DDPMEps(net, **common)


def _build_bundled_prior(info: ModelInfo, checkpoint, *, device, dtype, channels_last, **_) -> EpsModel:
    return _build_small_prior(checkpoint, device, dtype, channels_last)


def _build_small_prior(checkpoint, device, dtype, channels_last) -> EpsModel:
    """Delegate to ``ddnm.models.small_prior.build_small_prior`` (owned by the prior's module)."""
    small_prior = _small_prior_module()
    built = small_prior.build_small_prior(checkpoint, device=device, dtype=dtype)
    if isinstance(built, EpsModel):
        if channels_last:
            built.memory_format = torch.channels_last
            built.net.to(memory_format=torch.channels_last)
        return built
    if isinstance(built, ADMUNet):
        return ADMEps(
            built.to(device),
            name="small-prior",
            family="small-prior",
            image_size=built.config.image_size,
            in_channels=built.config.in_channels,
            channels_last=channels_last,
            checkpoint=None if checkpoint is None else str(checkpoint),
        )
    raise TypeError(f"build_small_prior returned {type(built).__name__}, expected EpsModel or ADMUNet")


_BUILDERS = {"adm": _build_network, "ddpm": _build_network, "diffusers": _build_diffusers,
             "small-prior": _build_bundled_prior}
