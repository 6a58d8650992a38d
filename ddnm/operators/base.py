"""Linear degradation operators: the general base, the SVD-defined base and composition.

Every operator maps a clean image batch ``x`` of shape ``(B, C, H, W)`` (values in ``[-1, 1]``) to an
observation ``y = A x`` whose leading dimension is ``B``; the trailing shape is the operator's own.
DDNM's range-null-space step (paper eq. 13) only needs ``A`` and its Moore-Penrose pseudo-inverse
``A_pinv``; DDNM+ (paper eq. 17-19, DDRM appendix) also needs the SVD ``A = U diag(s) V^T``, which is
exposed on x-sized coefficient vectors:

* ``Vt(x) -> (B, D)`` with ``D = C * H * W``: an orthonormal change of basis,
* ``V(c) -> (B, C, H, W)``: its inverse,
* ``singulars() -> (D,)`` or ``(B, D)`` (per-image operators): ``s_i >= 0`` aligned with ``Vt``'s
  coefficients and exactly ``0`` on the null space of ``A``,
* ``U(c) -> y`` and ``Ut(y) -> (B, D)``: the y-space side, ``A x = U(s * Vt x)``,
  ``A_pinv y = V(s^+ * Ut y)`` where ``s^+ = 1/s`` on ``s > 0`` and ``0`` elsewhere.

Subclasses may override ``A`` / ``A_pinv`` with direct formulas (faster); the property tests check that
they agree with the SVD view.

Buffers (masks, kernels, bases) live on the module, so ``op.to(device)`` moves them; every method also
casts them to the input's device and dtype on the fly, so an operator built in float32 accepts float64
input (at float32 precision of its buffers) and vice versa.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn


class Operator(nn.Module):
    """A linear degradation ``y = A x`` on images ``(B, C, H, W)``.

    Attributes:
        name: the task name (``sr_avgpool``, ...); user operators may keep the default.
        x_shape: ``(C, H, W)`` of the clean image the operator was built for.
        has_svd: True when ``Vt``, ``V``, ``U``, ``Ut`` and ``singulars`` exist.
        batched_buffers: names of buffers that carry a leading per-image batch dimension
            (sliced by :meth:`select`); a buffer with leading size 1 applies to every image.
    """

    name: str = "custom"
    has_svd: bool = False
    batched_buffers: tuple[str, ...] = ()

    def __init__(self, x_shape: Sequence[int]) -> None:
        super().__init__()
        x_shape = tuple(int(v) for v in x_shape)
        if len(x_shape) != 3 or min(x_shape) < 1:
            raise ValueError(f"x_shape must be (C, H, W) with positive sizes, got {x_shape}")
        self.x_shape: tuple[int, int, int] = x_shape  # type: ignore[assignment]
        # dtype / device reference for tensors made on the fly (e.g. singulars of buffer-free operators)
        self.register_buffer("_ref", torch.zeros((), dtype=torch.float64), persistent=False)

    # -- the operator ---------------------------------------------------------------------------------
    def A(self, x: Tensor) -> Tensor:
        """Degrade ``x`` ``(B, C, H, W)`` -> ``y`` with leading dim ``B``."""
        raise NotImplementedError

    def A_pinv(self, y: Tensor) -> Tensor:
        """Moore-Penrose pseudo-inverse: ``y`` -> ``(B, C, H, W)``."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.A(x)

    # -- SVD view (only where has_svd) ----------------------------------------------------------------
    def _no_svd(self) -> NotImplementedError:
        return NotImplementedError(f"operator {self.name!r} has no SVD view (has_svd is False)")

    def Vt(self, x: Tensor) -> Tensor:
        raise self._no_svd()

    def V(self, c: Tensor) -> Tensor:
        raise self._no_svd()

    def U(self, c: Tensor) -> Tensor:
        raise self._no_svd()

    def Ut(self, y: Tensor) -> Tensor:
        raise self._no_svd()

    def singulars(self) -> Tensor:
        raise self._no_svd()

    # -- restore mode and display ---------------------------------------------------------------------
    def observe(self, image: Tensor) -> Tensor:
        """An already degraded image ``(B, C', h, w)`` in ``[-1, 1]`` -> ``y``."""
        raise NotImplementedError(f"task {self.name!r} cannot read its observation from an image")

    def y_to_image(self, y: Tensor) -> Tensor:
        """``y`` -> a viewable image ``(B, C', h, w)`` (for panels); default: ``y`` itself."""
        return y

    # -- batching -------------------------------------------------------------------------------------
    @property
    def batch_size(self) -> int | None:
        """Number of images the per-image buffers were built for; ``None`` when shared by all."""
        sizes = {getattr(self, n).shape[0] for n in self.batched_buffers}
        sizes.discard(1)
        return sizes.pop() if sizes else None

    def select(self, index: Sequence[int]) -> Operator:
        """The operator for the sub-batch ``index`` (repeats allowed, e.g. for K samples per image).

        Operators without per-image buffers return themselves.
        """
        if self.batch_size is None:
            return self
        new = copy.copy(self)
        new._buffers = dict(self._buffers)
        idx = torch.as_tensor(list(index), dtype=torch.long)
        for name in self.batched_buffers:
            buf = self._buffers[name]
            if buf is not None and buf.shape[0] != 1:
                new._buffers[name] = buf[idx.to(buf.device)]
        return new

    # -- helpers for subclasses -----------------------------------------------------------------------
    def _buf(self, name: str, like: Tensor) -> Tensor:
        """Buffer ``name`` on ``like``'s device and dtype."""
        return getattr(self, name).to(device=like.device, dtype=like.dtype)

    def _check_x(self, x: Tensor) -> None:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.x_shape:
            raise ValueError(
                f"{self.name}: x must have shape (B, {', '.join(map(str, self.x_shape))}), "
                f"got {tuple(x.shape)}"
            )
        self._check_batch(x.shape[0])

    def _check_batch(self, b: int) -> None:
        bs = self.batch_size
        if bs is not None and b != bs:
            raise ValueError(
                f"{self.name}: operator holds per-image parameters for {bs} images but got a batch of {b}; "
                "use op.select(index)"
            )

    def extra_repr(self) -> str:
        return f"name={self.name!r}, x_shape={self.x_shape}"


