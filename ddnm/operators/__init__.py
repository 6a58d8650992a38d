"""Degradation operators ``y = A x`` with pseudo-inverses and SVD views (see INTERFACES.md).

``build(spec, x_shape, **settings)`` makes one from a task name, a ``{"task": ...}`` dict or a dotted
``"package.module:Class"`` path; ``TASKS`` lists the registered tasks.
"""

from . import tasks as _tasks  # noqa: F401  (registers the tasks)
from .base import Composite, Operator, SVDOperator
from .masks import MASK_KEYWORDS, box_mask, center_mask, is_mask_file, load_mask, random_mask, read_mask
from .registry import TASKS, TaskInfo, build, coerce, is_custom, load_operator_class, tasks_json

__all__ = [
    "MASK_KEYWORDS",
    "TASKS",
    "Composite",
    "Operator",
    "SVDOperator",
    "TaskInfo",
    "box_mask",
    "build",
    "center_mask",
    "coerce",
    "is_custom",
    "is_mask_file",
    "load_operator_class",
    "read_mask",
    "load_mask",
    "random_mask",
    "tasks_json",
]
