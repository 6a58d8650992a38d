"""The task registry: task name -> settings, builder, and shape rules; ``build`` from a plain spec.

A spec is what job files and the CLI carry:

* a task name: ``build("sr_bicubic", x_shape=(3, 256, 256), scale=4)``,
* a dict: ``build({"task": "inpaint", "mask": "masks/m.png"}, x_shape=(3, 256, 256))``,
* a dotted path ``"package.module:ClassName"`` to a user subclass of
  :class:`ddnm.operators.base.Operator` (or :class:`~ddnm.operators.base.SVDOperator` for DDNM+).
  The class is constructed as ``ClassName(x_shape=x_shape, **settings)`` and must implement ``A`` and
  ``A_pinv`` (and the SVD view if it sets ``has_svd = True``); the module must be importable on every
  worker.

Unknown tasks and unknown settings are ValueErrors naming them; ``TASKS[name].validate(x_shape,
**settings)`` checks sizes and values before any heavy work (bicubic and blur SVDs, file reads are
cheap). ``tasks_json()`` lists every task for ``python -m ddnm tasks --json``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ddnm.dotted import is_dotted, load_dotted

from .base import Operator

Settings = dict[str, tuple[Any, type, str]]

_BOOL_WORDS = {"true": True, "yes": True, "1": True, "on": True,
               "false": False, "no": False, "0": False, "off": False}
_KINDS = {"int": int, "float": float, "str": str, "bool": bool, "tuple": tuple, "list": list}


def coerce(value: Any, kind: Any, *, name: str) -> Any:
    """A setting's value (often text from ``--set k=v`` or YAML) -> its declared ``kind``.

    The one parser of task settings. ``int`` accepts ``"4"``, ``"4.0"`` and ``4.0`` but not ``4.5``;
    ``bool`` accepts true/false/yes/no/on/off/1/0; ``tuple`` / ``list`` accept ``"1,2,3,4"`` (brackets
    optional), numbers becoming int where integral. None and untyped settings pass unchanged.
    Raises ValueError ``"<name>=<value>: expected a value of type <kind>"``.
    """
    if value is None or kind in (None, Any, object):
        return value
    kind = _KINDS.get(kind, str) if isinstance(kind, str) else kind
    try:
        if kind is bool:
            return value if isinstance(value, bool) else _BOOL_WORDS[str(value).strip().lower()]
        if kind is int:
            if isinstance(value, bool):
                raise ValueError(value)
            number = float(value) if isinstance(value, str | float) else value
            if isinstance(number, float) and not number.is_integer():
                raise ValueError(value)
            return int(number)
        if kind is float and isinstance(value, bool):
            raise ValueError(value)
        if kind in (tuple, list) and isinstance(value, str):
            parts = [p.strip() for p in value.strip().strip("()[]").split(",") if p.strip()]
            return kind(_number(p) for p in parts)
        return kind(value)
    except (KeyError, ValueError, TypeError):
        raise ValueError(f"{name}={value!r}: expected a value of type {getattr(kind, '__name__', kind)}") \
            from None


def _number(text: str) -> int | float:
    as_float = float(text)
    return int(as_float) if as_float.is_integer() else as_float


@dataclass(frozen=True, kw_only=True)
class TaskInfo:
    """One registered task.

    Attributes:
        name: the task name.
        description: one line for ``tasks`` listings.
        settings: ``{name: (default, type, help)}``.
        builder: ``builder(x_shape, **settings) -> Operator`` with every setting given.
        restore_from_image: whether ``op.observe`` can read ``y`` from an already degraded image.
        observes_grey: whether that degraded image is grey (colorization, old photos): restore mode
            reads it with one channel; every other task reads three.
        pad_to: ``pad_to((H, W), settings) -> (H', W')``, the smallest size >= (H, W) the operator is
            defined on, for an operator that truly needs special sizes (block CS: multiples of the block;
            Walsh CS: powers of two); None when every size the check accepts is fine.
        has_svd: whether the built operator has the SVD view (DDNM+ per singular value).
        check: ``check(x_shape, settings)`` raising ValueError naming a bad setting.
        obs_to_x: ``obs_to_x(obs_shape, settings) -> x_shape`` (restore mode), None when impossible.
        block_local: whether the operator acts on disjoint pixel blocks, so that its restriction to a
            block-aligned window is the same operator at the window's size (mask-shift needs this):
            None when it mixes pixels across any window edge; else the alignment, an int, or the
            name of the operator attribute (= setting) that gives it (``"scale"``, ``"block"``).
        pixel_buffers: the operator's buffers laid out per pixel (..., H, W), cropped to a window.
    """

    name: str
    description: str
    settings: Settings
    builder: Callable[..., Operator]
    restore_from_image: bool
    has_svd: bool
    check: Callable[[tuple[int, int, int], dict[str, Any]], None]
    obs_to_x: Callable[[tuple[int, ...], dict[str, Any]], tuple[int, int, int]] | None = None
    observes_grey: bool = False
    pad_to: Callable[[tuple[int, int], dict[str, Any]], tuple[int, int]] | None = None
    block_local: int | str | None = None
    pixel_buffers: tuple[str, ...] = ()

    def alignment(self, op: Operator) -> int | None:
        """The pixel block ``op`` (built for this task) acts on, or None when it is not block-local."""
        if self.block_local is None or isinstance(self.block_local, int):
            return self.block_local
        return int(getattr(op, self.block_local))

    def resolve(self, **settings: Any) -> dict[str, Any]:
        """Defaults updated by ``settings``; unknown names and uncoercible numbers are ValueErrors.

        Values are converted to the declared types by :func:`coerce` (command-line text included).
        """
        unknown = sorted(set(settings) - set(self.settings))
        if unknown:
            raise ValueError(
                f"unknown setting(s) {unknown} for task {self.name!r}; known: {sorted(self.settings)}"
            )
        out = {k: v[0] for k, v in self.settings.items()}
        for k, v in settings.items():
            out[k] = coerce(v, self.settings[k][1], name=k)
        return out

    def validate(self, x_shape: tuple[int, ...], **settings: Any) -> None:
        """Raise ValueError naming the setting (or x_shape) and value when they do not fit together."""
        x_shape = _check_shape(x_shape)
        self.check(x_shape, self.resolve(**settings))

    def x_shape_from_observation(self, obs_shape: tuple[int, ...], **settings: Any) -> tuple[int, int, int]:
        """Clean-image shape ``(C, H, W)`` for an observed image of shape ``(C', h, w)``."""
        if self.obs_to_x is None:
            raise NotImplementedError(f"task {self.name!r} cannot read its observation from an image")
        obs_shape = tuple(int(v) for v in obs_shape)
        if len(obs_shape) != 3:
            raise ValueError(f"obs_shape must be (C, h, w), got {obs_shape}")
        return self.obs_to_x(obs_shape, self.resolve(**settings))

    def padded_size(self, hw: tuple[int, int], /, **settings: Any) -> tuple[int, int]:
        """The size the operator is built at for a clean image of ``hw`` (H, W): ``hw`` itself, or the
        smallest larger one it is defined on (:attr:`pad_to`)."""
        hw = (int(hw[0]), int(hw[1]))
        return hw if self.pad_to is None else tuple(self.pad_to(hw, self.resolve(**settings)))

    def build(self, x_shape: tuple[int, ...], **settings: Any) -> Operator:
        x_shape = _check_shape(x_shape)
        resolved = self.resolve(**settings)
        self.check(x_shape, resolved)
        return self.builder(x_shape, **resolved)


def _check_shape(x_shape: tuple[int, ...]) -> tuple[int, int, int]:
    try:
        shape = tuple(int(v) for v in x_shape)
    except (TypeError, ValueError) as e:
        raise ValueError(f"x_shape must be (C, H, W), got {x_shape!r}") from e
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"x_shape must be (C, H, W) with positive sizes, got {x_shape!r}")
    return shape  # type: ignore[return-value]


