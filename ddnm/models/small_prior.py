"""The small prior the project trains and ships: a 1.7 M-parameter ADM UNet, loaded by name.

``ddnm.models.build("small-prior")`` loads the bundled weights
(``ddnm/models/weights/small_prior.safetensors``, trained by ``train/train_prior.py`` on crops of
scikit-image's bundled photos, see ``weights/MODEL_CARD.md``). It predicts eps for the public
linear schedule (betas 1e-4 .. 0.02, T = 1000), 3 output channels (no learned sigma), images in
``[-1, 1]``. It is convolutional: trained on 32x32 crops, it samples any side divisible by 8
(64x64 is what its evaluation uses).

Clipped x0 (``clip_x0=True``, the default): a 1.7 M-parameter net cannot predict eps to the ~1e-3
precision that the highest noise levels need (there ``x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar)``
multiplies eps errors by up to 157), so its raw x0 estimates at t ~ 999 carry colour offsets of
several units, which no linear constraint corrects in the null space of colorization. The adapter
therefore returns the eps that is consistent with the clamped estimate,
``eps' = (x_t - sqrt(abar_t) clamp(x0, -1, 1)) / sqrt(1 - abar_t)`` -- guided-diffusion's
``clip_denoised``, expressed as an eps for any eps-sampler. ``clip_x0=False`` gives the raw network.

Image mean (``dc_prior``, on when the weights carry its statistics): the UNet cannot see the mean
of each channel of its input. Its last GroupNorm has one channel per group, so it removes every
feature channel's spatial mean, and the output's mean per channel depends only on the
mean-free content. The part of ``x_t``'s channel means that is noise therefore never reaches
eps: the network's eps has mean ~0, and ``x0 = x_t / sqrt(abar)`` in the mean, which is the noise
amplified up to 157x. Measured on 64x64 held-out patches, the raw x0's per-image colour offset is
off by 2.9 at t = 999 and 0.74 at t = 900, in a [-1, 1] image. Operators that observe the mean
(SR, inpainting) repair it in their range space. Colorization does not: its null space holds the
colour of the mean, so samples got random saturated global colours (13.6 dB against 16.8 for
the grey image). ``DCPrior`` replaces the per-channel mean of eps by its Bayes estimate under a
Gaussian prior on the per-channel image mean, ``m ~ N(mu, S)``, fitted on the training crops.
The mean of ``x_t`` is ``z = sqrt(abar) m + sqrt(1 - abar) n`` with ``n ~ N(0, I / (H W))``, so

    E[m | z] = mu + sqrt(abar) S (abar S + (1 - abar) / (H W) I)^-1 (z - sqrt(abar) mu)
    mean(eps) = (z - sqrt(abar) E[m | z]) / sqrt(1 - abar)

The network's mean-free eps is kept unchanged. The clamp of x0 comes after this.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ddnm.models.adm import ADMConfig, ADMUNet
from ddnm.models.base import ADMEps, cast_network

WEIGHTS = Path(__file__).parent / "weights" / "small_prior.safetensors"

SMALL_PRIOR_CONFIG = ADMConfig(
    image_size=32,  # training crop side; attention sits at 8x8 and 4x4 of a 32x32 input
    in_channels=3,
    model_channels=32,
    channel_mult=(1, 2, 2, 2),
    num_res_blocks=1,
    attention_resolutions=(8, 4),
    num_head_channels=32,
    learn_sigma=False,
    use_scale_shift_norm=True,
    resblock_updown=False,
    conv_resample=True,
)


DC_PREFIX = "dc_prior."  # keys of the image-mean statistics inside the weights file


class DCPrior(torch.nn.Module):
    """Gaussian prior on an image's per-channel mean, for one or more image sides.

    Buffers (float64): ``sizes`` (S,) crop sides the statistics were fitted at, ``mean`` (S, C)
    and ``cov`` (S, C, C). An image uses the statistics of the side nearest its ``sqrt(H W)``
    (in log scale): larger crops have less variable means.
    """

    def __init__(self, sizes: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> None:
        super().__init__()
        s, c = mean.shape
        if sizes.shape != (s,) or cov.shape != (s, c, c):
            raise ValueError(f"DC prior shapes do not match: sizes {tuple(sizes.shape)}, "
                             f"mean {tuple(mean.shape)}, cov {tuple(cov.shape)}")
        self.register_buffer("sizes", sizes.double())
        self._log_sizes = [math.log(float(v)) for v in sizes.tolist()]  # picked on the host, no sync
        self.register_buffer("mean", mean.double())
        self.register_buffer("cov", cov.double())

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> DCPrior | None:
        """The prior stored under :data:`DC_PREFIX` in a weights file's tensors, or ``None``."""
        keys = [DC_PREFIX + k for k in ("sizes", "mean", "cov")]
        if not all(k in state for k in keys):
            return None
        return cls(*(state[k] for k in keys))

    def state(self) -> dict[str, torch.Tensor]:
        return {DC_PREFIX + k: getattr(self, k).clone() for k in ("sizes", "mean", "cov")}

    def eps_mean(self, x_t: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
        """(B, C) per-channel spatial mean of E[eps | mean of x_t] (module docstring).

        Args:
            x_t: (B, C, H, W) noisy images.
            abar: (B,) alpha_bar of each image's timestep.
        """
        h, w = x_t.shape[-2:]
        side = 0.5 * math.log(h * w)
        i = min(range(len(self._log_sizes)), key=lambda j: abs(self._log_sizes[j] - side))
        mu, cov = self.mean[i].double().view(1, -1, 1), self.cov[i].double()
        eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
        z = x_t.mean((2, 3), dtype=torch.float64).unsqueeze(-1)  # (B, C, 1), no float64 copy of x_t
        sa = abar.double().sqrt().view(-1, 1, 1)
        var_n = (1.0 - abar.double()).view(-1, 1, 1) / (h * w)
        gain = torch.linalg.solve(sa**2 * cov + var_n * eye, z - sa * mu)
        m = mu + sa * (cov @ gain)
        return ((z - sa * m) / (1.0 - sa**2).sqrt()).squeeze(-1)


class SmallPriorEps(ADMEps):
    """:class:`ADMEps` with the image-mean prior and x0 clamp of the module docstring.

    Both use the public linear schedule (the one the prior was trained for). ``dc_prior=None``
    keeps the network's own eps mean.
    """

    def __init__(self, net: ADMUNet, *, clip_x0: bool = True, dc_prior: DCPrior | None = None,
                 **kw) -> None:
        super().__init__(net, **kw)
        self.clip_x0 = clip_x0
        self.dc_prior = dc_prior
        self.register_buffer("_abar", self.alpha_bar(), persistent=False)  # the model's own schedule

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None):
        eps = super().forward(x_t, t, class_labels)
        if not self.clip_x0 and self.dc_prior is None:
            return eps
        t = torch.as_tensor(t, device=x_t.device).expand(x_t.shape[0])
        abar = self._abar.to(x_t.device)[t]
        if self.dc_prior is not None:
            mean = self.dc_prior.eps_mean(x_t, abar).to(eps.dtype)[..., None, None]
            eps = eps - eps.mean((2, 3), keepdim=True) + mean
        if not self.clip_x0:
            return eps
        ab = abar.to(x_t.dtype).view(-1, 1, 1, 1)
        x0 = ((x_t - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1.0, 1.0)
        return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()

    def extra_repr(self) -> str:
        return super().extra_repr() + f", clip_x0={self.clip_x0}, dc_prior={self.dc_prior is not None}"


def small_prior_unet() -> ADMUNet:
    """The bare UNet of :data:`SMALL_PRIOR_CONFIG` with fresh random weights (float32)."""
    return ADMUNet(SMALL_PRIOR_CONFIG)


def load_small_prior_weights(unet: ADMUNet, checkpoint: str | Path | None = None) -> DCPrior | None:
    """Load ``checkpoint`` (a ``.safetensors`` file or a training ``ckpt.pt``; ``None`` = bundled)
    into ``unet``; return the file's :class:`DCPrior`, or ``None`` when it has none.

    A training checkpoint contributes its EMA weights. Raises ``ValueError`` naming the path when it
    is missing or does not fit the architecture.
    """
    path = WEIGHTS if checkpoint is None else Path(checkpoint)
    if not path.is_file():
        raise ValueError(f"checkpoint {str(path)!r} of the small prior does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("ema", state)
    dc = {k: state.pop(k) for k in [k for k in state if k.startswith(DC_PREFIX)]}
    try:
        unet.load_state_dict(state)
        return DCPrior.from_state(dc)
    except (RuntimeError, ValueError) as err:
        raise ValueError(f"checkpoint {str(path)!r} does not fit the small prior: {err}") from err


def build_small_prior(
    checkpoint: str | Path | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    clip_x0: bool = True,
    dc_prior: bool = True,
) -> SmallPriorEps:
    """The small prior as ``eps = model(x_t, t)`` (eval mode, no gradients).

    Args:
        checkpoint: ``None`` for the bundled weights, ``"random"`` for random weights (same cost),
            or a path to a ``.safetensors`` file or a training ``ckpt.pt``.
        device, dtype: where the weights live and the compute dtype (float16 / bfloat16 cast only
            the convolutions, see ``cast_network``). ``model.image_size`` is the training crop
            side (32); any side divisible by 8 works.
        clip_x0: return the eps consistent with the x0 estimate clamped to ``[-1, 1]`` (module
            docstring); False for the raw network output.
        dc_prior: use the image-mean prior stored with the weights, when they have one (module
            docstring); False keeps the network's own eps mean.
    """
    unet = small_prior_unet()
    dc = None
    if checkpoint != "random":
        dc = load_small_prior_weights(unet, checkpoint)
    dc = dc.to(device) if dc is not None and dc_prior else None
    unet = cast_network(unet.to(device), dtype)
    source = "random" if checkpoint == "random" else str(WEIGHTS if checkpoint is None else checkpoint)
    return SmallPriorEps(unet, clip_x0=clip_x0, dc_prior=dc, name="small-prior", family="small-prior",
                         image_size=SMALL_PRIOR_CONFIG.image_size, dtype=dtype, checkpoint=source)
