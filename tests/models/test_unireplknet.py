"""UniRepLKNet models: the official parameter counts and key layouts in the training and the deployed form,
re-parameterisation of whole models (timm.utils.reparameterize_model), official and training checkpoints of either
form, heads and features beyond the contract, backends, bad input, the training configs. The timm contract
(creation, forward/backward, heads, intermediates, features, gradient checkpointing, FX) is
tests/models/test_contract.py's."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from timm.models import get_notrace_functions, get_notrace_modules
from timm.utils import reparameterize_model

import zoo
from tests.helpers import DEVICE, assert_close, count_parameters, images, randomise
from tests.models.contract import trace_model
from zoo.layers import DepthwiseConv2d, DilatedReparamBlock, UniRepLKNetBlock
from zoo.models.unireplknet import UniRepLKNet, check_images, checkpoint_filter_fn

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = {  # name: (depths, dims, parameters in the training form, in the deployed form) (docs/semantics.md §3.4)
    "unireplknet_a": ((2, 2, 6, 2), (40, 80, 160, 320), 4_649_060, 4_437_300),
    "unireplknet_f": ((2, 2, 6, 2), (48, 96, 192, 384), 6_489_328, 6_235_216),
    "unireplknet_p": ((2, 2, 6, 2), (64, 128, 256, 512), 11_080_520, 10_741_704),
    "unireplknet_n": ((2, 2, 8, 2), (80, 160, 320, 640), 18_818_880, 18_318_560),
    "unireplknet_t": ((3, 3, 18, 3), (80, 160, 320, 640), 31_693_420, 31_037_980),
    "unireplknet_s": ((3, 3, 27, 3), (96, 192, 384, 768), 56_456_704, 55_645_984),
    "unireplknet_b": ((3, 3, 27, 3), (128, 256, 512, 1024), 99_089_416, 98_008_456),
    "unireplknet_l": ((3, 3, 27, 3), (192, 384, 768, 1536), 220_076_056, 218_454_616),
    "unireplknet_xl": ((3, 3, 27, 3), (256, 512, 1024, 2048), 388_690_984, 386_529_064),
}
BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


pytestmark = pytest.mark.usefixtures("one_intra_op_thread")


@pytest.fixture(scope="module")
def atto() -> UniRepLKNet:
    torch.manual_seed(0)
    return randomise(timm.create_model("unireplknet_a", backend="torch"))


# ------------------------------------------------------------------------------------------------ layout


@pytest.mark.parametrize("name", list(VARIANTS))
def test_parameter_counts_in_both_forms(name):
    assert zoo.list_models("unireplknet_*") == sorted(VARIANTS)
    depths, dims, training, deployed = VARIANTS[name]
    model = timm.create_model(name, device="meta")
    assert count_parameters(model) == training
    assert [len(stage) for stage in model.stages] == list(depths)
    assert [info["num_chs"] for info in model.feature_info] == list(dims)
    deploy_model = timm.create_model(name, device="meta", deploy=True)
    assert count_parameters(deploy_model) == deployed
    model.reparameterize()
    assert count_parameters(model) == deployed
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in deploy_model.state_dict().items()
    }


@pytest.mark.parametrize(
    "name,stage3",
    [
        ("unireplknet_a", (13,) * 6),
        ("unireplknet_n", (13,) * 8),
        ("unireplknet_t", (13, 3) * 9),
        ("unireplknet_s", (13, 3, 3) * 9),
        ("unireplknet_xl", (13, 3, 3) * 9),
    ],
)
def test_official_kernel_sizes(name, stage3):
    model = timm.create_model(name, device="meta")
    kernels = [tuple(block.kernel_size for block in stage) for stage in model.stages]
    assert kernels[0] == (3,) * len(kernels[0]) and kernels[1] == (13,) * len(kernels[1])
    assert kernels[2] == stage3 and kernels[3] == (13,) * len(kernels[3])
    for stage in model.stages:
        for block in stage:
            kind = DilatedReparamBlock if block.kernel_size >= 7 else DepthwiseConv2d
            assert type(block.dwconv) is kind


def test_official_key_names_in_the_training_form(atto):
    keys = set(atto.state_dict())
    expected = [
        "downsample_layers.0.0.weight",
        "downsample_layers.0.0.bias",
        "downsample_layers.0.1.weight",
        "downsample_layers.0.1.bias",
        "downsample_layers.0.3.weight",
        "downsample_layers.0.4.bias",
        "downsample_layers.3.0.weight",
        "downsample_layers.3.1.weight",
        "stages.0.0.dwconv.weight",
        "stages.0.0.norm.running_var",
        "stages.0.0.se.down.weight",
        "stages.0.0.se.up.bias",
        "stages.0.0.pwconv1.1.weight",
        "stages.0.0.pwconv1.1.bias",
        "stages.0.0.act.1.gamma",
        "stages.0.0.act.1.beta",
        "stages.0.0.pwconv2.0.weight",
        "stages.0.0.pwconv2.2.running_mean",
        "stages.0.0.gamma",
        "stages.2.5.dwconv.lk_origin.weight",
        "stages.2.5.dwconv.origin_bn.running_var",
        "stages.2.5.dwconv.dil_conv_k5_1.weight",
        "stages.2.5.dwconv.dil_conv_k7_2.weight",
        "stages.2.5.dwconv.dil_conv_k3_5.weight",
        "stages.2.5.dwconv.dil_bn_k3_4.bias",
        "norm.weight",
        "norm.bias",
        "head.weight",
        "head.bias",
    ]
    for key in expected:
        assert key in keys, key
    for absent in [
        "stages.0.0.dwconv.bias",
        "stages.0.0.pwconv2.0.bias",
        "stages.2.5.dwconv.lk_origin.bias",
        "downsample_layers.0.2.weight",
        "head_drop.weight",
    ]:
        assert absent not in keys, absent
    assert atto.state_dict()["stages.1.0.dwconv.lk_origin.weight"].shape == (80, 1, 13, 13)
    assert atto.state_dict()["stages.1.0.act.1.gamma"].shape == (1, 1, 1, 320)


def test_official_key_names_in_the_deployed_form():
    model = timm.create_model("unireplknet_a", deploy=True)
    keys = set(model.state_dict())
    for key in [
        "stages.0.0.dwconv.weight",
        "stages.0.0.dwconv.bias",
        "stages.2.5.dwconv.lk_origin.weight",
        "stages.2.5.dwconv.lk_origin.bias",
        "stages.2.5.act.1.gamma",
        "stages.2.5.pwconv2.0.weight",
        "stages.2.5.pwconv2.0.bias",
        "stages.2.5.se.down.weight",
        "norm.weight",
        "head.bias",
    ]:
        assert key in keys, key
    block_keys = {k.split(".", 3)[3] for k in keys if k.startswith("stages.")}
    for gone in [
        "norm.weight",
        "norm.running_var",
        "gamma",
        "act.1.beta",
        "pwconv2.2.weight",
        "pwconv2.2.running_var",
        "dwconv.origin_bn.weight",
        "dwconv.dil_conv_k5_1.weight",
    ]:
        assert gone not in block_keys, gone
    assert model.deployed and model.deploy


def test_constructor_arguments():
    model = timm.create_model(
        "unireplknet_a", num_classes=10, in_chans=1, drop_path_rate=0.1, backend="torch", layer_scale_init_value=0.5
    )
    assert model.downsample_layers[0][0].weight.shape == (20, 1, 3, 3)
    assert model(images(2, 32, channels=1)).shape == (2, 10)
    assert model.stages[-1][-1].drop_path.drop_prob == pytest.approx(0.1)
    assert isinstance(model.stages[0][0].drop_path, torch.nn.Identity)  # linear from 0
    assert torch.equal(model.stages[2][3].gamma, torch.full((160,), 0.5))
    assert {
        m.backend for m in model.modules() if isinstance(m, (UniRepLKNetBlock, DilatedReparamBlock, DepthwiseConv2d))
    } == {"torch"}
    assert {
        m.backend for m in timm.create_model("unireplknet_t", device="meta").modules() if isinstance(m, DepthwiseConv2d)
    } == {"auto"}
    assert "stages.0.0.gamma" not in timm.create_model("unireplknet_a", layer_scale_init_value=0).state_dict()
    small = timm.create_model(
        "unireplknet_a", depths=[1, 1, 1, 1], dims=[8, 16, 24, 32], device="meta", kernel_sizes=[[3], [7], [5], [9]]
    )
    assert [block.kernel_size for stage in small.stages for block in stage] == [3, 7, 5, 9]
    with pytest.raises(ValueError, match="do not match depths"):
        UniRepLKNet(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), kernel_sizes=((3,), (3,), (3,), (3, 3)))


# ------------------------------------------------------------------------------------------------ re-parameterisation


def test_reparameterize_model_gives_equal_logits(atto):
    x = images(2)
    with torch.no_grad():
        expected = atto(x)
        assert expected.std() > 0.1  # the blocks matter
        deployed = reparameterize_model(atto)  # a copy; parents before children, so every step is idempotent
        assert deployed.deployed and not atto.deployed
        assert (deployed(x) - expected).abs().max() <= 1e-4
        assert count_parameters(deployed) == VARIANTS["unireplknet_a"][3]
        again = reparameterize_model(deployed)
        assert set(again.state_dict()) == set(deployed.state_dict())
        assert all(torch.equal(again.state_dict()[k], v) for k, v in deployed.state_dict().items())
        fresh = timm.create_model("unireplknet_a", deploy=True, backend="torch").eval()
        fresh.load_state_dict(deployed.state_dict(), strict=True)
        assert (fresh(x) - expected).abs().max() <= 1e-4
        in_place = reparameterize_model(atto, inplace=False)
        in_place.reparameterize()  # the model's own method is idempotent too
        torch.testing.assert_close(in_place(x), deployed(x), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ checkpoints


def _official_checkpoint(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The official releases hold a bare training-form state dict (or one under "model")."""
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same_outputs(loaded: torch.nn.Module, expected: torch.nn.Module, atol: float = 0.0) -> None:
    loaded.eval()
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), expected(x), rtol=0, atol=atol)


