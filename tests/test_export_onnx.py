"""ONNX export (zoo.deploy.onnx.export_onnx, the zoo-export command): one model of every family exported, run in
onnxruntime on the CPU and compared with the PyTorch model (eval, float32, CPU) at two batch sizes; the graphs hold
standard operators only; bad input is a clear error. Widths and depths are reduced so that each export stays fast."""

from __future__ import annotations

import json

import onnx
import onnxruntime
import pytest
import torch

import zoo
from tests.helpers import randomise
from zoo.cli import export as zoo_export_command
from zoo.deploy.onnx import OnnxExportError, export_onnx, onnx_tolerance
from zoo.training.export import export_model

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

_SMALL_CONVNET = dict(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), num_classes=5)
_SMALL_NAT = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 4), num_classes=5, img_size=64)
_SMALL_SEQUENCE = dict(in_chans=1, num_classes=5, n_layers=2, d_model=8)

# name -> (model kwargs, export_onnx kwargs, per-sample input shape)
FAMILIES = {
    "kat_t": (dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5), {}, (3, 32, 32)),
    "inceptionnext_t": (_SMALL_CONVNET, dict(input_size=64, reparameterize=True), (3, 64, 64)),
    "unireplknet_a": (_SMALL_CONVNET, dict(input_size=64, reparameterize=True), (3, 64, 64)),
    "nat_m": (_SMALL_NAT, {}, (3, 64, 64)),
    "dinat_m": (_SMALL_NAT, {}, (3, 64, 64)),
    "s4d_t": (dict(_SMALL_SEQUENCE, d_state=8, bidirectional=True), dict(input_size=(1, 6, 6)), (1, 6, 6)),
    "longconv_t": (dict(_SMALL_SEQUENCE, l_max=24), dict(input_size=(1, 6, 6)), (1, 6, 6)),
}


def _model(name: str, **kwargs) -> torch.nn.Module:
    model = randomise(zoo.create_model(name, **kwargs))
    with torch.no_grad():
        for parameter_name, parameter in model.named_parameters():
            if parameter_name.endswith("kernel.kernel"):  # long-conv kernels start below the squash threshold
                parameter.copy_(0.1 * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1)))
    return model


def _session(path) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _assert_matches(session: onnxruntime.InferenceSession, model: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        expected = model(x)
    (got,) = session.run(None, {"input": x.numpy()})
    got = torch.from_numpy(got)
    assert got.shape == expected.shape
    error = float((got - expected).abs().max())
    assert error <= onnx_tolerance(expected), f"max error {error:.3g} on {list(x.shape)}"


def _op_types(path) -> set[str]:
    model = onnx.load(str(path))
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}, "a node outside the standard domain"
    assert not model.functions, "the graph calls local functions"
    return {node.op_type for node in model.graph.node}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_family_exports_and_matches_onnxruntime_at_two_batch_sizes(name, tmp_path):
    model_kwargs, export_kwargs, size = FAMILIES[name]
    model = _model(name, **model_kwargs)
    path = export_onnx(model, tmp_path / f"{name}.onnx", **export_kwargs)
    assert path.is_file() and not model.training
    ops = _op_types(path)
    onnx.checker.check_model(str(path), full_check=True)
    batch = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param == "batch", "the batch dimension is dynamic by default"
    session = _session(path)
    generator = torch.Generator().manual_seed(2)
    for n in (1, 3):
        _assert_matches(session, model, torch.randn((n, *size), generator=generator))
    if name in ("unireplknet_a", "inceptionnext_t"):  # exported deployed: no batch norm left (folded); the model
        assert "BatchNormalization" not in ops and not model.deployed  # given keeps its training form
    if name in ("s4d_t", "longconv_t"):  # the default: a direct convolution, no DFT
        assert "Conv" in ops and "DFT" not in ops


def test_sequence_convolution_through_onnx_dft(tmp_path):
    """sequence_conv="dft" keeps the FFT product (ONNX DFT), with the kernel materialised all the same."""
    model = _model("longconv_t", **dict(_SMALL_SEQUENCE, l_max=24, bidirectional=True))
    path = export_onnx(model, tmp_path / "longconv.onnx", input_size=(1, 6, 6), sequence_conv="dft")
    assert "DFT" in _op_types(path)
    session = _session(path)
    for n in (1, 3):
        _assert_matches(session, model, torch.randn(n, 1, 6, 6))


