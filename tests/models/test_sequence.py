"""zoo.models.sequence: S4D and long-conv backbones (s4d_t, s4d_s, longconv_t, longconv_s): the registered sizes,
inputs, pooling, variable-length batches, configurations beyond the defaults, and state-spaces' example key layout.
Tiny widths keep it fast on a CPU. The timm contract (creation, forward/backward, heads, no feature pyramid,
gradient checkpointing, FX) is tests/models/test_contract.py's."""

from __future__ import annotations

import pytest
import timm
import torch

import zoo
from zoo.models.sequence import SequenceModel

TINY = dict(d_model=16, n_layers=2, d_state=8, backend="torch")
TINY_LONGCONV = dict(d_model=16, n_layers=2, l_max=32, backend="torch")


def test_s4d_sizes():
    assert zoo.list_models("s4d_*") == ["s4d_s", "s4d_t"]
    for name, (width, depth) in {"s4d_t": (128, 4), "s4d_s": (256, 6)}.items():
        model = timm.create_model(name, in_chans=1, num_classes=10)
        assert isinstance(model, SequenceModel) and model.num_features == width and len(model.s4_layers) == depth
        assert model.s4_layers[0].n == 64 and model.num_classes == 10
        assert model.pretrained_cfg["classifier"] == "decoder"
        assert model.default_cfg["url"] == ""  # no released weights


def test_parameter_count_of_s4d_t_matches_the_example_model():
    # state-spaces' example (d_input 3, d_model 128, 4 layers, N 64, 10 classes): encoder 3*128+128, per layer
    # S4D (D 128, log_dt 128, C 128*32*2, log_A_real 128*32, A_imag 128*32, conv 128*256+256) + LayerNorm 256,
    # decoder 128*10+10.
    per_layer = 128 + 128 + 128 * 32 * 2 + 2 * 128 * 32 + 128 * 256 + 256 + 256
    expected = 3 * 128 + 128 + 4 * per_layer + 128 * 10 + 10
    model = timm.create_model("s4d_t", in_chans=3, num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_example_key_layout():
    keys = set(timm.create_model("s4d_t", in_chans=3).state_dict())
    for key in (
        "encoder.weight",
        "s4_layers.3.kernel.log_dt",
        "s4_layers.0.kernel.C",
        "s4_layers.0.D",
        "s4_layers.0.output_linear.0.weight",
        "norms.0.weight",
        "norms.3.bias",
        "decoder.weight",
    ):
        assert key in keys, key


@pytest.mark.parametrize("layout", ["image", "sequence", "tokens"])
def test_forward_backward_for_each_input_kind(layout):
    torch.manual_seed(0)
    if layout == "tokens":
        model = timm.create_model("s4d_t", num_classes=5, vocab_size=11, **TINY)
        x = torch.randint(0, 11, (2, 13))
    else:
        model = timm.create_model("s4d_t", in_chans=3, num_classes=5, **TINY)
        x = torch.randn(2, 3, 4, 5) if layout == "image" else torch.randn(2, 20, 3)
    y = model(x)
    assert y.shape == (2, 5)
    y.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    features = model.forward_features(x)
    assert features.shape == (2, 13 if layout == "tokens" else 20, 16)
    assert model.forward_head(features, pre_logits=True).shape == (2, 16)


def test_images_are_read_row_by_row():
    model = timm.create_model("s4d_t", in_chans=2, num_classes=3, **TINY).eval()
    image = torch.randn(1, 2, 3, 4)
    sequence = image.flatten(2).transpose(1, 2)  # [1, 12, 2], pixel (r, c) at position 4 r + c
    with torch.no_grad():
        torch.testing.assert_close(model(image), model(sequence))


def test_pooling_modes():
    torch.manual_seed(0)
    x = torch.randn(2, 9, 3)
    mean = timm.create_model("s4d_t", in_chans=3, num_classes=4, **TINY).eval()
    with torch.no_grad():
        features = mean.forward_features(x)
        torch.testing.assert_close(mean(x), mean.decoder(features.mean(1)))
        last = timm.create_model("s4d_t", in_chans=3, num_classes=4, global_pool="last", **TINY).eval()
        assert last(x).shape == (2, 4)
        # the causal model's last output depends on every position
        x2 = x.clone()
        x2[:, 0] += 1.0
        assert not torch.allclose(last(x), last(x2))
        tokens = timm.create_model("s4d_t", in_chans=3, num_classes=4, global_pool="", **TINY).eval()
        assert tokens(x).shape == (2, 9, 4)
        tail = timm.create_model("s4d_t", in_chans=3, num_classes=4, global_pool="", l_output=3, **TINY).eval()
        tail.load_state_dict(tokens.state_dict())
        torch.testing.assert_close(tail(x), tokens(x)[:, -3:])
    with pytest.raises(ValueError, match="global_pool"):
        timm.create_model("s4d_t", global_pool="max", **TINY)


def test_per_position_outputs_are_causal():
    model = timm.create_model("s4d_t", in_chans=2, num_classes=3, global_pool="", **TINY).eval()
    x = torch.randn(1, 10, 2)
    x2 = x.clone()
    x2[:, 6] += 1.0
    with torch.no_grad():
        y, y2 = model(x), model(x2)
    torch.testing.assert_close(y[:, :6], y2[:, :6])
    assert not torch.allclose(y[:, 6:], y2[:, 6:])


def test_reset_classifier_changes_the_pooling():
    model = timm.create_model("s4d_t", in_chans=1, num_classes=10, **TINY).eval()
    x = torch.randn(2, 5, 1)
    assert model.get_classifier() is model.decoder
    model.reset_classifier(0, global_pool="last")
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_features(x)[:, -1])