@pytest.mark.parametrize("wrap", ["official", "state_dict", "model", "model_ema", "module", "ddp"])
def test_offline_pretrained_file_loads_strictly(tmp_path, atto, wrap):
    state = _official_checkpoint(atto)
    checkpoint = {
        "official": state,
        "state_dict": {"state_dict": state, "epoch": 299},
        "model": {"model": state, "optimizer": {}},
        "model_ema": {"model_ema": state},
        "module": {"module": state},
        "ddp": {"model": {f"module.{k}": v for k, v in state.items()}},
    }[wrap]
    path = tmp_path / "unireplknet_a_in1k_224_acc77.03.pth"
    torch.save(checkpoint, path)
    loaded = timm.create_model(
        "unireplknet_a", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), backend="torch"
    )
    for key, value in atto.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    _assert_same_outputs(loaded, atto)


def test_training_checkpoint_loads_into_a_deploy_model(tmp_path, atto):
    path = tmp_path / "official.pth"
    torch.save({"model": _official_checkpoint(atto)}, path)
    loaded = timm.create_model(
        "unireplknet_a", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), deploy=True, backend="torch"
    )
    assert loaded.deployed
    _assert_same_outputs(loaded, atto, atol=1e-4)


def test_deployed_checkpoint_loads_into_a_deploy_model_only(tmp_path, atto):
    deployed = reparameterize_model(atto)
    path = tmp_path / "deployed.pth"
    torch.save(deployed.state_dict(), path)
    loaded = timm.create_model(
        "unireplknet_a", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), deploy=True, backend="torch"
    )
    _assert_same_outputs(loaded, deployed)
    with pytest.raises(ValueError, match="deployed .* form .* build the model with deploy=True"):
        timm.create_model("unireplknet_a", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    filtered = checkpoint_filter_fn({"model": deployed.state_dict()}, timm.create_model("unireplknet_a", deploy=True))
    assert set(filtered) == set(deployed.state_dict())


def test_pretrained_file_with_other_classes_and_channels(tmp_path, atto):
    path = tmp_path / "unireplknet_a.pth"
    torch.save(_official_checkpoint(atto), path)
    model = timm.create_model(
        "unireplknet_a", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), num_classes=10, in_chans=1
    )
    assert model.head.weight.shape == (10, 320)  # the classifier is left at init
    first = atto.downsample_layers[0][0].weight
    torch.testing.assert_close(model.downsample_layers[0][0].weight, first.sum(1, keepdim=True))
    assert torch.equal(model.stages[2][3].dwconv.dil_conv_k7_2.weight, atto.stages[2][3].dwconv.dil_conv_k7_2.weight)