def test_static_batch_export_with_triton_backend_modules(tmp_path):
    """A model built for the Triton kernels exports through the PyTorch paths (its backend is restored after);
    dynamic_batch=False fixes the batch at 1; verify=True runs onnxruntime itself."""
    model = _model("kat_t", **dict(FAMILIES["kat_t"][0], backend="triton"))
    path = export_onnx(model, tmp_path / "kat.onnx", dynamic_batch=False, verify=True)
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, 32, 32]
    assert {m.backend for m in model.modules() if isinstance(getattr(m, "backend", None), str)} == {"triton"}
    _assert_matches(_session(path), model.eval(), torch.randn(1, 3, 32, 32))


def test_a_half_precision_model_is_folded_after_its_cast_to_float32(tmp_path):
    """A bfloat16 training-form model is exported from a float32 copy folded afterwards: the file matches the model's
    float32 values within the export's tolerance (folded in bfloat16 first, the logits moved by about 1e-3)."""
    model = _model("inceptionnext_t", **_SMALL_CONVNET).to(torch.bfloat16)
    path = export_onnx(model, tmp_path / "half.onnx", input_size=64, reparameterize=True)
    assert "BatchNormalization" not in _op_types(path) and not model.deployed
    assert model.stem[0].weight.dtype == torch.bfloat16  # the model given is left as it was
    _assert_matches(_session(path), model.float().eval(), torch.randn(2, 3, 64, 64))


@pytest.mark.parametrize("name", ["unireplknet_a", "inceptionnext_t"])
def test_training_form_needs_reparameterising(name, tmp_path):
    model = _model(name, **_SMALL_CONVNET)
    with pytest.raises(ValueError, match="training form.*reparameterize"):
        export_onnx(model, tmp_path / "u.onnx", input_size=64)
    assert not (tmp_path / "u.onnx").exists()
    model.reparameterize()
    assert export_onnx(model, tmp_path / "u.onnx", input_size=64).is_file()


@pytest.mark.parametrize(
    ("name", "kwargs", "input_size", "match"),
    [
        ("kat_t", FAMILIES["kat_t"][0], 48, r"cannot take inputs of shape \[2, 3, 48, 48\].*doesn't match"),
        ("inceptionnext_t", dict(_SMALL_CONVNET, deploy=True), 16, r"cannot take inputs.*at least 32x32"),
        ("s4d_t", dict(_SMALL_SEQUENCE, d_state=8, vocab_size=7), None, r"token ids: give input_size=\(L,\)"),
    ],
)
def test_an_input_size_the_model_cannot_take_is_a_clear_error(name, kwargs, input_size, match, tmp_path):
    with pytest.raises(ValueError, match=match):
        export_onnx(zoo.create_model(name, **kwargs), tmp_path / "x.onnx", input_size=input_size)


def test_bad_options_are_clear_errors(tmp_path):
    model = zoo.create_model("kat_t", **FAMILIES["kat_t"][0])
    with pytest.raises(ValueError, match=r"opset must be an int in \[18, "):
        export_onnx(model, tmp_path / "x.onnx", opset=12)
    with pytest.raises(ValueError, match="sequence_conv must be one of"):
        export_onnx(model, tmp_path / "x.onnx", sequence_conv="fft")
    with pytest.raises(ValueError, match="no deployed form"):
        export_onnx(model, tmp_path / "x.onnx", reparameterize=True)


class _ComplexExp(torch.nn.Module):
    """exp of a complex tensor: the op S4D's kernel generation needs, which ONNX cannot express."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.exp(torch.complex(self.w, self.w)).real


def test_an_op_without_onnx_translation_is_named_in_the_error(tmp_path):
    with pytest.raises(OnnxExportError, match=r"the op aten\.exp has no ONNX translation \(.*complex"):
        export_onnx(_ComplexExp(), tmp_path / "c.onnx", input_size=(4,))


def test_zoo_export_command_from_an_export_directory(tmp_path, capsys):
    """zoo-export on a train.py export directory: the model rebuilt from it, exported at its recorded size."""
    kwargs = dict(FAMILIES["kat_t"][0])
    model = _model("kat_t", **kwargs)
    export_dir = export_model(model, tmp_path / "export", "kat_t", model_args=kwargs)
    out = tmp_path / "kat.onnx"
    zoo_export_command([str(export_dir), str(out)])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["onnx"] == str(out) and summary["architecture"] == "kat_t"
    assert summary["input_shape"] == ["batch", 3, 32, 32] and summary["output_shape"] == ["batch", 5]
    session = _session(out)
    for n in (1, 2):
        _assert_matches(session, model, torch.randn(n, 3, 32, 32))


def test_zoo_export_command_unknown_name_lists_close_matches(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        zoo_export_command(["inceptionnext_tt", str(tmp_path / "x.onnx")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "zoo-export: error: unknown model 'inceptionnext_tt'" in err and "inceptionnext_t" in err
    assert not (tmp_path / "x.onnx").exists()
