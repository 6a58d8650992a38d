"""Training and evaluation data for the small prior: the photos scikit-image ships, offline.

Training draws random ``crop x crop`` RGB crops (random horizontal flips) from a pyramid of the
bundled photos at scales 1, 1/2 and 1/4 (area downsampling). A level is drawn with probability
proportional to its photo's weight times its scale's share, whatever its pixel count (so the huge
retina does not dominate); colour photographs weigh more, so the prior keeps colour statistics for
colorization. ``chelsea`` (== ``cat``) and ``coffee`` are held out entirely: they are the evaluation
set (:func:`eval_patches`) and the demo images.

Everything is seeded: the same seed gives the same crops, batch after batch. Images are float32
tensors ``(B, 3, H, W)`` in ``[-1, 1]``.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

# name -> weight (multiplies the pixel count when drawing an image). Colour photographs weigh more.
TRAIN_PHOTOS: dict[str, float] = {
    "astronaut": 3.0,
    "rocket": 3.0,
    "motorcycle_left": 1.5,
    "motorcycle_right": 1.5,
    "immunohistochemistry": 2.0,
    "retina": 0.5,
    "hubble_deep_field": 0.5,
    "camera": 1.0,
    "coins": 1.0,
    "moon": 0.5,
    "brick": 0.5,
    "grass": 0.5,
    "gravel": 0.5,
    "clock": 0.5,
    "page": 0.25,
    "text": 0.25,
}
HELD_OUT: tuple[str, ...] = ("chelsea", "coffee")
SCALES: dict[float, float] = {1.0: 0.45, 0.5: 0.35, 0.25: 0.2}  # pyramid scale -> share of draws


def load_photo(name: str) -> np.ndarray:
    """One bundled photo as float32 ``(H, W, 3)`` RGB in ``[0, 1]`` (grey images are replicated)."""
    import skimage.data

    if name in ("motorcycle_left", "motorcycle_right"):
        left, right, _ = skimage.data.stereo_motorcycle()
        arr = left if name == "motorcycle_left" else right
    else:
        arr = getattr(skimage.data, name)()
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    arr = arr[..., :3]
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    return np.clip(arr.astype(np.float32), 0.0, 1.0)


def _resize(arr: np.ndarray, scale: float) -> np.ndarray:
    if scale == 1.0:
        return arr
    h, w = arr.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    img = Image.fromarray((arr * 255.0 + 0.5).astype(np.uint8))
    return np.asarray(img.resize(size, Image.Resampling.BOX), dtype=np.float32) / 255.0


class CropSampler:
    """Seeded random crops from the training pyramid.

    Args:
        crop: side of the square crops (pixels).
        seed: seed of the sampler's own generator (no global random state).
        photos: name -> weight; defaults to :data:`TRAIN_PHOTOS` (never the held-out photos).
        scales: pyramid scale -> share of draws; a level is kept when both sides are >= ``crop``.
        grey_share: if given, the share of draws from grey photos (0 = colour photos only); the
            photos' weights then only set the proportions within the grey and the colour group.
    """

    def __init__(self, *, crop: int, seed: int, photos: dict[str, float] | None = None,
                 scales: dict[float, float] = SCALES, grey_share: float | None = None) -> None:
        if crop < 8:
            raise ValueError(f"crop must be >= 8, got {crop}")
        photos = TRAIN_PHOTOS if photos is None else photos
        bad = sorted(set(photos) & set(HELD_OUT))
        if bad:
            raise ValueError(f"photos must not contain the held-out photos, got {bad}")
        self.crop = crop
        self.levels: list[torch.Tensor] = []  # (3, H, W) in [-1, 1]
        self.names: list[str] = []
        weights = []
        for name, w in photos.items():
            base = load_photo(name)
            for s, share in scales.items():
                arr = _resize(base, s)
                if min(arr.shape[:2]) < crop:
                    continue
                self.levels.append(torch.from_numpy(arr).permute(2, 0, 1).mul(2.0).sub(1.0).contiguous())
                self.names.append(f"{name}@{s}")
                weights.append(w * share)
        self.weights = torch.tensor(weights, dtype=torch.float64)
        self.grey = [bool((lv[0] == lv[1]).all() and (lv[1] == lv[2]).all()) for lv in self.levels]
        if grey_share is not None:
            if not 0.0 <= grey_share < 1.0:
                raise ValueError(f"grey_share must be in [0, 1), got {grey_share}")
            grey = torch.tensor(self.grey)
            if grey.all():
                raise ValueError("grey_share needs at least one colour photo")
            w = self.weights
            share = torch.where(grey, grey_share / w[grey].sum().clamp(min=1e-12),
                                (1.0 - grey_share) / w[~grey].sum())
            self.weights = w * share
        self.generator = torch.Generator().manual_seed(seed)

    def batch(self, size: int) -> torch.Tensor:
        """``size`` crops as float32 ``(size, 3, crop, crop)`` in ``[-1, 1]``."""
        g, c = self.generator, self.crop
        idx = torch.multinomial(self.weights, size, replacement=True, generator=g)
        out = torch.empty(size, 3, c, c)
        for b, i in enumerate(idx.tolist()):
            img = self.levels[i]
            h, w = img.shape[1:]
            top = int(torch.randint(0, h - c + 1, (1,), generator=g))
            left = int(torch.randint(0, w - c + 1, (1,), generator=g))
            patch = img[:, top:top + c, left:left + c]
            if bool(torch.rand((), generator=g) < 0.5):
                patch = patch.flip(-1)
            out[b] = patch
        return out

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


def eval_patches(*, size: int = 64, per_image: int = 6, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """The fixed evaluation set: seeded ``size x size`` crops of the held-out photos at full scale.

    Returns float32 ``(2 * per_image, 3, size, size)`` in ``[-1, 1]`` and one key per patch
    (``"chelsea/y_x"``), the same on every machine for a given seed.
    """
    g = np.random.default_rng(seed)
    out, keys = [], []
    for name in HELD_OUT:
        arr = load_photo(name)
        h, w = arr.shape[:2]
        for _ in range(per_image):
            top, left = int(g.integers(0, h - size + 1)), int(g.integers(0, w - size + 1))
            out.append(torch.from_numpy(arr[top:top + size, left:left + size].copy()).permute(2, 0, 1))
            keys.append(f"{name}/{top}_{left}")
    return torch.stack(out).mul(2.0).sub(1.0), keys