def test_prenorm_batchnorm_bidirectional_and_grad_checkpointing():
    torch.manual_seed(0)
    model = timm.create_model(
        "s4d_t", in_chans=3, num_classes=4, prenorm=True, norm="batch", bidirectional=True, dropout=0.0, **TINY
    )
    x = torch.randn(3, 11, 3)
    model.train()
    reference = model(x)
    reference.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out = model(x)
    out.sum().backward()
    torch.testing.assert_close(out, reference)
    for p, g in zip(model.parameters(), grads, strict=True):
        torch.testing.assert_close(p.grad, g)
    assert isinstance(model.norms[0], torch.nn.BatchNorm1d) and model.s4_layers[0].bidirectional


def test_no_weight_decay_and_param_groups():
    from zoo.training.optim import param_groups

    model = timm.create_model("s4d_t", in_chans=1, num_classes=3, ssm_lr=0.001, **TINY)
    assert "s4_layers.0.kernel.log_dt" in model.no_weight_decay()
    groups = param_groups(model, weight_decay=0.05)
    ssm = [g for g in groups if g.get("lr") == 0.001]
    assert len(ssm) == 1 and len(ssm[0]["params"]) == 3 * 2 and ssm[0]["weight_decay"] == 0.0
    decayed = {n for g in groups if g["weight_decay"] > 0 for n in g["param_names"]}
    assert "encoder.weight" in decayed and "s4_layers.1.kernel.C" in decayed and "decoder.bias" not in decayed


def test_bad_inputs():
    model = timm.create_model("s4d_t", in_chans=3, num_classes=2, **TINY)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.randn(2, 1, 4, 4))
    with pytest.raises(ValueError, match="vocab_size"):
        model(torch.randint(0, 3, (2, 5)))
    tokens = timm.create_model("s4d_t", vocab_size=4, num_classes=2, **TINY)
    with pytest.raises(ValueError, match="integer token ids"):
        tokens(torch.randn(2, 5))


FX_CASES = {  # beyond the contract's (mean pooling over a float sequence)
    "image-last": {"global_pool": "last"},
    "tokens": {"vocab_size": 5},
    "per-position": {"global_pool": "", "prenorm": True},
}


@pytest.mark.parametrize("kwargs", list(FX_CASES.values()), ids=list(FX_CASES))
def test_fx_feature_extraction(kwargs):
    """timm's FX tracing of the other pooling modes and inputs: the S4D layers and the input check are leaves."""
    from timm.layers import create_feature_extractor, get_graph_node_names

    model = timm.create_model("s4d_t", in_chans=1, num_classes=3, **TINY, **kwargs).eval()
    x = torch.randint(0, 5, (2, 7)) if "vocab_size" in kwargs else torch.randn(2, 1, 4, 4)
    last = get_graph_node_names(model)[1][-1]
    with torch.no_grad():
        torch.testing.assert_close(create_feature_extractor(model, return_nodes=[last])(x)[last], model(x))


def test_longconv_has_the_sizes_of_s4d():
    assert zoo.list_models("longconv_*") == ["longconv_s", "longconv_t"]
    for name, (width, depth) in {"longconv_t": (128, 4), "longconv_s": (256, 6)}.items():
        model = timm.create_model(name, in_chans=1, num_classes=10)
        assert isinstance(model, SequenceModel) and model.num_features == width and len(model.s4_layers) == depth
        layer = model.s4_layers[0]
        assert isinstance(layer, zoo.layers.LongConv) and (layer.l_max, layer.channels) == (1024, 2)
        assert model.pretrained_cfg["origin_url"].endswith("safari")
    with pytest.raises(ValueError, match="layer must be one of"):
        SequenceModel(layer="s5")


