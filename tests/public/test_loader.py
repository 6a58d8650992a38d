"""The loader of tests/public: two checkouts with a package of the same name import side by side."""

from __future__ import annotations

import sys

from tests.public.conftest import load


def test_same_named_packages_of_two_checkouts_stay_apart():
    ddrm = load("ddrm", "guided_diffusion.unet")
    dps = load("dps", "guided_diffusion.unet")
    assert "bahjat-kawar" in ddrm.__file__ and "DPS2022" in dps.__file__
    assert ddrm is not dps and ddrm.UNetModel is not dps.UNetModel
    assert "guided_diffusion" not in sys.modules
