"""Model adapters: exact checkpoint layouts (built on the meta device), tiny forwards on CPU."""

from __future__ import annotations

import pytest
import torch

from ddnm.models.adm import ADMConfig, ADMUNet, timestep_embedding

FFHQ = dict(
    model_channels=128, num_res_blocks=1, attention_resolutions=(16,), num_heads=4, num_head_channels=64
)


def _meta_state(model_fn):
    with torch.device("meta"):
        model = model_fn()
    return model, {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("kwargs", "keys", "params"),
    [
        ({}, 566, 552_814_086),  # 256x256_diffusion_uncond.pt
        ({"num_classes": 1000}, 567, 553_838_086),  # 256x256_diffusion.pt
        (FFHQ, 362, 93_563_910),  # ffhq_10m.pt (DPS / DiffPIR)
    ],
)
def test_adm_released_layouts(kwargs, keys, params):
    model, shapes = _meta_state(lambda: ADMUNet(ADMConfig(**kwargs)))
    assert len(shapes) == keys
    assert _count(model) == params
    width = kwargs.get("model_channels", 256)
    assert shapes["input_blocks.0.0.weight"] == (width, 3, 3, 3)
    assert shapes["out.2.weight"] == (6, width, 3, 3)
    assert shapes["time_embed.0.weight"] == (4 * width, width)
    assert {k.split(".")[0] for k in shapes} == {
        "time_embed",
        "input_blocks",
        "middle_block",
        "output_blocks",
        "out",
    } | ({"label_emb"} if "num_classes" in kwargs else set())


def test_adm_uncond_selected_shapes():
    _, shapes = _meta_state(lambda: ADMUNet(ADMConfig()))
    assert shapes["middle_block.1.qkv.weight"] == (3 * 1024, 1024, 1)
    assert shapes["middle_block.1.proj_out.weight"] == (1024, 1024, 1)
    assert shapes["input_blocks.3.0.in_layers.2.weight"] == (256, 256, 3, 3)  # down resblock
    assert shapes["input_blocks.1.0.emb_layers.1.weight"] == (512, 1024)  # scale + shift
    assert shapes["output_blocks.0.0.skip_connection.weight"] == (1024, 2048, 1, 1)
    assert "output_blocks.14.1.in_layers.0.weight" in shapes  # up resblock of level 1
    assert not any(k.startswith("output_blocks.17.1") for k in shapes)  # level 0: no upsampling


def test_timestep_embedding_cos_then_sin():
    emb = timestep_embedding(torch.tensor([0, 3]), 8)
    assert emb.shape == (2, 8)
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(4) / 4)
    torch.testing.assert_close(emb[1, :4], torch.cos(3 * freqs))
    torch.testing.assert_close(emb[1, 4:], torch.sin(3 * freqs))


def _tiny_adm(**kw) -> ADMUNet:
    torch.manual_seed(0)
    cfg = dict(
        image_size=16,
        model_channels=32,
        num_res_blocks=1,
        channel_mult=(1, 2),
        attention_resolutions=(8,),
        num_head_channels=16,
    )
    cfg.update(kw)
    return ADMUNet(ADMConfig(**cfg)).eval()


def test_adm_tiny_forward_batch_equals_single():
    model = _tiny_adm()
    x, t = torch.randn(3, 3, 16, 16), torch.tensor([0, 400, 999])
    with torch.no_grad():
        out = model(x, t)
        singles = torch.cat([model(x[i : i + 1], t[i : i + 1]) for i in range(3)])
    assert out.shape == (3, 6, 16, 16)
    torch.testing.assert_close(out, singles, atol=1e-5, rtol=0)


def test_adm_class_conditional_needs_label():
    model = _tiny_adm(num_classes=5)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([1, 2])
    with pytest.raises(ValueError, match="class-conditional"):
        model(x, t)
    with torch.no_grad():
        a, b = model(x, t, torch.tensor([0, 0])), model(x, t, torch.tensor([1, 1]))
    assert not torch.allclose(a, b)


def test_adm_config_validation():
    with pytest.raises(ValueError, match="image_size"):
        ADMConfig(image_size=20, channel_mult=(1, 2, 2, 2))
    with pytest.raises(ValueError, match="num_head_channels"):
        ADMConfig(model_channels=32, channel_mult=(1, 3), num_head_channels=64)
