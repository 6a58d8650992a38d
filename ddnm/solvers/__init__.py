"""Zero-shot solvers on the same exact operators and the same prior: a registry and one Sampling object.

``SOLVERS`` maps a name to a :class:`Solver` (settings table, needs, model calls, one ``run``
function); :class:`Sampling` is the frozen, validated description of a run that every layer passes on
unchanged. Adding a solver is one new file defining a ``Solver`` plus one line below.
"""

# the built-in solvers, one line each
from ddnm.solvers import daps, ddrm, diffpir, dps, nullspace, pigdm, reddiff  # noqa: I001
from ddnm.solvers.base import NEEDS, Settings, Solver
from ddnm.solvers.config import Sampling
from ddnm.solvers.registry import SOLVERS, default_solver, get_solver, register, solvers_json

register(nullspace.DDNM)
register(nullspace.DDNM_PLUS)
register(ddrm.DDRM)
register(pigdm.PIGDM)
register(dps.DPS)
register(diffpir.DIFFPIR)
register(reddiff.REDDIFF)
register(daps.DAPS)

__all__ = ["NEEDS", "SOLVERS", "Sampling", "Settings", "Solver", "default_solver", "get_solver",
           "register", "solvers_json"]