def test_default_cfgs_name_the_official_weights():
    expected = {
        "unireplknet_a.in1k": "unireplknet_a_in1k_224_acc77.03.pth",
        "unireplknet_t.in1k": "unireplknet_t_in1k_224_acc83.21.pth",
        "unireplknet_s.in1k": "unireplknet_s_in1k_224_acc83.91.pth",
        "unireplknet_b.in22k": "unireplknet_b_in22k_pretrain.pth",
        "unireplknet_b.in22k_ft_in1k_384": "unireplknet_b_in22k_to_in1k_384_acc87.40.pth",
        "unireplknet_xl.in22k": "unireplknet_xl_in22k_pretrain.pth",
    }
    for tag, file in expected.items():
        cfg = timm.models.get_pretrained_cfg(tag).to_dict()
        assert cfg["hf_hub_id"] == "DingXiaoH/UniRepLKNet" and cfg["hf_hub_filename"] == file
        assert cfg["url"] == "https://huggingface.co/DingXiaoH/UniRepLKNet/resolve/main/" + file
    tags = timm.list_pretrained("unireplknet_*")
    assert len(tags) == 14 and all(t.split(".")[0] in VARIANTS for t in tags)
    assert timm.models.get_pretrained_cfg("unireplknet_b.in22k").num_classes == 21841
    cfg = timm.create_model("unireplknet_b.in22k_ft_in1k_384", device="meta").pretrained_cfg
    assert cfg["input_size"] == (3, 384, 384) and cfg["crop_pct"] == 1.0
    model = timm.create_model("unireplknet_l.in22k", device="meta")
    assert model.num_classes == 21841 and model.pretrained_cfg["input_size"] == (3, 192, 192)