def test_parameter_count_of_longconv_t():
    # encoder 3*128+128; per layer: kernel 2*128*1024, D 2*128, Linear(256, 256) 256*256+256, LayerNorm 256;
    # decoder 128*10+10
    per_layer = 2 * 128 * 1024 + 2 * 128 + 256 * 256 + 256 + 256
    expected = 3 * 128 + 128 + 4 * per_layer + 128 * 10 + 10
    model = timm.create_model("longconv_t", in_chans=3, num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == expected
    keys = set(model.state_dict())
    for key in ("s4_layers.0.kernel.kernel", "s4_layers.3.D", "s4_layers.0.output_linear.0.weight", "norms.0.weight"):
        assert key in keys, key


def test_longconv_model_trains_with_kernel_param_group():
    from zoo.training.optim import param_groups

    model = timm.create_model("longconv_t", vocab_size=7, num_classes=3, kernel_lr=0.0005, **TINY_LONGCONV)
    assert "s4_layers.1.kernel.kernel" in model.no_weight_decay()
    groups = param_groups(model, weight_decay=0.05)
    kernels = [g for g in groups if g.get("lr") == 0.0005]
    assert len(kernels) == 1 and len(kernels[0]["params"]) == 2 and kernels[0]["weight_decay"] == 0.0
    x = torch.randint(0, 7, (2, 40))  # longer than l_max: the kernel keeps l_max taps
    y = model(x)
    assert y.shape == (2, 3)
    y.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


VARIABLE_CASES = {
    "s4d-bidirectional-mean": dict(TINY, bidirectional=True),
    "s4d-prenorm-last": dict(TINY, prenorm=True, global_pool="last"),
    "longconv-bidirectional-mean": dict(TINY_LONGCONV, layer="longconv", bidirectional=True),
    "longconv-batchnorm-last": dict(
        TINY_LONGCONV, layer="longconv", bidirectional=True, norm="batch", global_pool="last"
    ),
}


@pytest.mark.parametrize("kwargs", list(VARIABLE_CASES.values()), ids=list(VARIABLE_CASES))
def test_padding_does_not_change_valid_outputs(kwargs):
    """Pooled outputs and the features at valid positions do not depend on the padding's content or amount, and
    equal those of each sequence run alone."""
    torch.manual_seed(0)
    model = SequenceModel(num_classes=4, vocab_size=9, dropout=0.0, **kwargs).eval()
    if kwargs.get("norm") == "batch":  # non-trivial running statistics
        for norm in model.norms:
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
    x = torch.randint(1, 9, (3, 10))
    lengths = torch.tensor([10, 6, 3])
    x[1, 6:] = 0
    x[2, 3:] = 0
    other = x.clone()
    other[1, 6:] = torch.randint(1, 9, (4,))
    other[2, 3:] = 5
    longer = torch.cat([x, torch.zeros(3, 5, dtype=x.dtype)], dim=1)
    with torch.no_grad():
        y = model(x, lengths)
        features = model.forward_features(x, lengths)
        torch.testing.assert_close(model(other, lengths), y, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(longer, lengths), y, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.forward_features(other, lengths), features, atol=1e-5, rtol=1e-5)
        assert not features[1, 6:].any() and not features[2, 3:].any()  # padded positions are zero
        for b, n in enumerate(lengths.tolist()):
            torch.testing.assert_close(model(x[b : b + 1, :n]), y[b : b + 1], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(model(other), model(x))  # without lengths the padding is read


def test_full_lengths_equal_no_lengths_and_bad_lengths_raise():
    model = timm.create_model("s4d_t", in_chans=3, num_classes=4, bidirectional=True, **TINY).eval()
    x = torch.randn(2, 9, 3)
    with torch.no_grad():
        torch.testing.assert_close(model(x, torch.tensor([9, 9])), model(x))
    with pytest.raises(ValueError, match=r"lengths must be in \[1, L = 9\]"):
        model(x, torch.tensor([9, 10]))
    with pytest.raises(ValueError, match=r"lengths must be in \[1, L = 9\]"):
        model(x, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match=r"integer tensor \[B\] = \[2\]"):
        model(x, torch.tensor([[9, 9]]))


def test_grad_checkpointing_with_lengths():
    torch.manual_seed(0)
    model = SequenceModel(
        num_classes=3, vocab_size=5, dropout=0.0, layer="longconv", kernel_dropout=0.0, **dict(TINY_LONGCONV, d_model=8)
    )
    x, lengths = torch.randint(1, 5, (2, 12)), torch.tensor([12, 5])
    reference = model(x, lengths)
    reference.sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out = model(x, lengths)
    out.sum().backward()
    torch.testing.assert_close(out, reference)
    for p, g in zip(model.parameters(), grads, strict=True):
        torch.testing.assert_close(p.grad, g)
