"""NAT and DiNAT models: the official parameter counts, key layout and dilation schedule, official checkpoints
(strict loading from a file in the official containers), NHWC features and heads beyond the contract, small inputs
(padding), backends, bad input, the training configs. The timm contract (creation, forward/backward, heads,
intermediates, features, gradient checkpointing, FX) is tests/models/test_contract.py's."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models import get_notrace_functions, get_notrace_modules

import zoo
from tests.helpers import DEVICE, assert_close, count_parameters, images, randomise
from zoo.layers import NeighborhoodAttention2D
from zoo.models.nat import NAT, NATLayer, check_images, checkpoint_filter_fn, dinat_dilations, stage_sizes

ROOT = Path(__file__).resolve().parents[2]
# docs/semantics.md §5.6. name: (embed dim, depths, heads, mlp ratio, layer scale, parameters at 1000 classes)
VARIANTS = {
    "nat_m": (64, (3, 4, 6, 5), (2, 4, 8, 16), 3, False, 19_984_174),
    "nat_t": (64, (3, 4, 18, 5), (2, 4, 8, 16), 3, False, 27_901_582),
    "nat_s": (96, (3, 4, 18, 5), (3, 6, 12, 24), 2, True, 50_743_297),
    "nat_b": (128, (3, 4, 18, 5), (4, 8, 16, 32), 2, True, 89_769_652),
    "dinat_m": (64, (3, 4, 6, 5), (2, 4, 8, 16), 3, False, 19_984_174),
    "dinat_t": (64, (3, 4, 18, 5), (2, 4, 8, 16), 3, False, 27_901_582),
    "dinat_s": (96, (3, 4, 18, 5), (3, 6, 12, 24), 2, False, 50_719_681),
    "dinat_b": (128, (3, 4, 18, 5), (4, 8, 16, 32), 2, True, 89_769_652),
    "dinat_l": (192, (3, 4, 18, 5), (6, 12, 24, 48), 2, False, 200_943_514),
}
# The official classification/dinat.py lists, written out: (dinat_mini at 224 and dinat_tiny..large at 224,
# dinat_large_384, dinat_large_384_11x11).
_ALT2, _ALT3 = (1, 2) * 9, (1, 3) * 9
OFFICIAL_DILATIONS = {
    ((3, 4, 6, 5), 224, 7): ((1, 8, 1), (1, 4, 1, 4), (1, 2, 1, 2, 1, 2), (1, 1, 1, 1, 1)),
    ((3, 4, 18, 5), 224, 7): ((1, 8, 1), (1, 4, 1, 4), _ALT2, (1, 1, 1, 1, 1)),
    ((3, 4, 18, 5), 384, 7): ((1, 13, 1), (1, 6, 1, 6), _ALT3, (1, 1, 1, 1, 1)),
    ((3, 4, 18, 5), 384, 11): ((1, 8, 1), (1, 4, 1, 4), _ALT2, (1, 1, 1, 1, 1)),
}
SIZE = 64  # input side for the small forward passes: 2x2 after the last level


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


@pytest.fixture(scope="module")
def mini() -> NAT:
    torch.manual_seed(0)
    return randomise(timm.create_model("nat_m", backend="torch"))


# ------------------------------------------------------------------------------------------------ layout


@pytest.mark.parametrize("name", list(VARIANTS))
def test_parameter_counts_and_shapes(name):
    assert zoo.list_models("nat_*") == sorted(n for n in VARIANTS if n.startswith("nat_"))
    assert zoo.list_models("dinat_*") == sorted(n for n in VARIANTS if n.startswith("dinat_"))
    dim, depths, heads, mlp_ratio, layer_scale, count = VARIANTS[name]
    model = timm.create_model(name, device="meta")
    assert count_parameters(model) == count
    assert [len(level.blocks) for level in model.levels] == list(depths)
    assert [info["num_chs"] for info in model.feature_info] == [dim * 2**i for i in range(4)]
    layers = [layer for level in model.levels for layer in level.blocks]
    assert [layer.attn.num_heads for layer in layers] == [
        h for h, d in zip(heads, depths, strict=True) for _ in range(d)
    ]
    assert {layer.mlp.fc1.out_features / layer.dim for layer in layers} == {mlp_ratio}
    assert {layer.attn.kernel_size for layer in layers} == {(7, 7)}
    assert all(layer.layer_scale == layer_scale for layer in layers)
    assert ("levels.0.blocks.0.gamma1" in model.state_dict()) == layer_scale
    if name.startswith("nat_"):
        assert {layer.attn.dilation for layer in layers} == {(1, 1)}


def test_dinat_l_11x11_parametercount_parameters():
    model = timm.create_model("dinat_l", kernel_size=11, img_size=384, device="meta")
    assert count_parameters(model) == 201_144_250  # docs/semantics.md §5.6: the 11x11 variant
    assert model.dilations == OFFICIAL_DILATIONS[((3, 4, 18, 5), 384, 11)]


def _official_keys(dim: int, depths: tuple[int, ...], layer_scale: bool) -> set[str]:
    """The state-dict keys of the official classification/nat.py NAT, from its module definitions."""
    wb = (".weight", ".bias")
    keys = {f"patch_embed.proj.{i}{s}" for i in (0, 1) for s in wb} | {f"patch_embed.norm{s}" for s in wb}
    for i, depth in enumerate(depths):
        for j in range(depth):
            p = f"levels.{i}.blocks.{j}."
            keys |= {p + m + s for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2") for s in wb}
            keys.add(p + "attn.rpb")
            if layer_scale:
                keys |= {p + "gamma1", p + "gamma2"}
        if i < len(depths) - 1:
            keys |= {f"levels.{i}.downsample.reduction.weight"} | {f"levels.{i}.downsample.norm{s}" for s in wb}
    return keys | {f"norm{s}" for s in wb} | {f"head{s}" for s in wb}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_official_key_layout(name):
    dim, depths, heads, _, layer_scale, _ = VARIANTS[name]
    state = timm.create_model(name, device="meta").state_dict()
    assert set(state) == _official_keys(dim, depths, layer_scale)
    assert state["patch_embed.proj.0.weight"].shape == (dim // 2, 3, 3, 3)
    assert state["levels.2.blocks.1.attn.rpb"].shape == (heads[2], 13, 13)
    assert state["levels.1.blocks.0.attn.qkv.weight"].shape == (6 * dim, 2 * dim)
    assert state["levels.0.downsample.reduction.weight"].shape == (2 * dim, dim, 3, 3)
    assert state["head.weight"].shape == (1000, 8 * dim)


# ------------------------------------------------------------------------------------------------ dilations


@pytest.mark.parametrize("depths,img_size,kernel_size", list(OFFICIAL_DILATIONS), ids=str)
def test_dinat_dilation_rule_reproduces_the_official_lists(depths, img_size, kernel_size):
    assert dinat_dilations(depths, img_size, kernel_size) == OFFICIAL_DILATIONS[(depths, img_size, kernel_size)]


def test_dinat_models_carry_the_official_dilations():
    for name in ("dinat_m", "dinat_t", "dinat_s", "dinat_b", "dinat_l"):
        model = timm.create_model(name, device="meta")
        expected = OFFICIAL_DILATIONS[(VARIANTS[name][1], 224, 7)]
        assert model.dilations == expected
        assert tuple(tuple(layer.attn.dilation[0] for layer in level.blocks) for level in model.levels) == expected
    assert (
        timm.create_model("dinat_l.in22k_ft_in1k_384", device="meta").dilations
        == OFFICIAL_DILATIONS[((3, 4, 18, 5), 384, 7)]
    )  # the tag's input size picks the official dinat_large_384 dilations
    assert timm.create_model("dinat_t", img_size=384, device="meta").dilations[0] == (1, 13, 1)
    assert timm.create_model("dinat_m", img_size=32, device="meta").dilations == tuple((1,) * d for d in (3, 4, 6, 5))
    assert timm.create_model("dinat_m", img_size=(224, 112), device="meta").dilations[0] == (1, (8, 4), 1)
    assert (
        timm.create_model("dinat_m", dilations=1, device="meta").dilations
        == timm.create_model("nat_m", device="meta").dilations
    )
    # at the input size they are built for, every window fits its map: no padding
    for name in VARIANTS:
        model = timm.create_model(name, device="meta")
        for level, (h, w) in zip(model.levels, stage_sizes(224), strict=True):
            assert all(7 * layer.attn.dilation[0] <= min(h, w) for layer in level.blocks)


# ------------------------------------------------------------------------------------------------ checkpoints


def _assert_same_outputs(loaded: torch.nn.Module, expected: torch.nn.Module, size: int = SIZE) -> None:
    loaded.eval()
    x = images(1, size)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected(x), rtol=0, atol=0)


@pytest.mark.parametrize("wrap", ["official", "state_dict", "model", "model_ema", "ddp"])
def test_offline_pretrained_file_loads_strictly(tmp_path, mini, wrap):
    state = {k: v.clone() for k, v in mini.state_dict().items()}  # the official releases: a bare state dict
    checkpoint = {
        "official": state,
        "state_dict": {"state_dict": state, "epoch": 299},
        "model": {"model": state, "optimizer": {}},
        "model_ema": {"model_ema": state},
        "ddp": {"model": {f"module.{k}": v for k, v in state.items()}},
    }[wrap]
    path = tmp_path / "nat_mini.pth"
    torch.save(checkpoint, path)
    loaded = timm.create_model("nat_m", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), backend="torch")
    for key, value in mini.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    _assert_same_outputs(loaded, mini)


def test_layer_scale_and_dilated_checkpoints_load_strictly(tmp_path):
    """A DiNAT-B-shaped model (layer scale, dilations) with fewer layers: strict load, equal logits."""
    torch.manual_seed(1)
    small = dict(depths=(2, 2, 1, 1), backend="torch")
    source = randomise(timm.create_model("dinat_b", **small))
    assert "levels.3.blocks.0.gamma2" in source.state_dict() and source.dilations == ((1, 8), (1, 4), (1,), (1,))
    path = tmp_path / "dinat_base_in1k_224.pth"
    torch.save(source.state_dict(), path)
    loaded = timm.create_model("dinat_b", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **small)
    _assert_same_outputs(loaded, source, size=32)
    with pytest.raises(RuntimeError, match="gamma1"):  # strict: a checkpoint with layer scale needs a model with it
        timm.create_model(
            "dinat_s",
            embed_dim=128,
            num_heads=(4, 8, 16, 32),
            pretrained=True,
            pretrained_cfg_overlay=dict(file=str(path)),
            **small,
        )


def test_layer_scale_residuals_add_the_scaled_branches_and_keep_stochastic_depth():
    """A layer with layer scale computes x + gamma1 NA(LN1(x)), then + gamma2 MLP(LN2(.)) (in eval one addcmul per
    branch); in training its drop path still drops: at drop_path 1 every branch is dropped and the layer is x."""
    torch.manual_seed(2)
    layer = NATLayer(16, 2, kernel_size=3, layer_scale=0.5, backend="torch").double()
    with torch.no_grad():
        layer.gamma1.uniform_(0.2, 0.5)
        layer.gamma2.uniform_(-0.5, -0.2)
    x = torch.randn(2, 5, 6, 16, dtype=torch.float64)
    with torch.no_grad():
        mid = x + layer.gamma1 * layer.attn(layer.norm1(x))
        expected = mid + layer.gamma2 * layer.mlp(layer.norm2(mid))
        torch.testing.assert_close(layer.eval()(x), expected, rtol=1e-12, atol=1e-12)
    dropping = NATLayer(16, 2, kernel_size=3, drop_path=1.0, layer_scale=0.5, backend="torch").double().train()
    assert torch.equal(dropping(x), x)


def test_checkpoint_filter_unwraps_the_containers(mini):
    state = mini.state_dict()
    assert checkpoint_filter_fn(state, mini) == state
    nested = checkpoint_filter_fn({"state_dict": {"module": {f"module.{k}": v for k, v in state.items()}}}, mini)
    assert set(nested) == set(state)


def test_pretrained_file_with_other_classes_and_channels(tmp_path, mini):
    path = tmp_path / "nat_mini.pth"
    torch.save(mini.state_dict(), path)
    model = timm.create_model(
        "nat_m", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=10, in_chans=1
    )
    assert model.head.weight.shape == (10, 512)  # the classifier is left at init
    first = mini.patch_embed.proj[0].weight
    torch.testing.assert_close(model.patch_embed.proj[0].weight, first.sum(1, keepdim=True))
    assert torch.equal(model.levels[2].blocks[3].attn.rpb, mini.levels[2].blocks[3].attn.rpb)


def test_default_cfgs_name_the_official_weights():
    expected = {
        "nat_m.in1k": "https://shi-labs.com/projects/nat/checkpoints/CLS/nat_mini.pth",
        "nat_b.in1k": "https://shi-labs.com/projects/nat/checkpoints/CLS/nat_base.pth",
        "dinat_t.in1k": "https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_tiny_in1k_224.pth",
        "dinat_l.in22k_ft_in1k": "https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_large_in22k_in1k_224.pth",
        "dinat_l.in22k": "https://shi-labs.com/projects/dinat/checkpoints/imagenet22k/dinat_large_in22k_224.pth",
    }
    for tag, url in expected.items():
        assert timm.models.get_pretrained_cfg(tag).url == url
    tags = timm.list_pretrained("*nat_*")
    assert len([t for t in tags if t.split(".")[0] in VARIANTS]) == 11
    cfg = timm.models.get_pretrained_cfg("dinat_l.in22k_ft_in1k_384")
    assert cfg.input_size == (3, 384, 384) and cfg.crop_pct == 1.0
    assert timm.create_model("dinat_l.in22k", device="meta").num_classes == 21841


# ------------------------------------------------------------------------------------------------ NHWC features


def test_nhwc_features_and_heads(mini):
    cfg = mini.pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and cfg["num_classes"] == 1000 and cfg["pool_size"] == (7, 7)
    assert mini.output_fmt == "NHWC"
    assert mini.num_features == mini.head_hidden_size == 512
    x = images(1, 96)
    with torch.no_grad():
        features = mini.forward_features(x)  # unpooled, normalised, channels last
        assert features.shape == (1, 3, 3, 512)
        torch.testing.assert_close(mini.forward_head(features, pre_logits=True), features.mean((1, 2)))
    model = timm.create_model("nat_m", backend="torch").eval()
    with torch.no_grad():
        model.reset_classifier(0, "")  # no pooling: NHWC out
        assert model(x).shape == (1, 3, 3, 512)
        model.reset_classifier(7, "avg")
        assert model(x).shape == (1, 7) and model.get_classifier().out_features == 7


def test_feature_pyramid_and_pruned_features_only():
    model = timm.create_model("nat_m", features_only=True, backend="torch")
    assert model.feature_info.channels() == [64, 128, 256, 512]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    picked = timm.create_model("dinat_m", features_only=True, out_indices=(1, 2), backend="torch")
    assert picked.feature_info.channels() == [128, 256]
    assert len(picked.model.levels) == 3 and picked.model.levels[-1].downsample is None  # the rest is pruned
    with torch.no_grad():
        assert [tuple(o.shape) for o in picked(images(1, 64))] == [(1, 128, 8, 8), (1, 256, 4, 4)]


def test_nhwc_and_normalised_intermediates(mini):
    x = images(2, 64)
    with torch.no_grad():
        final = mini.forward_features(x)
        nhwc = mini.forward_intermediates(x, indices=1, output_fmt="NHWC", norm=True, intermediates_only=True)
        torch.testing.assert_close(nhwc[0], final, rtol=0, atol=0)  # the last level, normalised
        with pytest.raises(ValueError, match="output_fmt"):
            mini.forward_intermediates(x, output_fmt="NLC")


def test_prune_intermediate_layers():
    model = timm.create_model("nat_m", backend="torch").eval()
    x = images(1, 64)
    with torch.no_grad():
        expected = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
        kept = model.prune_intermediate_layers([0, 1])
        assert kept == [0, 1] and len(model.levels) == 2 and model.levels[1].downsample is None
        assert model.num_classes == 0 and model.num_features == 128
        got = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_attention_and_the_input_check_are_fx_leaves():
    assert NeighborhoodAttention2D in get_notrace_modules() and check_images in get_notrace_functions()


def test_optimizer_hooks(mini):
    assert mini.no_weight_decay() == set() and mini.no_weight_decay_keywords() == {"rpb"}
    groups = mini.group_matcher()
    assert groups["stem"] == r"^patch_embed" and "blocks" in groups
    assert mini.group_matcher(coarse=True)["blocks"] == r"^levels\.(\d+)"
    from timm.models import group_parameters

    grouped = group_parameters(mini, mini.group_matcher())
    assert sum(len(v) for v in grouped.values()) == len(list(mini.parameters()))
    order = list(grouped)
    names = [grouped[g][0] for g in order]
    # a level's downsampler comes after its layers and before the next level's
    assert names.index("levels.0.downsample.reduction.weight") > names.index("levels.0.blocks.2.norm1.weight")
    assert names.index("levels.0.downsample.reduction.weight") < names.index("levels.1.blocks.0.norm1.weight")
    from timm.optim import create_optimizer_v2

    optimizer = create_optimizer_v2(mini, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.8)
    assert len(optimizer.param_groups) > 4


# ------------------------------------------------------------------------------------------------ small inputs


def test_small_inputs_are_padded_and_cropped_as_legacy_natten():
    """A map smaller than kernel x dilation: the attention runs on the map zero-padded at its end (before qkv) to
    kernel x dilation, and the output is cropped back (NATTEN <= 0.14, which the released models ran on)."""
    torch.manual_seed(0)
    model = timm.create_model("dinat_m", backend="torch").eval()  # 224 dilations: 8 on a 16x16 map at 64 px
    layer = model.levels[0].blocks[1]
    assert layer.attn.dilation == (8, 8)
    x = torch.randn(1, 16, 16, 64)
    with torch.no_grad():
        out = layer.attn(x)
        padded = layer.attn(F.pad(x, (0, 0, 0, 40, 0, 40)))  # 56 = 7 x 8: no padding inside the layer
        torch.testing.assert_close(out, padded[:, :16, :16], rtol=1e-5, atol=1e-6)
        for size in (8, 33, 64):  # the last level runs on a 1x1 map (8 px): padded to 7x7
            logits = model(images(1, size))
            assert logits.shape == (1, 1000) and torch.isfinite(logits).all()


def test_size_independent_weights_and_non_square_inputs(mini):
    with torch.no_grad():
        assert mini(torch.randn(1, 3, 40, 72)).shape == (1, 1000)
        assert mini.forward_features(torch.randn(1, 3, 40, 72)).shape == (1, 2, 3, 512)


# ------------------------------------------------------------------------------------------------ backends, input


def test_nat_m_logits_equal_with_torch_and_triton_backends(monkeypatch):
    """NAT-Mini's widths with one layer per level and fewer heads (the Triton interpreter costs about a second per
    head and map on CPU) through the fused Triton attention; every map padded to 7x7 at 16 px."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # the downsamplers' convolutions in fp32 on a GPU
    torch.manual_seed(3)
    small = dict(depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 4), num_classes=10)
    reference = randomise(timm.create_model("nat_m", backend="torch", **small)).to(DEVICE)
    fused = timm.create_model("nat_m", backend="triton", **small).eval().to(DEVICE)
    fused.load_state_dict(reference.state_dict())
    x = images(1, 16).to(DEVICE)
    with torch.no_grad():
        expected = reference(x)
        assert expected.std() > 0.05
        assert_close(fused(x), expected, torch.float32, scale=10.0)


