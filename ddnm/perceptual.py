"""Perceptual networks from local weight files: LPIPS per image pair, Inception pool features per image.

Nothing is downloaded: every loader takes a path the caller already has (the job layer fetches URLs
into local files first). The networks are the reference implementations, used as libraries:

* LPIPS: the ``lpips`` package of the paper's authors (Zhang et al. 2018, v0.1 linear heads);
* Inception: ``torch-fidelity``'s ``FeatureExtractorInceptionV3``, the TensorFlow-exact port of the
  FID Inception (2015-12-05 graph, TF1-style bilinear resize to 299) that torchmetrics also uses.

Both libraries are imported lazily, so ``ddnm`` imports without them. FID and KID over the features
live in ``ddnm.set_metrics``.
"""

from __future__ import annotations

import os
import warnings

import torch

#: Where each weight file comes from (one line each, quoted in the errors).
SOURCES = {
    "alex": "torchvision's ImageNet AlexNet, https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    "vgg": "torchvision's ImageNet VGG16, https://download.pytorch.org/models/vgg16-397923af.pth",
    "head": "the lpips package's v0.1 linear heads, lpips/weights/v0.1/{net}.pth inside the pip package",
    "inception": "torch-fidelity's FID Inception, https://github.com/toshas/torch-fidelity/releases/"
                 "download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
}
NETS = ("alex", "vgg")
# Smallest side that survives every pooling layer the LPIPS taps go through.
_MIN_SIDE = {"alex": 31, "vgg": 16}
_KEEP_ALIVE: list = []  # op schemas declared by import_torchvision live as long as the process


def import_torchvision() -> None:
    """Import torchvision (both libraries need it), tolerating a wheel whose compiled ops cannot load.

    The loaders call it; call it yourself before importing ``lpips`` or ``torch_fidelity`` directly.

    PyPI's Linux torchvision wheel links against CUDA torch; beside a CPU-only torch build its ``_C``
    extension does not load, and torchvision 0.28 then fails on import while registering fake kernels
    for ``torchvision::nms`` and ``torchvision::qnms``. The models used here are pure Python, so on
    exactly that error the two op schemas are declared (without kernels: nms itself still fails) and
    the import is retried. Any other import error propagates.
    """
    try:
        import torchvision  # noqa: F401
    except RuntimeError as e:
        if "operator torchvision::" not in str(e) or _KEEP_ALIVE:
            raise
        lib = torch.library.Library("torchvision", "FRAGMENT")
        for op in ("nms", "qnms"):
            if not hasattr(torch.ops.torchvision, op):
                lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _KEEP_ALIVE.append(lib)
        import torchvision  # noqa: F401