# ------------------------------------------------------------------------------------------------ heads, features


def test_head_and_feature_pyramid(atto):
    """The pre-logits are the LayerNorm of the pooled features; without pooling the head gives the normalised
    NCHW map; the pyramid's widths and strides."""
    cfg = atto.pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and cfg["num_classes"] == 1000 and cfg["pool_size"] == (7, 7)
    assert atto.num_features == atto.head_hidden_size == 320
    assert [info["num_chs"] for info in atto.feature_info] == [40, 80, 160, 320]
    assert [info["reduction"] for info in atto.feature_info] == [4, 8, 16, 32]
    model = timm.create_model("unireplknet_a").eval()
    x = images(1, 96)
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        torch.testing.assert_close(pre_logits, model.norm(features.mean((2, 3))))
        model.reset_classifier(0, "")  # no pooling: NCHW out
        assert model(x).shape == (1, 320, 3, 3)
        model.reset_classifier(7, "avg")
        assert model(x).shape == (1, 7) and model.get_classifier().out_features == 7


def test_stage4_map_smaller_than_the_kernel(atto):
    """224 px: stage 4 runs K=13 on a 7x7 map (and the dilated branches reach further): zero padding, no error."""
    x = images(1, 224)
    with torch.no_grad():
        features = atto.forward_features(x)
        assert features.shape == (1, 320, 7, 7)
        deployed = reparameterize_model(atto)
        assert (deployed(x) - atto(x)).abs().max() <= 1e-4
        assert atto(images(1, 20)).shape == (1, 1000)  # a 1x1 last stage works too


