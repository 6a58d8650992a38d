"""Checks of a job against its data, before any work: masks and checkpoint present, the task fits the
size of the first decodable input, the model takes that size. Each failure is one JobError line."""

from __future__ import annotations

from typing import Any

from cluster import storage
from cluster.checkpoints import is_remote
from cluster.images import BadInput, decode_image, decode_mask
from ddnm.operators import is_custom, is_mask_file
from ddnm.restoration import Task
from jobs.errors import JobError
from jobs.inputs import unreachable
from jobs.spec import JobSpec


def check_against_data(spec: JobSpec, root: str, keys: list[str], notes: list[str]) -> JobSpec:
    """-> the spec to run (a ``mask`` folder becomes ``mask_url``); JobError naming the problem."""
    try:
        spec = _check_files(spec)
        image = probe_image(root, keys, spec.storage_options)
    except storage.StorageError as exc:
        raise unreachable(exc) from None
    if image is None:
        if keys:
            notes.append("could not decode any of the first images to check the task against their size")
        return spec
    shape = tuple(image.shape)
    x_shape = _validate_task(spec, image)
    _check_model_size(spec, x_shape)
    mask = spec.settings.get("mask")
    if x_shape and is_mask_file(mask):
        try:
            m = decode_mask(storage.read_bytes(mask, spec.storage_options), mask)
        except BadInput as exc:
            raise JobError(f"--set mask={mask}: {exc.reason}") from None
        if tuple(m.shape[-2:]) not in {tuple(x_shape[1:]), tuple(shape[1:])}:
            raise JobError(f"--set mask={mask}: size {m.shape[-1]}x{m.shape[-2]} does not match the "
                           f"images ({x_shape[2]}x{x_shape[1]})")
    return spec


def _check_files(spec: JobSpec) -> JobSpec:
    opts = spec.storage_options
    mask = spec.settings.get("mask")
    if is_mask_file(mask):
        if not storage.exists(mask, opts):
            raise JobError(f"--set mask={mask}: not found")
        if storage.isdir(mask, opts):  # a folder of masks, one per image under the same key
            settings = {k: v for k, v in spec.settings.items() if k != "mask"}
            spec = spec.model_copy(update={"settings": settings, "mask_url": mask.rstrip("/")})
    if spec.mask_url and not storage.exists(spec.mask_url, opts):
        raise JobError(f"mask_url={spec.mask_url}: not found")
    ckpt = spec.checkpoint
    if ckpt and is_remote(ckpt):  # fetched once per node by the workers (cluster/checkpoints.py)
        try:
            found = storage.exists(ckpt, opts)
        except storage.StorageError as exc:
            raise JobError(f"--checkpoint {ckpt}: cannot reach it ({exc.reason})") from None
        if not found:
            raise JobError(f"--checkpoint {ckpt}: not found")
    elif ckpt and ckpt != "random" and spec.address is None and not storage.exists(ckpt, opts):
        raise JobError(f"--checkpoint {ckpt}: not found")
    return spec


def probe_image(root: str, keys: list[str], opts: dict[str, Any], tries: int = 3):
    """The first decodable image (C, H, W) among the first `tries` keys, or None."""
    for key in keys[:tries]:
        try:
            return decode_image(storage.read_bytes(storage.join(root, key), opts), key)
        except (BadInput, FileNotFoundError):
            continue
    return None


def model_channels(model: str) -> int:
    """The channels a registered model takes (3 where the registry does not say)."""
    from ddnm.models import model_facts

    return model_facts(model).in_channels


def _validate_task(spec: JobSpec, image) -> tuple[int, int, int] | None:
    """The task's own check (``Task.check``, as the worker runs it) on the first image -> x_shape."""
    if is_custom(spec.task):
        return None
    settings = {k: v for k, v in spec.settings.items() if not (k == "mask" and is_mask_file(v))}
    task, channels = Task.of(spec.task, settings), model_channels(spec.model)
    shape = tuple(image.shape)
    prepared = tuple(task.prepare(image[None], mode=spec.mode, model_channels=channels).shape[1:])
    problem = task.check(prepared, mode=spec.mode, model_channels=channels)
    if problem:
        raise JobError(f"task {spec.task} on the input images ({shape[2]}x{shape[1]} px, "
                       f"mode {spec.mode}): {problem}")
    return task.x_shape(prepared, mode=spec.mode, model_channels=channels)


def _check_model_size(spec: JobSpec, x_shape: tuple[int, int, int] | None) -> None:
    """Any size is restored on tiles; only ``--canvas whole`` with a model of one native size is
    refused up front for another size. Tiles must fit the network's stride; mask-shift, the task."""
    from ddnm.models import model_facts
    from ddnm.sampling.maskshift import supported_tasks

    info = model_facts(spec.model)
    size = info.image_size
    if spec.canvas == "whole" and size and not info.any_size and x_shape is not None \
            and tuple(x_shape[1:]) != (size, size):
        what = "restored images would be" if spec.mode == "restore" else "input images are"
        raise JobError(f"model {spec.model} restores {size}x{size} images whole; the {what} "
                       f"{x_shape[2]}x{x_shape[1]} (checked on the first decodable input): use "
                       f"--canvas auto or tiled")
    stride = info.stride
    if spec.tile is not None and spec.tile % stride:
        raise JobError(f"--tile {spec.tile}: must be a multiple of model {spec.model}'s stride {stride}")
    if spec.canvas == "maskshift" and spec.task not in supported_tasks():
        raise JobError(f"--canvas maskshift: task {spec.task} mixes pixels across window edges; "
                       f"mask-shift supports {', '.join(supported_tasks())} (use --canvas tiled)")