def test_backend_reaches_every_attention():
    model = timm.create_model("dinat_t", backend="torch", device="meta")
    assert {m.backend for m in model.modules() if isinstance(m, NeighborhoodAttention2D)} == {"torch"}
    assert {
        m.backend for m in timm.create_model("nat_t", device="meta").modules() if isinstance(m, NeighborhoodAttention2D)
    } == {"auto"}


def test_bad_input_names_the_expected_layout(mini):
    with pytest.raises(ValueError, match=r"expects images \[N, C, H, W\] .* in_chans = 3, got shape \[3, 64, 64\]"):
        mini(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match=r"in_chans = 3, got shape \[1, 1, 64, 64\]"):
        mini.forward_intermediates(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="do not match depths"):
        NAT(depths=(1, 1), num_heads=(2, 4), dilations=((1,), (1, 2)), device="meta")
    with pytest.raises(ValueError, match="'auto'"):
        NAT(dilations="dinat", device="meta")


# ------------------------------------------------------------------------------------------------ configs


@pytest.mark.parametrize("name", list(VARIANTS))
def test_model_configs_pass_the_image_size_to_dinat_only(name):
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((ROOT / "configs" / "model" / f"{name}.yaml").read_text())
    expected = ["img_size", "in_chans", "num_classes"] if name.startswith("dinat") else ["in_chans", "num_classes"]
    assert config["data_args"] == expected  # DiNAT's dilations follow the image size