def test_features_only_prunes_the_unused_stages():
    picked = timm.create_model("unireplknet_a", features_only=True, out_indices=(1, 2))
    assert picked.feature_info.channels() == [80, 160]
    assert len(picked.model.stages) == 3  # the last stage is pruned
    with torch.no_grad():
        assert [tuple(o.shape) for o in picked(images(1, 64))] == [(1, 80, 8, 8), (1, 160, 4, 4)]


def test_fx_traces_the_deployed_form(atto):
    """The re-parameterised model traces too (the contract traces the training form of a tiny model)."""
    assert DilatedReparamBlock in get_notrace_modules() and check_images in get_notrace_functions()
    deployed = reparameterize_model(atto)
    fx_model, node = trace_model(deployed, train=False)
    x = images()
    with torch.no_grad():
        assert torch.equal(fx_model(x)[node], deployed(x))


def test_prune_intermediate_layers():
    model = timm.create_model("unireplknet_a").eval()
    x = images(1, 64)
    with torch.no_grad():
        expected = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
        kept = model.prune_intermediate_layers([0, 1])
        assert kept == [0, 1] and len(model.stages) == len(model.downsample_layers) == 2
        assert model.num_classes == 0 and model.num_features == 80
        got = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_optimizer_hooks(atto):
    assert atto.no_weight_decay() == set()
    groups = atto.group_matcher()
    assert groups["stem"] == r"^downsample_layers\.0" and "blocks" in groups
    assert atto.group_matcher(coarse=True)["blocks"] == r"^stages\.(\d+)"
    from timm.models import group_parameters

    grouped = group_parameters(atto, atto.group_matcher())
    assert sum(len(v) for v in grouped.values()) == len(list(atto.parameters()))
    from timm.optim import create_optimizer_v2

    optimizer = create_optimizer_v2(atto, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.8)
    assert len(optimizer.param_groups) > 4


# ------------------------------------------------------------------------------------------------ backends, input


