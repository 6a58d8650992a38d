"""Specific facts about each operator: what A computes, files, quirks, spec errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ddnm.operators import TASKS, Composite, Operator, build, load_mask, random_mask, tasks_json
from ddnm.operators.blur import gaussian_kernel
from ddnm.operators.color import Colorize
from ddnm.operators.inpaint import Inpaint
from ddnm.operators.sr import AvgPoolSR, keys_cubic

DT = torch.float64


def _rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT) * 2 - 1


def _smooth(H, W):
    lin = lambda n: torch.linspace(0, 1, n, dtype=DT)  # noqa: E731
    yy, xx = torch.meshgrid(lin(H), lin(W), indexing="ij")
    return torch.stack([torch.sin(3 * yy + 2 * xx), torch.cos(5 * xx) * yy, yy * xx - 0.3])[None]


# -- super-resolution ---------------------------------------------------------------------------------
def test_avgpool_is_block_mean_and_pinv_replicates():
    op = build("sr_avgpool", (2, 6, 9), scale=3, dtype=DT)
    x = _rand(1, 2, 6, 9)
    y = op.A(x)
    assert y.shape == (1, 2, 2, 3)
    for i in range(2):
        for j in range(3):
            block = x[0, :, 3 * i : 3 * i + 3, 3 * j : 3 * j + 3]
            torch.testing.assert_close(y[0, :, i, j], block.mean((1, 2)))
    up = op.A_pinv(y)
    assert torch.equal(up[0, :, 3:6, 6:9], y[0, :, 1:2, 2:3].expand(2, 3, 3))
    s = op.singulars()
    assert torch.allclose(s[s > 0], torch.full_like(s[s > 0], 1 / 3)) and int((s > 0).sum()) == 2 * 2 * 3


def _naive_bicubic(n, s):
    """Row m: weights k((j + 1/2 - (m + 1/2) s) / s) over all j with |x| < 2, mirrored at the borders."""
    M = np.zeros((n // s, n))
    for m in range(n // s):
        taps = {}
        for j in range(-4 * s, n + 4 * s):
            xv = (j + 0.5 - (m + 0.5) * s) / s
            if abs(xv) < 2:
                taps[j] = float(keys_cubic(torch.tensor(xv, dtype=DT)))
        total = sum(taps.values())
        for j, wv in taps.items():
            jj = -j - 1 if j < 0 else (2 * n - 1 - j if j >= n else j)
            M[m, jj] += wv / total
    return torch.from_numpy(M)


@pytest.mark.parametrize("scale", [2, 3])
def test_bicubic_matches_explicit_1d_construction(scale):
    H, W = 12, 18
    op = build("sr_bicubic", (3, H, W), scale=scale, cutoff=0.0, dtype=DT)
    x = _rand(2, 3, H, W)
    Mh, Mw = _naive_bicubic(H, scale), _naive_bicubic(W, scale)
    torch.testing.assert_close(op.A(x), Mh @ x @ Mw.T)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_bicubic_interior_equals_antialiased_interpolate(scale):
    # same kernel (Keys a = -0.5 stretched by s); borders differ (mirror vs truncated and renormalised)
    x = _smooth(48, 72)
    y = build("sr_bicubic", (3, 48, 72), scale=scale, cutoff=0.0, dtype=DT).A(x)
    size = (48 // scale, 72 // scale)
    ref = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(y[..., 2:-2, 2:-2], ref[..., 2:-2, 2:-2], atol=1e-12, rtol=0)
    assert float((y - ref).abs().max()) > 1e-4  # the borders do differ: the comparison is not vacuous


def test_bicubic_reference_quirk_odd_scale_only():
    x = _smooth(48, 72)
    for scale, differs in ((2, False), (3, True)):
        a = build("sr_bicubic", (3, 48, 72), scale=scale, dtype=DT)
        b = build("sr_bicubic", (3, 48, 72), scale=scale, quirks="reference", dtype=DT)
        assert (float((a.A(x) - b.A(x)).abs().max()) > 1e-3) == differs


def test_sr_observe_takes_the_low_resolution_image():
    op = build("sr_avgpool", (3, 8, 12), scale=4, dtype=DT)
    lr = _rand(2, 3, 2, 3)
    assert torch.equal(op.observe(lr), lr)
    with pytest.raises(ValueError, match=r"\(B, 3, 2, 3\)"):
        op.observe(_rand(2, 3, 4, 3))
    assert TASKS["sr_bicubic"].x_shape_from_observation((3, 64, 40), scale=4) == (3, 256, 160)


# -- colorization ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "weights,expected",
    [
        ("equal", (1 / 3, 1 / 3, 1 / 3)),
        ("reference", (0.3333, 0.3334, 0.3333)),
        ("luma", (0.299, 0.587, 0.114)),
        ((0.2, 0.3, 0.5), (0.2, 0.3, 0.5)),
    ],
)
def test_colorize_weights(weights, expected):
    op = Colorize((3, 2, 2), weights).to(DT)
    for k in range(3):
        x = torch.zeros(1, 3, 2, 2, dtype=DT)
        x[:, k] = 1.0
        torch.testing.assert_close(op.A(x), torch.full((1, 1, 2, 2), expected[k], dtype=DT))
    w = torch.tensor(expected, dtype=DT)
    torch.testing.assert_close(op.singulars()[:4], w.norm().expand(4))


def test_colorize_default_is_equal_weights_and_pinv_replicates_grey():
    op = build("colorize", (3, 4, 5), dtype=DT)
    g = _rand(1, 1, 4, 5)
    torch.testing.assert_close(op.A_pinv(g), g.expand(1, 3, 4, 5))
    with pytest.raises(ValueError, match="weights"):
        build("colorize", (3, 4, 5), weights="sepia")
    with pytest.raises(ValueError, match="3-channel"):
        build("colorize", (1, 4, 5))


def test_colorize_observe_grey_photo():
    op = build("colorize", (3, 4, 5), weights="luma", dtype=DT)
    g = _rand(2, 1, 4, 5)
    torch.testing.assert_close(op.observe(g), g)  # luma weights sum to 1
    torch.testing.assert_close(op.observe(g.expand(2, 3, 4, 5)), g)
    torch.testing.assert_close(op.y_to_image(op.observe(g)), g)


# -- inpainting and masks -----------------------------------------------------------------------------
def test_mask_png_and_npy_files(tmp_path):
    arr = np.zeros((4, 6), dtype=np.uint8)
    arr[1:3, 2:5] = 200
    arr[0, 0] = 127  # not > 127: dropped
    Image.fromarray(arr).save(tmp_path / "m.png")
    m = load_mask(tmp_path / "m.png", 4, 6)
    assert m.shape == (1, 1, 4, 6)
    assert torch.equal(m[0, 0], torch.from_numpy((arr > 127).astype(np.float64)))
    np.save(tmp_path / "m.npy", arr > 127)
    assert torch.equal(load_mask(str(tmp_path / "m.npy"), 4, 6), m)
    np.save(tmp_path / "f.npy", (arr > 127).astype(np.float32))
    assert torch.equal(load_mask((tmp_path / "f.npy").read_bytes(), 4, 6), m)
    assert torch.equal(load_mask((tmp_path / "m.png").read_bytes(), 4, 6), m)


def test_mask_wrong_size_names_the_file(tmp_path):
    Image.fromarray(np.zeros((5, 7), dtype=np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(ValueError, match=r"small\.png.*5x7.*8x9"):
        load_mask(tmp_path / "small.png", 8, 9)
    with pytest.raises(ValueError, match=r"small\.png.*5x7"):
        build({"task": "inpaint", "mask": str(tmp_path / "small.png")}, (3, 8, 9))
    with pytest.raises(ValueError, match="missing.png"):
        build("inpaint", (3, 8, 9), mask=str(tmp_path / "missing.png"))


def test_random_mask_is_seeded_and_keeps_the_ratio():
    a, b, c = (random_mask(10, 12, 0.5, seed=seed) for seed in (3, 3, 4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert int(a.sum()) == 60
    op = build("inpaint", (3, 10, 12), dtype=DT)  # default: DDRM's random 50%
    assert torch.equal(op.mask, random_mask(10, 12, 0.5, seed=0))


def test_box_and_center_masks():
    op = build("inpaint", (3, 8, 10), mask="box", box=(1, 2, 3, 4), dtype=DT)
    assert int((op.mask == 0).sum()) == 12 and float(op.mask[0, 0, 1:4, 2:6].sum()) == 0
    op = build("inpaint", (3, 8, 10), mask="center", fraction=0.5, dtype=DT)
    assert float(op.mask[0, 0, 2:6, 2:7].sum()) == 0 and int((op.mask == 0).sum()) == 20
    with pytest.raises(ValueError, match="box"):
        build("inpaint", (3, 8, 10), mask="box", box=(6, 0, 4, 4))


def test_inpaint_per_image_masks_and_select():
    masks = (torch.rand(3, 1, 6, 7, generator=torch.Generator().manual_seed(0)) > 0.5).to(DT)
    op = build("inpaint", (3, 6, 7), masks=masks, dtype=DT)
    x = _rand(3, 3, 6, 7)
    torch.testing.assert_close(op.A(x), x * masks)
    assert op.singulars().shape == (3, 3 * 6 * 7)
    sub = op.select([2, 2, 0])
    torch.testing.assert_close(sub.A(x[[2, 2, 0]]), (x * masks)[[2, 2, 0]])
    with pytest.raises(ValueError, match="per-image parameters for 3 images but got a batch of 2"):
        op.A(x[:2])
    with pytest.raises(ValueError, match="either mask or masks"):
        build("inpaint", (3, 6, 7), masks=masks, mask="random")
    per_channel = (torch.rand(2, 3, 6, 7) > 0.5).to(DT)
    torch.testing.assert_close(Inpaint((3, 6, 7), per_channel).A(x[:2]), x[:2] * per_channel)


# -- blur and reference quirks ------------------------------------------------------------------------
def test_blur_interior_equals_convolution():
    x = _rand(1, 3, 20, 22)
    k = gaussian_kernel(5, 1.5)
    op = build("deblur_gauss", (3, 20, 22), size=5, sigma=1.5, cutoff=0.0, dtype=DT)
    ref = F.conv2d(x, torch.outer(k, k).expand(3, 1, 5, 5), groups=3)
    torch.testing.assert_close(op.A(x)[..., 2:-2, 2:-2], ref)
    const = torch.full((1, 3, 20, 22), 0.7, dtype=DT)
    torch.testing.assert_close(op.A(const), const)  # reflect padding keeps constants


def _reference_blur_matrix(n, kernel):
    """The public code's loop: taps j in range(i - k//2, i + k//2), zero outside the image."""
    k = kernel.numel()
    M = torch.zeros(n, n, dtype=DT)
    for i in range(n):
        for j in range(i - k // 2, i + k // 2):
            if 0 <= j < n:
                M[i, j] = kernel[j - i + k // 2]
    return M


def test_reference_quirks_change_results_and_are_off_by_default():
    n = 24
    x = _rand(1, 3, n, n)
    default = build("deblur_uniform", (3, n, n), dtype=DT)
    quirky = build("deblur_uniform", (3, n, n), quirks="reference", dtype=DT)
    assert TASKS["deblur_uniform"].settings["quirks"][0] is None
    const = torch.ones(1, 3, n, n, dtype=DT)
    assert abs(float(default.A(const)[0, 0, 12, 12]) - 1.0) < 1e-3
    assert abs(float(quirky.A(const)[0, 0, 12, 12]) - (8 / 9) ** 2) < 0.02  # one of 9 taps dropped per axis
    # the quirk's singular values are the public code's: 1-D values < 3e-2 zeroed, then products
    M = _reference_blur_matrix(n, torch.full((9,), 1 / 9, dtype=DT))
    s1 = torch.linalg.svdvals(M)
    s1 = torch.where(s1 < 3e-2, torch.zeros_like(s1), s1)
    assert torch.equal(quirky.S == 0, torch.outer(s1, s1) == 0)
    torch.testing.assert_close(quirky.S, torch.outer(s1, s1))
    # on the kept components the quirky operator is the reference matrix
    P = quirky.A_pinv(quirky.A(x))
    torch.testing.assert_close(quirky.A(x), M @ P @ M.T)
    with pytest.raises(ValueError, match="quirks"):
        build("deblur_gauss", (3, n, n), quirks="ddrm")


def test_aniso_blurs_width_more_than_height():
    x = torch.zeros(1, 3, 21, 21, dtype=DT)
    x[..., 10, 10] = 1.0
    y = build("deblur_aniso", (3, 21, 21), dtype=DT).A(x)[0, 0]
    assert float(y[10, 6]) > 0.03 and float(y[10, 6]) > 100 * float(y[6, 10])


# -- compressed sensing --------------------------------------------------------------------------------
def test_walsh_matches_dense_hadamard_of_the_flattened_image():
    C, H, W = 2, 4, 8
    op = build("cs_walsh", (C, H, W), ratio=0.25, seed=1, dtype=DT)
    Hn = torch.ones(1, 1, dtype=DT)
    while Hn.shape[0] < H * W:
        Hn = torch.cat([torch.cat([Hn, Hn], 1), torch.cat([Hn, -Hn], 1)], 0)
    Hn = Hn / (H * W) ** 0.5
    x = _rand(2, C, H, W)
    coeffs = x.reshape(2, C, -1) @ Hn.T
    torch.testing.assert_close(op.A(x), coeffs[..., op.perm[:8]])
    assert op.A(x).shape == (2, C, 8)
    other = build("cs_walsh", (C, H, W), ratio=0.25, seed=2, dtype=DT)
    assert not torch.equal(op.perm, other.perm)
    with pytest.raises(ValueError, match="H=24, W=40"):
        build("cs_walsh", (3, 24, 40))


def test_block_cs_is_an_orthogonal_matrix_per_block():
    op = build("cs_block", (1, 8, 12), block=4, ratio=0.5, dtype=DT)
    torch.testing.assert_close(op.Phi @ op.Phi.T, torch.eye(16, dtype=DT))
    x = _rand(1, 1, 8, 12)
    y = op.A(x)
    assert y.shape == (1, 1, 2, 3, 8)
    block = x[0, 0, 4:8, 8:12].reshape(-1)
    torch.testing.assert_close(y[0, 0, 1, 2], op.Phi[:8] @ block)
    with pytest.raises(ValueError, match="block=5"):
        build("cs_block", (1, 8, 12), block=5)
    with pytest.raises(NotImplementedError, match="cs_block"):
        op.observe(x)


# -- old photos and composition ------------------------------------------------------------------------
def _scratches(H, W, seed=0):
    return (torch.rand(1, 1, H, W, generator=torch.Generator().manual_seed(seed)) > 0.3).to(DT)


def test_old_photo_equals_the_chain_but_its_pinv_is_exact():
    H, W, s = 8, 12, 2
    m = _scratches(H, W)
    op = build("old_photo", (3, H, W), masks=m, scale=s, dtype=DT)
    chain = Composite([
        Inpaint((3, H, W), m), Colorize((3, H, W)), AvgPoolSR((1, H, W), s),
    ]).to(DT)
    x = _rand(2, 3, H, W)
    torch.testing.assert_close(op.A(x), chain.A(x))
    y = op.A(x)
    torch.testing.assert_close(op.A(op.A_pinv(y)), y)
    # the reverse-order chain of pseudo-inverses is not a pseudo-inverse once a block is partly masked
    assert float((chain.A(chain.A_pinv(y)) - y).abs().max()) > 1e-3


def test_composite_of_grey_and_avgpool_is_exact():
    chain = Composite([Colorize((3, 8, 8)), AvgPoolSR((1, 8, 8), 4)]).to(DT)
    y = chain.A(_rand(2, 3, 8, 8))
    torch.testing.assert_close(chain.A(chain.A_pinv(y)), y)
    assert not chain.has_svd


def test_old_photo_mask_at_photo_size_and_observe():
    H, W, s = 8, 12, 4
    small = _scratches(H // s, W // s, seed=1)
    op = build("old_photo", (3, H, W), masks=small, scale=s, dtype=DT)
    assert torch.equal(op.mask, small.repeat_interleave(s, 2).repeat_interleave(s, 3))
    photo = _rand(1, 1, H // s, W // s)
    y = op.observe(photo)
    torch.testing.assert_close(y, photo * small)  # fully kept or fully scratched blocks
    assert TASKS["old_photo"].x_shape_from_observation((1, 2, 3), scale=4) == (3, 8, 12)


# -- building from specs -------------------------------------------------------------------------------
class Doubler(Operator):
    """A user operator for the dotted-path spec."""

    def __init__(self, x_shape, factor=2.0):
        super().__init__(x_shape)
        self.factor = factor

    def A(self, x):
        return self.factor * x

    def A_pinv(self, y):
        return y / self.factor


def test_spec_forms_and_errors():
    a = build("sr_avgpool", (3, 8, 8), scale=2)
    b = build({"task": "sr_avgpool", "scale": 2}, (3, 8, 8))
    assert a.scale == b.scale == 2 and a.Q.dtype == torch.float32
    assert build({"task": "sr_avgpool", "scale": "2"}, (3, 8, 8)).scale == 2  # CLI strings coerced
    boxed = build("inpaint", (3, 8, 8), mask="box", box="1,2,3,4")
    assert int((boxed.mask == 0).sum()) == 12
    grey = build("colorize", (3, 4, 4), weights="0.2,0.3,0.5", dtype=DT)
    torch.testing.assert_close(grey.w, torch.tensor([0.2, 0.3, 0.5], dtype=DT))
    op = build(f"{__name__}:Doubler", (1, 2, 2), factor=3.0)
    assert isinstance(op, Doubler) and op.factor == 3.0
    with pytest.raises(ValueError, match=r"unknown task 'sr_nearest'.*sr_avgpool"):
        build("sr_nearest", (3, 8, 8))
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['sacle'\]"):
        build("sr_avgpool", (3, 8, 8), sacle=2)
    with pytest.raises(ValueError, match="'task' key"):
        build({"scale": 2}, (3, 8, 8))
    with pytest.raises(ValueError, match=r"scale=3 must divide.*H=8"):
        build("sr_bicubic", (3, 8, 9), scale=3)
    with pytest.raises(ValueError, match="scale=.x."):
        build("sr_avgpool", (3, 8, 8), scale="x")
    with pytest.raises(ValueError, match="not a subclass"):
        build("json:dumps", (3, 8, 8))
    with pytest.raises(ValueError, match="cannot import"):
        build("no_such_pkg.mod:Op", (3, 8, 8))
    with pytest.raises(ValueError, match="x_shape"):
        build("denoise", (3, 8))
    with pytest.raises(ValueError, match="ratio"):
        TASKS["cs_block"].validate((3, 64, 64), ratio=1.5)
    with pytest.raises(ValueError, match="sigma_w"):
        TASKS["deblur_aniso"].validate((3, 64, 64), sigma_w=0)


def test_buffers_follow_to_and_inputs_of_another_dtype_work():
    op = build("deblur_gauss", (3, 16, 16), dtype=DT)
    assert all(b.dtype == DT for b in op.buffers() if b.is_floating_point())
    op32 = op.to(torch.float32)
    assert all(b.dtype == torch.float32 for b in op32.buffers() if b.is_floating_point())
    x = _rand(1, 3, 16, 16)
    assert op32.A(x).dtype == DT and op32.A(x.float()).dtype == torch.float32
    torch.testing.assert_close(op32.A(x.float()).double(), op.A(x), atol=1e-5, rtol=0)


def test_tasks_json_lists_every_task():
    rows = json.loads(json.dumps(tasks_json()))
    assert {r["name"] for r in rows} == set(TASKS)
    sr = next(r for r in rows if r["name"] == "sr_bicubic")
    assert sr["settings"]["scale"] == {"default": 4, "type": "int", "help": sr["settings"]["scale"]["help"]}
    assert sr["has_svd"] and sr["restore_from_image"]
    assert not next(r for r in rows if r["name"] == "cs_walsh")["restore_from_image"]


def test_operators_import_no_infrastructure():
    import subprocess
    import sys

    code = ("import sys, ddnm.operators; bad = {'ray', 'fsspec', 'pyarrow', 's3fs', 'yaml', 'pandas'} & "
            "{m.split('.')[0] for m in sys.modules}; print(sorted(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