class SVDOperator(Operator):
    """An operator defined by its SVD ``A = U diag(s) V^T`` (DDRM's ``H_functions`` idea).

    Subclasses implement ``Vt``, ``V``, ``U``, ``Ut`` and ``singulars``; ``A`` and ``A_pinv`` follow:
    ``A x = U(s * Vt x)`` and ``A_pinv y = V(s^+ * Ut y)``. ``U`` receives a ``(B, D)`` coefficient vector
    that is already scaled by ``s`` (zero on the null space) and ``Ut`` returns one (zero where
    ``s = 0``).
    """

    has_svd = True

    def _s(self, like: Tensor) -> Tensor:
        s = self.singulars().to(device=like.device, dtype=like.dtype)
        if s.dim() == 2 and s.shape[0] != 1:
            self._check_batch(like.shape[0])
        return s

    def A(self, x: Tensor) -> Tensor:
        return self.U(self._s(x) * self.Vt(x))

    def A_pinv(self, y: Tensor) -> Tensor:
        c = self.Ut(y)
        s = self._s(c)
        s_plus = torch.where(s > 0, 1.0 / torch.where(s > 0, s, torch.ones_like(s)), torch.zeros_like(s))
        return self.V(s_plus * c)


class PixelBasisOperator(SVDOperator):
    """An SVD operator whose bases are the pixels themselves (``V = U = I``): masks, the identity.

    ``A x = s * x`` pixel by pixel, with ``s`` from ``singulars()`` (1 = observed, 0 = missing).
    """

    def Vt(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1)

    def V(self, c: Tensor) -> Tensor:
        return c.reshape(c.shape[0], *self.x_shape)

    def U(self, c: Tensor) -> Tensor:
        return self.V(c)

    def Ut(self, y: Tensor) -> Tensor:
        return self.Vt(y)


class Composite(Operator):
    """The chain ``A = A_n ... A_2 A_1`` (``ops[0]`` is applied first).

    ``A_pinv`` applies the parts' pseudo-inverses in reverse order, ``A_1^+ ... A_n^+``. That product is
    the true pseudo-inverse only for some chains: it is when every later part has full row rank and
    orthonormal-up-to-scale rows on the range of the earlier ones (e.g. grey then average-pool SR), it is
    *not* for a mask followed by average pooling (a half-masked block loses half its weight). The
    ``old_photo`` task therefore has its own exact SVD operator (:mod:`ddnm.operators.old_photo`);
    ``Composite`` is for experiments, and has no SVD view.
    """

    has_svd = False

    def __init__(self, ops: Sequence[Operator], name: str = "composite") -> None:
        if not ops:
            raise ValueError("ops must hold at least one operator, got an empty sequence")
        super().__init__(ops[0].x_shape)
        self.name = name
        self.ops = nn.ModuleList(ops)

    @property
    def batch_size(self) -> int | None:
        sizes = {op.batch_size for op in self.ops} - {None}
        return sizes.pop() if sizes else None

    def select(self, index: Sequence[int]) -> Operator:
        return Composite([op.select(index) for op in self.ops], name=self.name)

    def A(self, x: Tensor) -> Tensor:
        for op in self.ops:
            x = op.A(x)
        return x

    def A_pinv(self, y: Tensor) -> Tensor:
        for op in reversed(self.ops):
            y = op.A_pinv(y)
        return y

    def y_to_image(self, y: Tensor) -> Tensor:
        return self.ops[-1].y_to_image(y)
