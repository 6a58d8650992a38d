"""The solver registry: name -> :class:`~ddnm.solvers.base.Solver`, in the shape of the task registry.

A solver is found by its registered name, by a ``"package.module:NAME"`` path to a
:class:`~ddnm.solvers.base.Solver` object (importable on every worker: how a job runs a solver of the
user's own), or given as the object itself (the notebook API).
"""

from __future__ import annotations

from typing import Any

from ddnm.dotted import is_dotted, load_dotted
from ddnm.solvers.base import Solver

SOLVERS: dict[str, Solver] = {}


def register(solver: Solver) -> Solver:
    """Add ``solver`` under its name (a later registration of the same name replaces it)."""
    if not isinstance(solver, Solver):
        raise TypeError(f"register() takes a ddnm.solvers.Solver, got {type(solver).__name__}")
    SOLVERS[solver.name] = solver
    return solver


def default_solver(sigma_y: float) -> str:
    """The solver of a run that names none: DDNM, or DDNM+ when the observations are noisy (what every
    release before the registry ran, so outputs written then resume unchanged)."""
    return "ddnm+" if float(sigma_y) > 0 else "ddnm"


def get_solver(solver: str | Solver) -> Solver:
    """A registered name, a ``"package.module:NAME"`` path or a Solver -> the Solver; ValueError
    naming the solver and the known ones otherwise."""
    if isinstance(solver, Solver):
        return solver
    if not isinstance(solver, str):
        raise ValueError(f"solver must be a solver name, 'package.module:NAME' or a Solver, "
                         f"got {type(solver).__name__}")
    if solver in SOLVERS:
        return SOLVERS[solver]
    if is_dotted(solver):
        found = load_dotted(solver, what="solver")
        if not isinstance(found, Solver):
            raise ValueError(f"solver {solver!r} is a {type(found).__name__}, not a ddnm.solvers.Solver")
        return found
    raise ValueError(f"unknown solver {solver!r}; known solvers: {', '.join(sorted(SOLVERS))} "
                     "or 'package.module:NAME'")


def solvers_json() -> list[dict[str, Any]]:
    """Every registered solver as a JSON-ready dict (``ddnm-batch solvers --json``)."""
    return [s.listing() for s in SOLVERS.values()]
