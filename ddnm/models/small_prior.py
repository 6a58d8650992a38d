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
"""

from __future__ import annotations

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


class SmallPriorEps(ADMEps):
    """:class:`ADMEps` whose eps is consistent with an x0 estimate clamped to ``[-1, 1]``.

    The x0 estimate uses the public linear schedule (the one the prior was trained for).
    """

    def __init__(self, net: ADMUNet, *, clip_x0: bool = True, **kw) -> None:
        super().__init__(net, **kw)
        self.clip_x0 = clip_x0
        betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
        self.register_buffer("_abar", torch.cumprod(1.0 - betas, 0), persistent=False)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None):
        eps = super().forward(x_t, t, class_labels)
        if not self.clip_x0:
            return eps
        t = torch.as_tensor(t, device=x_t.device).expand(x_t.shape[0])
        ab = self._abar.to(x_t.device)[t].to(x_t.dtype).view(-1, 1, 1, 1)
        x0 = ((x_t - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-1.0, 1.0)
        return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()

    def extra_repr(self) -> str:
        return super().extra_repr() + f", clip_x0={self.clip_x0}"


def small_prior_unet() -> ADMUNet:
    """The bare UNet of :data:`SMALL_PRIOR_CONFIG` with fresh random weights (float32)."""
    return ADMUNet(SMALL_PRIOR_CONFIG)


def load_small_prior_weights(unet: ADMUNet, checkpoint: str | Path | None = None) -> ADMUNet:
    """Load ``checkpoint`` (a ``.safetensors`` file or a training ``ckpt.pt``; ``None`` = bundled).

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
    try:
        unet.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"checkpoint {str(path)!r} does not fit the small prior: {err}") from err
    return unet


def build_small_prior(
    checkpoint: str | Path | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    clip_x0: bool = True,
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
    """
    unet = small_prior_unet()
    if checkpoint != "random":
        load_small_prior_weights(unet, checkpoint)
    unet = cast_network(unet.to(device), dtype)
    source = "random" if checkpoint == "random" else str(WEIGHTS if checkpoint is None else checkpoint)
    return SmallPriorEps(unet, clip_x0=clip_x0, name="small-prior", family="small-prior",
                         image_size=SMALL_PRIOR_CONFIG.image_size, dtype=dtype, checkpoint=source)
