"""Reading checkpoints from LOCAL files into our model classes, with errors that say what is wrong.

``.pt`` / ``.ckpt`` / ``.pth`` / ``.bin`` files are read with ``torch.load(weights_only=True)``
(no pickled code runs), ``.safetensors`` with safetensors. Downloads are the cluster layer's job.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

__all__ = ["checkpoint_hash", "load_checkpoint", "read_state_dict"]

_NESTED_KEYS = ("state_dict", "model", "ema", "model_ema", "net")
_PREFIXES = ("module.", "model.", "_orig_mod.")
_SHOW = 10


def checkpoint_hash(path: str | Path) -> str:
    """Hex sha256 of the file's bytes, read in 8 MiB chunks (recorded beside job outputs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _is_tensor_dict(obj: object) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _torch_load(path: Path) -> object:
    """``torch.load(weights_only=True)``, memory-mapped when the file is in the zip format."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as exc:
        if "mmap" not in str(exc):  # legacy (pre-1.6) files cannot be mapped; anything else is real
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a flat ``{name: tensor}`` dict (on CPU) from a local checkpoint file.

    Unwraps the usual containers: a list/tuple whose first item is the weights (DDIM's logs), or a
    dict holding them under one of ``state_dict``, ``model``, ``ema``, ``model_ema``, ``net``.
    Strips ``module.`` (DataParallel), ``model.`` and ``_orig_mod.`` (torch.compile) when every key
    carries the prefix.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} is not a local file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj: object = load_file(str(path), device="cpu")
    else:
        try:
            obj = _torch_load(path)
        except Exception as exc:  # pickle errors have many types; name the file in one
            raise ValueError(f"checkpoint {str(path)!r} could not be read as weights: {exc}") from exc
    for _ in range(3):
        if _is_tensor_dict(obj):
            break
        if isinstance(obj, list | tuple) and obj:
            obj = obj[0]
        elif isinstance(obj, Mapping):
            obj = next((obj[k] for k in _NESTED_KEYS if k in obj), None)
        else:
            break
    if not _is_tensor_dict(obj):
        raise ValueError(f"checkpoint {str(path)!r} holds no state dict of tensors")
    state = dict(obj)  # type: ignore[arg-type]
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def _listing(title: str, items: list[str]) -> str:
    more = f" ... and {len(items) - _SHOW} more" if len(items) > _SHOW else ""
    return f"{title} ({len(items)}): {', '.join(items[:_SHOW])}{more}"


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise ValueError naming ``source`` unless ``state`` has exactly ``model``'s keys and shapes."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected)
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} != {expected[k]}"
        for k in expected
        if k in state and tuple(state[k].shape) != expected[k]
    )
    if missing or unexpected or shapes:
        parts = [
            _listing(title, items)
            for title, items in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", shapes),
            )
            if items
        ]
        raise ValueError(f"checkpoint {source!r} does not fit {type(model).__name__}: " + "; ".join(parts))


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Check and load ``path`` into ``model`` (which may live on the meta device: tensors are assigned).

    Returns ``model``; its parameters then have the checkpoint's dtypes, on the CPU.
    """
    state = read_state_dict(path)
    check_state_dict(model, state, str(path))
    model.load_state_dict(state, strict=True, assign=True)
    return model
