"""Our eps model as the side-by-side tests against other code use it (tests/unit/test_vs_deepinv.py,
tests/public): recording every state it is called with, and stepping through another code's time steps."""

from __future__ import annotations

import torch


class Recorded(torch.nn.Module):
    """Our eps model, recording every ``(t, x_t)`` it is called with. ``bounded``: the same network
    read as ``x0 = tanh(net(x_t, t))``, so Tweedie's x0 stays in (-1, 1) and neither side's clip to
    [-1, 1] acts (DiffPIR and DPS clip, differently: see their tests)."""

    def __init__(self, model, alpha_bar, *, bounded: bool):
        super().__init__()
        self.model, self.abar, self.bounded = model, alpha_bar, bounded
        self.calls: list[tuple[int, torch.Tensor]] = []

    def forward(self, x, t):
        t = torch.as_tensor(t).expand(x.shape[0])
        self.calls.append((int(t[0]), x.detach().clone()))
        out = self.model(x, t)[:, : x.shape[1]]
        if not self.bounded:
            return out
        ab = self.abar.to(x)[t].view(-1, 1, 1, 1)
        return (x - ab.sqrt() * torch.tanh(out)) / (1 - ab).sqrt()


class Reindexed(torch.nn.Module):
    """``eps(x, times[t])``: our solver run on the sub-schedule ``alpha_bar[times]`` steps through
    exactly the time steps the other code visits."""

    def __init__(self, eps, times):
        super().__init__()
        self.eps, self.times = eps, torch.as_tensor(times)

    def forward(self, x, t):
        return self.eps(x, self.times[torch.as_tensor(t)])
