"""KAT models: the official variants, parameter counts and key layout, offline checkpoint loading, the init,
backends. The timm contract (creation, forward/backward, heads, intermediates, features, gradient checkpointing, FX)
is tests/models/test_contract.py's."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed
from timm.models import get_notrace_modules

import zoo
from tests.helpers import DEVICE, assert_close, assert_relative_error, count_parameters, images
from zoo.layers import GroupRational
from zoo.models.kat import KAT

VARIANTS = {  # name: (embed_dim, heads, parameters of the official model)
    "kat_t": (192, 3, 5_718_328),
    "kat_s": (384, 6, 22_051_576),
    "kat_b": (768, 12, 86_568_568),
}


@pytest.fixture(scope="module")
def kat_t() -> KAT:
    torch.manual_seed(0)
    return timm.create_model("kat_t").eval()


# ------------------------------------------------------------------------------------------------ variants


@pytest.mark.parametrize("name", list(VARIANTS))
def test_variants_and_default_cfgs(name):
    assert zoo.list_models("kat_*") == sorted(VARIANTS)
    model = timm.create_model(name, device="meta")
    cfg = model.pretrained_cfg
    assert cfg["url"].startswith("https://huggingface.co/adamdad/kat_pretained/")
    assert cfg["input_size"] == (3, 224, 224) and cfg["num_classes"] == 1000
    assert model.num_features == model.head_hidden_size == VARIANTS[name][0] and model.num_prefix_tokens == 1
    assert [block.attn.num_heads for block in model.blocks] == [VARIANTS[name][1]] * 12
    features = timm.create_model(name, features_only=True, device="meta")  # the last three blocks, at 1/16
    assert features.feature_info.channels() == [VARIANTS[name][0]] * 3
    assert features.feature_info.reduction() == [16] * 3


# ------------------------------------------------------------------------------------------------ layout


@pytest.mark.parametrize("name", list(VARIANTS))
def test_parameter_count_equals_the_official_model(name):
    assert count_parameters(timm.create_model(name, device="meta")) == VARIANTS[name][2]


def test_state_dict_keys_are_the_official_layout():
    expected = {
        "cls_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "patch_embed.proj.bias",
        "norm.weight",
        "norm.bias",
        "head.weight",
        "head.bias",
    }
    block_keys = [
        "norm1.weight",
        "norm1.bias",
        "attn.qkv.weight",
        "attn.qkv.bias",
        "attn.proj.weight",
        "attn.proj.bias",
        "norm2.weight",
        "norm2.bias",
        "mlp.fc1.weight",
        "mlp.fc1.bias",
        "mlp.fc2.weight",
        "mlp.fc2.bias",
        "mlp.act1.weight_numerator",
        "mlp.act1.weight_denominator",
        "mlp.act2.weight_numerator",
        "mlp.act2.weight_denominator",
    ]
    expected |= {f"blocks.{i}.{key}" for i in range(12) for key in block_keys}
    state = timm.create_model("kat_t", device="meta").state_dict()
    assert set(state) == expected
    assert state["blocks.3.mlp.act1.weight_numerator"].shape == (1, 6)
    assert state["blocks.3.mlp.act1.weight_denominator"].shape == (8, 4)
    assert state["blocks.3.mlp.fc1.weight"].shape == (768, 192)
    assert state["pos_embed"].shape == (1, 197, 192)


def test_constructor_arguments():
    model = timm.create_model("kat_t", img_size=64, patch_size=8, num_classes=10, in_chans=1, drop_path_rate=0.1)
    assert model.patch_embed.proj.weight.shape == (192, 1, 8, 8)
    assert model.pos_embed.shape == (1, 1 + 64, 192)
    assert model(images(2, 64, channels=1)).shape == (2, 10)
    assert model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    assert model.blocks[0].mlp.act2.backend == "auto"
    assert timm.create_model("kat_t", img_size=32, backend="torch").blocks[0].mlp.act1.backend == "torch"


# ------------------------------------------------------------------------------------------------ timm hooks


def test_rational_activations_are_fx_leaves():
    assert GroupRational in get_notrace_modules()


def test_optimizer_hooks(kat_t):
    assert {"pos_embed", "cls_token"} <= kat_t.no_weight_decay()
    groups = kat_t.group_matcher()
    assert "stem" in groups and "blocks" in groups


# ------------------------------------------------------------------------------------------------ checkpoints


def _official_checkpoint(model: torch.nn.Module, container: str = "model") -> dict:
    """The released KAT checkpoints are ``{"model": state_dict, ...}`` (torch.save of a training state)."""
    return {container: {k: v.clone() for k, v in model.state_dict().items()}, "epoch": 299}


@pytest.mark.parametrize("container", ["model", "state_dict", "model_ema"])
def test_offline_pretrained_file_loads_strictly(tmp_path, kat_t, container):
    path = tmp_path / "kat_t.pth"
    torch.save(_official_checkpoint(kat_t, container), path)
    loaded = timm.create_model("kat_t", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    for key, value in kat_t.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = images(1, 224)
    with torch.no_grad():
        assert torch.equal(loaded(x), kat_t(x))


def test_official_keys_load_with_strict_true(kat_t):
    """An official checkpoint is a state dict with exactly our keys: load_state_dict(strict=True) accepts it."""
    fresh = timm.create_model("kat_t")
    checkpoint = _official_checkpoint(kat_t)
    fresh.load_state_dict(zoo.models.kat.checkpoint_filter_fn(checkpoint, fresh), strict=True)
    ddp = {"model": {f"module.{k}": v for k, v in checkpoint["model"].items()}}
    fresh.load_state_dict(zoo.models.kat.checkpoint_filter_fn(ddp, fresh), strict=True)


def test_fine_tune_at_another_size_and_class_count(tmp_path, kat_t):
    path = tmp_path / "kat_t.pth"
    torch.save(_official_checkpoint(kat_t), path)
    model = timm.create_model(
        "kat_t", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), img_size=160, num_classes=10
    )
    expected = resample_abs_pos_embed(kat_t.pos_embed.detach(), new_size=(10, 10), num_prefix_tokens=1)
    assert model.pos_embed.shape == (1, 101, 192)
    torch.testing.assert_close(model.pos_embed.detach(), expected)
    assert model.head.weight.shape == (10, 192)
    assert torch.equal(model.blocks[5].mlp.act2.weight_denominator, kat_t.blocks[5].mlp.act2.weight_denominator)


# ------------------------------------------------------------------------------------------------ init


def test_variance_preserving_init():
    torch.manual_seed(1)
    model = timm.create_model("kat_s")
    dim, hidden = 384, 1536
    block = model.blocks[4]
    # gain^2 = 1 / E[F(x)^2], x ~ N(0, 1): checked against the exact swish, which the rational fits to 1e-6
    x = torch.linspace(-12, 12, 48001, dtype=torch.float64)
    density = torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    swish_gain = math.sqrt(1 / torch.trapezoid((x * torch.sigmoid(x)) ** 2 * density, x).item())
    assert zoo.layers.variance_preserving_gain("swish") == pytest.approx(swish_gain, rel=1e-4)
    assert block.mlp.fc1.weight.std().item() == pytest.approx(1 / math.sqrt(dim), rel=0.02)
    assert block.mlp.fc2.weight.std().item() == pytest.approx(swish_gain / math.sqrt(hidden), rel=0.02)
    bound = math.sqrt(6 / (dim + dim))  # xavier-uniform of each [dim, dim] block of qkv
    for q_k_or_v in block.attn.qkv.weight.chunk(3):
        assert q_k_or_v.abs().max().item() <= bound
        assert q_k_or_v.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02)
    assert block.attn.proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.head.weight.std().item() == pytest.approx(0.02, rel=0.05)  # timm's trunc_normal_ cuts at +-2
    assert all((m.bias == 0).all() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert torch.equal(block.mlp.act1.weight_denominator, torch.zeros(8, 4))  # identity init
    # the activations keep the variance: one block's MLP on unit-variance tokens
    with torch.no_grad():
        out = block.mlp(torch.randn(64, 197, dim))
    assert out.var().item() == pytest.approx(1.0, rel=0.1)


def test_init_is_seeded_by_torch_alone():
    import random

    import numpy as np

    torch.manual_seed(7)
    np.random.seed(1)
    random.seed(1)
    first = timm.create_model("kat_t", img_size=32).state_dict()
    torch.manual_seed(7)
    np.random.seed(2)
    random.seed(2)
    second = timm.create_model("kat_t", img_size=32).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


# ------------------------------------------------------------------------------------------------ backends


def test_logits_equal_with_torch_and_triton_backends():
    torch.manual_seed(3)
    reference = timm.create_model("kat_t", img_size=32, backend="torch").eval().to(DEVICE)
    triton_model = timm.create_model("kat_t", img_size=32, backend="triton").eval().to(DEVICE)
    triton_model.load_state_dict(reference.state_dict())
    x = images(2, 32).to(DEVICE)  # the GPU where there is one, else the CPU through the Triton interpreter
    with torch.no_grad():
        assert_close(triton_model(x), reference(x), torch.float32, scale=10.0)


def test_blocks_fuse_norm2_and_act1_on_the_triton_path(monkeypatch):
    """Where the activations run Triton, each block's norm2 -> mlp.act1 is one fused op (called once per block),
    with the unfused model's output and every parameter's gradient; under autocast it writes fc1's dtype."""
    import zoo.layers.kan as kan_module

    calls = []
    fused = kan_module.layer_norm_group_rational
    monkeypatch.setattr(
        kan_module, "layer_norm_group_rational", lambda *a, **k: calls.append(k.get("backend")) or fused(*a, **k)
    )
    torch.manual_seed(4)
    config = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=2, num_classes=5)
    models = {backend: KAT(backend=backend, **config).to(DEVICE) for backend in ("torch", "triton")}
    with torch.no_grad():
        for block in models["torch"].blocks:  # away from the identity init, so that act1 and norm2 matter
            block.mlp.act1.weight_denominator.add_(0.2)
            block.norm2.weight.mul_(1.3)
    models["triton"].load_state_dict(models["torch"].state_dict(), strict=True)
    x = images(2, 32).to(DEVICE)
    outputs = {}
    for backend, model in models.items():
        y = model(x)
        y.square().sum().backward()
        outputs[backend] = y.detach()
    assert calls == ["triton", "triton"]  # once per block, on the Triton path only
    assert_close(outputs["triton"], outputs["torch"], torch.float32, scale=10.0)
    expected = dict(models["torch"].named_parameters())
    for name, parameter in models["triton"].named_parameters():
        assert_relative_error(parameter.grad, expected[name].grad, 1e-4)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
        seen = []
        hook = models["triton"].blocks[0].mlp.fc1.register_forward_pre_hook(lambda m, a: seen.append(a[0].dtype))
        models["triton"](x)
        hook.remove()
    assert seen == [torch.bfloat16]
