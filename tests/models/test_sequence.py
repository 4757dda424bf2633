"""zoo.models.sequence: S4D backbones (s4d_t, s4d_s): registration, inputs, pooling, the timm contract parts that
apply, and state-spaces' example key layout. Tiny widths keep it fast on a CPU."""

from __future__ import annotations

import pytest
import timm
import torch

import zoo
from zoo.models.sequence import SequenceModel

TINY = dict(d_model=16, n_layers=2, d_state=8, backend="torch")


def test_registered_with_timm_and_the_zoo():
    assert zoo.list_models("s4d_*") == ["s4d_s", "s4d_t"]
    for name, (width, depth) in {"s4d_t": (128, 4), "s4d_s": (256, 6)}.items():
        model = timm.create_model(name, in_chans=1, num_classes=10)
        assert isinstance(model, SequenceModel) and model.num_features == width and len(model.s4_layers) == depth
        assert model.s4_layers[0].n == 64 and model.num_classes == 10
        assert model.pretrained_cfg["architecture"] == name and model.pretrained_cfg["classifier"] == "decoder"
        assert model.default_cfg["url"] == ""  # no released weights
    with pytest.raises(RuntimeError, match="features_only"):
        timm.create_model("s4d_t", features_only=True)


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
    for key in ("encoder.weight", "s4_layers.3.kernel.log_dt", "s4_layers.0.kernel.C", "s4_layers.0.D",
                "s4_layers.0.output_linear.0.weight", "norms.0.weight", "norms.3.bias", "decoder.weight"):  # fmt: skip
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


def test_reset_classifier_and_get_classifier():
    model = timm.create_model("s4d_t", in_chans=1, num_classes=10, **TINY)
    assert model.get_classifier() is model.decoder
    model.reset_classifier(7)
    assert model.num_classes == 7 and model(torch.randn(2, 1, 3, 3)).shape == (2, 7)
    model.reset_classifier(0, global_pool="last")
    assert model(torch.randn(2, 1, 3, 3)).shape == (2, 16)
    assert timm.create_model("s4d_t", in_chans=1, num_classes=0, **TINY)(torch.randn(2, 5, 1)).shape == (2, 16)


def test_prenorm_batchnorm_bidirectional_and_grad_checkpointing():
    torch.manual_seed(0)
    model = timm.create_model("s4d_t", in_chans=3, num_classes=4, prenorm=True, norm="batch", bidirectional=True,
                              dropout=0.0, **TINY)  # fmt: skip
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
    for p, g in zip(model.parameters(), grads):
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


FX_CASES = {"mean": {}, "last": {"global_pool": "last"}, "tokens": {"vocab_size": 5},
            "per-position": {"global_pool": "", "prenorm": True}}


@pytest.mark.parametrize("kwargs", list(FX_CASES.values()), ids=list(FX_CASES))
def test_fx_feature_extraction(kwargs):
    """timm's FX tracing: the S4D layers and the input check are leaves."""
    from timm.layers import create_feature_extractor, get_graph_node_names

    model = timm.create_model("s4d_t", in_chans=1, num_classes=3, **TINY, **kwargs).eval()
    x = torch.randint(0, 5, (2, 7)) if "vocab_size" in kwargs else torch.randn(2, 1, 4, 4)
    last = get_graph_node_names(model)[1][-1]
    with torch.no_grad():
        torch.testing.assert_close(create_feature_extractor(model, return_nodes=[last])(x)[last], model(x))
