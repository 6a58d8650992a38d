"""Diffusion priors behind one call, ``eps = model(x_t, t)``.

``build(name, checkpoint, *, device, dtype)`` makes one; ``REGISTRY`` / ``list_models()`` describe
the names; ``checkpoint_hash(path)`` fingerprints a weights file.
"""

from ddnm.models.adm import ADMConfig, ADMUNet
from ddnm.models.base import ADMEps, DDPMEps, EpsModel, cast_network
from ddnm.models.checkpoint import checkpoint_hash, load_checkpoint, read_state_dict
from ddnm.models.ddpm import DDPMConfig, DDPMUNet
from ddnm.models.registry import (
    REGISTRY,
    TINY_CONFIG,
    ModelFacts,
    ModelInfo,
    build,
    list_models,
    model_facts,
    resolve_dtype,
)

__all__ = [
    "REGISTRY",
    "TINY_CONFIG",
    "ADMConfig",
    "ADMEps",
    "ADMUNet",
    "DDPMConfig",
    "DDPMEps",
    "DDPMUNet",
    "EpsModel",
    "ModelFacts",
    "ModelInfo",
    "build",
    "cast_network",
    "checkpoint_hash",
    "list_models",
    "load_checkpoint",
    "model_facts",
    "read_state_dict",
    "resolve_dtype",
]