def test_logits_equal_with_torch_and_triton_backends(monkeypatch):
    """A tiny UniRepLKNet (one block per stage; kernels 3, 7, 5, 3: a plain depthwise conv, a Dilated Reparam Block
    with dilations 1-3) through the Triton depthwise kernel (the interpreter on CPU), in the training form."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # the reference's convolutions in fp32 on a GPU
    torch.manual_seed(3)
    small = dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), kernel_sizes=((3,), (7,), (5,), (3,)), num_classes=10)
    reference = randomise(timm.create_model("unireplknet_a", backend="torch", **small)).to(DEVICE)
    fused = timm.create_model("unireplknet_a", backend="triton", **small).eval().to(DEVICE)
    fused.load_state_dict(reference.state_dict())
    x = images(1, 32).to(DEVICE)
    with torch.no_grad():
        expected = reference(x)
        assert expected.std() > 0.05
        assert_close(fused(x), expected, torch.float32, scale=10.0)


def test_a_training_step_equal_with_torch_and_triton_backends(monkeypatch):
    """The tiny UniRepLKNet above in training (batch statistics): on the Triton backend its blocks run the fused
    GELU + GRN, BN + SE and BN + add ops and the branches' BN + add (the interpreter on CPU); the logits, every
    parameter's gradient and the running statistics after the step equal the torch backend's (the modules)."""
    import zoo.layers.unireplknet as layers

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    calls = []
    for op in ("gelu_grn", "batch_norm_se", "batch_norm_add"):
        real = getattr(layers, op)
        monkeypatch.setattr(layers, op, lambda *a, real=real, op=op, **k: calls.append(op) or real(*a, **k))
    torch.manual_seed(4)
    small = dict(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), kernel_sizes=((3,), (7,), (5,), (3,)), num_classes=10)
    models = [randomise(timm.create_model("unireplknet_a", backend="torch", **small)).to(DEVICE)]
    models.append(timm.create_model("unireplknet_a", backend="triton", **small).to(DEVICE))
    models[1].load_state_dict(models[0].state_dict())
    x = images(2, 32).to(DEVICE)
    logits = []
    for model in models:
        model.train()
        out = model(x)
        out.square().sum().backward()
        logits.append(out.detach())
    reference, fused = models
    # each of the 4 blocks: GELU + GRN, BN + SE and the tail; the K = 7 block's 3 dilated branches (BN + add)
    assert sorted(calls) == sorted(["gelu_grn"] * 4 + ["batch_norm_se"] * 4 + ["batch_norm_add"] * 7), calls
    assert_close(logits[1], logits[0], torch.float32, scale=10.0)
    largest = max(p.grad.abs().max().item() for p in reference.parameters())
    for (name, p), q in zip(reference.named_parameters(), fused.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-4 * largest, msg=name)
    for name, buffer in reference.state_dict().items():
        assert_close(fused.state_dict()[name].double(), buffer.double(), torch.float32, scale=10.0)


def test_bad_input_names_the_expected_layout(atto):
    with pytest.raises(ValueError, match=r"expects images \[N, C, H, W\] .* in_chans = 3, got shape \[3, 64, 64\]"):
        atto(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match=r"in_chans = 3, got shape \[1, 1, 64, 64\]"):
        atto.forward_intermediates(torch.randn(1, 1, 64, 64))
    with torch.no_grad():
        assert atto(torch.randn(1, 3, 8, 8)).shape == (1, 1000)  # padded stride-2 convs: any size works


# ------------------------------------------------------------------------------------------------ configs


@pytest.mark.parametrize("variant", ["a", "f", "p", "n", "t", "s", "b", "l", "xl"])
def test_model_configs_pass_no_image_size(variant):
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((ROOT / "configs" / "model" / f"unireplknet_{variant}.yaml").read_text())
    assert config["data_args"] == ["in_chans", "num_classes"]  # no image size argument


def _compose(*overrides: str):
    pytest.importorskip("hydra")  # the entry points' dependency (absent on the GPU machine)
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize(
    "variant,drop_path,mix", [("a", 0.0, 0.3), ("p", 0.1, 0.3), ("n", 0.1, 0.5), ("t", 0.2, 0.8), ("s", 0.4, 0.8)]
)
def test_imagenet_recipe_composes(variant, drop_path, mix):
    """The official ImageNet-1k recipe (Image/README.md and main.py defaults) overrides the defaults."""
    cfg = _compose(f"model=unireplknet_{variant}", "experiment=unireplknet_imagenet", "run_dir=x")
    assert (cfg.data.name, cfg.data.img_size, cfg.epochs, cfg.batch_size * cfg.accum_steps) == (
        "imagenet",
        224,
        300,
        512,
    )
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == ("adamw", 4e-3, 0.05)
    assert (cfg.sched.name, cfg.sched.warmup_epochs, cfg.sched.warmup_lr, cfg.sched.min_lr) == (
        "cosine",
        20,
        0.0,
        1e-6,
    )
    assert (cfg.mixup.mixup_alpha, cfg.mixup.label_smoothing) == (mix, 0.1)
    assert cfg.mixup.cutmix_alpha == (1.0 if mix == 0.8 else mix)
    assert cfg.data.augment.auto_augment == "rand-m9-mstd0.5-inc1" and cfg.data.augment.re_prob == 0.25
    assert not cfg.ema.enabled
    assert cfg.model.kwargs.drop_path_rate == drop_path
    overridden = _compose(
        f"model=unireplknet_{variant}",
        "experiment=unireplknet_imagenet",
        "run_dir=x",
        "model.kwargs.drop_path_rate=0.3",
        "optim.lr=1e-3",
    )
    assert (overridden.model.kwargs.drop_path_rate, overridden.optim.lr) == (0.3, 1e-3)