TASKS: dict[str, TaskInfo] = {}


def register(info: TaskInfo) -> TaskInfo:
    TASKS[info.name] = info
    return info


def is_custom(task: str) -> bool:
    """Whether ``task`` is a dotted ``"package.module:Class"`` path rather than a registered name."""
    return is_dotted(task)


def load_operator_class(path: str) -> type[Operator]:
    """``"package.module:Class"`` -> the Operator subclass; ValueError naming the path otherwise."""
    cls = load_dotted(path, what="task")
    if not (isinstance(cls, type) and issubclass(cls, Operator)):
        raise ValueError(f"task {path!r} is not a subclass of ddnm.operators.Operator")
    return cls


def build(
    spec: str | Mapping[str, Any] | Operator,
    x_shape: tuple[int, ...],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    **overrides: Any,
) -> Operator:
    """Build an operator from a task name, a ``{"task": ..., **settings}`` dict or a dotted class path.

    ``overrides`` update the spec's settings. Buffers are computed in float64 and stored as ``dtype`` on
    ``device``. An :class:`Operator` instance is returned as it is (moved to ``device`` / ``dtype``).
    """
    if isinstance(spec, Operator):
        if overrides:
            raise ValueError(f"settings {sorted(overrides)} cannot be applied to an operator instance")
        return spec.to(device=device, dtype=dtype)
    if isinstance(spec, Mapping):
        settings = dict(spec)
        if "task" not in settings:
            raise ValueError(f"task spec needs a 'task' key, got keys {sorted(settings)}")
        task = settings.pop("task")
    else:
        task, settings = spec, {}
    settings.update(overrides)
    if not isinstance(task, str):
        raise ValueError(f"task must be a task name or 'package.module:Class', got {task!r}")
    if task in TASKS:
        op = TASKS[task].build(x_shape, **settings)
    elif is_custom(task):
        cls = load_operator_class(task)
        try:
            op = cls(x_shape=_check_shape(x_shape), **settings)
        except TypeError as e:
            raise ValueError(f"task {task!r}: bad settings {sorted(settings)} ({e})") from e
    else:
        raise ValueError(f"unknown task {task!r}; known tasks: {sorted(TASKS)} or 'package.module:Class'")
    return op.to(device=device, dtype=dtype)


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, bool | int | float | str):
        return v
    if isinstance(v, tuple | list):
        return [_jsonable(x) for x in v]
    return repr(v)


def tasks_json() -> list[dict[str, Any]]:
    """Every task as a JSON-ready dict: name, description, settings (default, type, help), flags."""
    return [
        {
            "name": t.name,
            "description": t.description,
            "settings": {
                k: {"default": _jsonable(d), "type": typ.__name__, "help": h}
                for k, (d, typ, h) in t.settings.items()
            },
            "has_svd": t.has_svd,
            "restore_from_image": t.restore_from_image,
            "observes_grey": t.observes_grey,
        }
        for t in TASKS.values()
    ]