def _compose(*overrides: str):
    pytest.importorskip("hydra")  # the entry points' dependency (absent on the GPU machine)
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize(
    "name,drop_path",
    [
        ("nat_m", 0.2),
        ("nat_t", 0.2),
        ("nat_s", 0.3),
        ("nat_b", 0.5),
        ("dinat_m", 0.2),
        ("dinat_b", 0.5),
        ("dinat_l", 0.35),
    ],
)
def test_imagenet_recipe_composes(name, drop_path):
    """The official recipe (classification/configs/*.yml over train.py's defaults) overrides the defaults."""
    cfg = _compose(f"model={name}", "experiment=nat_imagenet", "run_dir=x")
    assert (cfg.data.name, cfg.data.img_size, cfg.epochs, cfg.batch_size * cfg.accum_steps) == (
        "imagenet",
        224,
        300,
        128,
    )
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay, cfg.grad_clip) == ("adamw", 1e-3, 0.05, 5.0)
    assert (cfg.sched.name, cfg.sched.warmup_epochs, cfg.sched.warmup_lr, cfg.sched.min_lr) == (
        "cosine",
        20,
        1e-6,
        5e-6,
    )
    assert (cfg.mixup.mixup_alpha, cfg.mixup.cutmix_alpha, cfg.mixup.label_smoothing) == (0.8, 1.0, 0.1)
    assert cfg.data.augment.auto_augment == "rand-m9-mstd0.5-inc1" and cfg.data.augment.re_prob == 0.25
    assert cfg.data.augment.interpolation == "random" and not cfg.ema.enabled
    assert cfg.model.kwargs.drop_path_rate == drop_path
    overridden = _compose(
        f"model={name}", "experiment=nat_imagenet", "run_dir=x", "model.kwargs.drop_path_rate=0.1", "optim.lr=5e-4"
    )
    assert (overridden.model.kwargs.drop_path_rate, overridden.optim.lr) == (0.1, 5e-4)