def _load_state_dict(path, what: str, source: str) -> dict[str, torch.Tensor]:
    """A plain state dict from ``path`` (``weights_only``), or a one-line error naming the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} weights not found: {path} (download once: {source})")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a file that is not a weights pickle
        raise ValueError(f"{what} weights {path}: not a PyTorch weights file ({type(e).__name__}); "
                         f"expected {source}") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{what} weights {path}: not a state dict of tensors; expected {source}")
    return sd


def _check_keys(sd: dict, want: dict, path, what: str, source: str) -> None:
    """Every key of ``want`` in ``sd`` with the same shape, else ValueError naming the first offender."""
    for k, v in want.items():
        if k not in sd:
            raise ValueError(f"{what} weights {path}: missing {k!r}; expected {source}")
        if sd[k].shape != v.shape:
            raise ValueError(f"{what} weights {path}: {k!r} has shape {tuple(sd[k].shape)}, "
                             f"expected {tuple(v.shape)} ({source})")


def _rgb(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"{name} must be (B, 1 or 3, H, W), got {tuple(x.shape)}")
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


class LPIPS:
    """LPIPS distance per image pair (lower = more alike); build with :func:`load_lpips`.

    ``metric(x, ref)``: ``x``, ``ref`` ``(B, C, H, W)`` on ``[0, 1]``, C = 1 (repeated to RGB) or 3,
    H, W >= 31 (alex) or 16 (vgg) -> ``(B,)`` float64 on the CPU. Runs on ``self.device``.
    """

    def __init__(self, model: torch.nn.Module, net: str, device: torch.device):
        self.model, self.net, self.device = model, net, device

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        if x.shape != ref.shape:
            raise ValueError(f"x and ref must have the same shape, got {tuple(x.shape)} and "
                             f"{tuple(ref.shape)}")
        x, ref = _rgb(x, "x"), _rgb(ref, "ref")
        if min(x.shape[-2:]) < _MIN_SIDE[self.net]:
            raise ValueError(f"LPIPS ({self.net}) needs images of at least {_MIN_SIDE[self.net]} px a side, "
                             f"got {tuple(x.shape[-2:])}")
        dev, f32 = self.device, torch.float32
        d = self.model(x.to(dev, f32), ref.to(dev, f32), normalize=True)  # normalize: [0, 1] -> [-1, 1]
        return d.flatten().double().cpu()


def load_lpips(path, *, net: str = "alex", device="cpu", head=None) -> LPIPS:
    """LPIPS v0.1 with the ``net`` backbone from local files.

    ``path``: the backbone's torchvision ImageNet weights (``alexnet-owt-7be5be79.pth`` or
    ``vgg16-397923af.pth``, see ``SOURCES``), or one combined file holding ``lpips.LPIPS(net=net)``'s
    whole state dict (backbone ``net.*`` and heads ``lin*``; then ``head`` must be None).
    ``head``: the linear heads (``lpips/weights/v0.1/<net>.pth``); None takes the copy shipped inside
    the installed ``lpips`` package, which is that same file.
    """
    if net not in NETS:
        raise ValueError(f"net={net!r}: expected one of {', '.join(NETS)}")
    import_torchvision()
    import lpips

    device = torch.device(device)
    # Random weights first (no download), then every tensor is replaced from the files below. The heads
    # are registered twice (lin0.. and lins.0..); the files hold the lin0.. names.
    with warnings.catch_warnings():  # lpips still passes torchvision the deprecated `pretrained=`
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(pretrained=False, net=net, pnet_rand=True, verbose=False)
    sd = _load_state_dict(path, f"LPIPS {net} backbone", SOURCES[net])
    if any(k.startswith("lin0.") for k in sd):
        if head is not None:
            raise ValueError(f"head={os.fspath(head)!r}: {path} already holds the LPIPS heads (lin*); pass "
                             "head=None")
        want = {k: v for k, v in model.state_dict().items() if not k.startswith(("scaling_layer.", "lins."))}
        _check_keys(sd, want, path, f"LPIPS {net}", "lpips.LPIPS(net=...).state_dict()")
        model.load_state_dict({k: sd[k] for k in want}, strict=False)
    else:
        # lpips splits torchvision's `features` into slices that keep the layer indices:
        # net.slice2.3.weight is features.3.weight.
        want = {"features." + k.split(".", 1)[1]: v for k, v in model.net.state_dict().items()}
        _check_keys(sd, want, path, f"LPIPS {net} backbone", SOURCES[net])
        model.net.load_state_dict({k: sd["features." + k.split(".", 1)[1]] for k in model.net.state_dict()})
        if head is None:
            head = os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", f"{net}.pth")
        hsd = _load_state_dict(head, f"LPIPS {net} heads", SOURCES["head"].format(net=net))
        want = {k: v for k, v in model.state_dict().items()
                if k.startswith("lin") and not k.startswith("lins.")}
        _check_keys(hsd, want, head, f"LPIPS {net} heads", SOURCES["head"].format(net=net))
        model.load_state_dict({k: hsd[k] for k in want}, strict=False)
    model.requires_grad_(False)
    return LPIPS(model.eval().to(device), net, device)


class InceptionFeatures:
    """FID Inception pool features; build with :func:`load_inception`.

    ``features(x)``: ``x`` ``(B, C, H, W)`` on ``[0, 1]`` (C = 1 is repeated to RGB), any size ->
    ``(B, 2048)`` float64 on the CPU. ``x`` is first rounded to 8 bits exactly as ``encode_png``
    writes a PNG (``rint(clamp(x, 0, 1) * 255)``), since the network is defined on uint8 images; the
    library then resizes to 299 x 299 (TF1 bilinear) and maps to ``[-1, 1]``.
    """

    def __init__(self, model: torch.nn.Module, device: torch.device):
        self.model, self.device = model, device

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = _rgb(x, "x")
        u8 = torch.round(x.to(self.device, torch.float32).clamp(0, 1) * 255).to(torch.uint8)
        (feats,) = self.model(u8)
        return feats.double().cpu()


def load_inception(path, device="cpu") -> InceptionFeatures:
    """The FID Inception v3 (pool3, 2048-d) from a local ``weights-inception-2015-12-05-6726825d.pth``."""
    import_torchvision()
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    what, source = "FID Inception", SOURCES["inception"]
    # Read safely (weights_only) and checked here first; the library then reads the same file itself.
    sd = _load_state_dict(path, what, source)
    for k in ("Conv2d_1a_3x3.conv.weight", "Mixed_7c.branch_pool.conv.weight", "fc.weight"):
        if k not in sd:
            raise ValueError(f"{what} weights {path}: missing {k!r}; expected {source}")
    try:
        model = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                            feature_extractor_weights_path=os.fspath(path))
    except RuntimeError as e:  # load_state_dict: wrong shapes or keys
        raise ValueError(f"{what} weights {path}: {str(e).splitlines()[0]} ({source})") from None
    device = torch.device(device)
    return InceptionFeatures(model.to(device), device)
