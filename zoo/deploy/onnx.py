"""ONNX export of the zoo's models: :func:`export_onnx`, behind ``zoo.export_onnx`` and the ``zoo-export`` command.

What the exported graph holds:

* only standard ONNX operators. Every op runs its PyTorch path while the graph is captured (each module's
  ``backend`` is set to ``"torch"`` for the duration, then restored), so no custom Triton op (``torch.ops.zoo.*``)
  can reach the graph; one that does anyway is refused with :class:`OnnxExportError`.
* UniRepLKNet and InceptionNeXt in their deployed forms (UniRepLKNet: one depthwise convolution per block; both:
  no batch norm, no layer scale). A model still in its training form is refused unless ``reparameterize=True`` (a
  re-parameterised copy is exported; the model given is left as it is) or ``deploy=False`` (the training-form graph,
  equal in eval mode but slower).
* S4D and LongConv layers with their convolution kernels materialised for the exported sequence length. S4D
  generates its kernel with complex arithmetic (``exp`` of complex numbers), which ONNX cannot express; the
  kernel depends only on the weights and the length, so it is computed once in PyTorch and stored in the graph.
  The convolution itself runs, by ``sequence_conv``, as a direct convolution with that kernel (``"direct"``, the
  default: one grouped ``Conv``, which every runtime has; the skip term D folded into the kernel's zero-lag tap)
  or as the FFT product of the PyTorch path (``"dft"``: ONNX ``DFT``, opset 17 and later; fewer operations for
  long sequences, but not every runtime implements ``DFT``). The sequence length is fixed by the export.

The exporter is torch's ``torch.export``-based one (``torch.onnx.export(..., dynamo=True)``, torch's default since
2.9 and the only one without a deprecation warning; it needs onnxscript). The TorchScript-based exporter still
ships with torch 2.11 to 2.14 but is deprecated, and it has no translation for ``torch.fft`` at any opset. The
opset is :data:`DEFAULT_OPSET` (20, torch's default, the first with a native ``Gelu``) unless given; the
exporter writes opset 18 or later.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.kernels.fftconv import fftconv_reference
from zoo.layers._padding import channels_first
from zoo.layers.longconv import LongConv
from zoo.layers.s4d import S4D

__all__ = [
    "DEFAULT_OPSET",
    "MIN_OPSET",
    "SEQUENCE_CONVS",
    "OnnxExportError",
    "export_onnx",
    "has_deployed_form",
    "onnx_tolerance",
]

DEFAULT_OPSET = 20
MIN_OPSET = 18  # torch's exporter writes opset 18 for any lower request
SEQUENCE_CONVS = ("direct", "dft")
INPUT_NAME = "input"
OUTPUT_NAME = "output"
BATCH_DIM = "batch"
_EXTRA_HINT = 'the ONNX export needs onnx, onnxruntime and onnxscript: pip install "triton-zoo[onnx]"'


class OnnxExportError(RuntimeError):
    """A model that cannot be exported to ONNX, or whose export does not reproduce it; the message names the op
    and the reason."""


def onnx_tolerance(reference: Tensor) -> float:
    """The agreement asked of an exported model: 1e-4 of the reference output's largest magnitude, or 1e-4
    absolute where that magnitude is below 1."""
    return 1e-4 * max(1.0, float(reference.abs().max()) if reference.numel() else 1.0)


# ------------------------------------------------------------------------------------------ sequence layers


class _ExportedSequenceLayer(nn.Module):
    """An S4D or LongConv layer in eval mode, for one sequence length: the kernel is a stored tensor.

    ``forward`` computes what the layer's ``forward`` computes (input layout checks, padding, convolution with the
    D skip and GELU, channel dropout (the identity in eval mode), the output linear and GLU), with the convolution
    as a direct grouped convolution (``"direct"``) or through the FFT of the PyTorch path (``"dft"``).
    """

    def __init__(self, layer: S4D | LongConv, length: int, sequence_conv: str) -> None:
        super().__init__()
        self.kind = "s4d" if isinstance(layer, S4D) else "longconv"
        self.h = layer.h
        self.transposed = layer.transposed
        self.bidirectional = layer.bidirectional
        self.length = int(length)
        self.sequence_conv = sequence_conv
        self.repeats = layer.channels if self.kind == "longconv" else 1
        self.dropout = layer.dropout
        self.output_linear = layer.output_linear
        with torch.no_grad():
            if self.kind == "s4d":
                k = layer.kernel(self.length).float()
                if self.bidirectional:
                    k = k.view(2, self.h, self.length)
                d = layer.D.float()
            else:
                k = layer.conv_kernel(self.length).float()
                d = layer.D.reshape(-1).float()
            k, d = k.detach().clone(), d.detach().clone()
        if sequence_conv == "dft":
            self.register_buffer("kernel", k)
            self.register_buffer("skip", d)
        else:
            self.register_buffer("weight", self._direct_weight(k, d))

    def _direct_weight(self, k: Tensor, d: Tensor) -> Tensor:
        """The cross-correlation weight [channels, 1, taps] of the whole convolution, D at lag 0.

        Causal (k [C, L']): taps L', weight[j] = k[L' - 1 - j], applied after L' - 1 zeros on the left. Bidirectional
        (k [2, C, L']): taps 2 L', the causal kernel reversed then the anti-causal one (k[1, m] at lag m + 1),
        applied with L' - 1 zeros on the left and L' on the right."""
        if self.bidirectional:
            weight = torch.cat([k[0].flip(-1), k[1]], dim=-1)
        else:
            weight = k.flip(-1)
        taps = k.shape[-1]
        weight[:, taps - 1] += d
        return weight.unsqueeze(1).contiguous()

    def _convolve(self, u: Tensor) -> Tensor:
        """GELU(k * u + D u) over [B, C, L] in float32, returned in the dtype of u."""
        if self.sequence_conv == "dft":
            return fftconv_reference(u, self.kernel, self.skip, self.bidirectional, "gelu")
        taps = self.weight.shape[-1] // 2 if self.bidirectional else self.weight.shape[-1]
        right = taps if self.bidirectional else 0
        z = F.conv1d(F.pad(u.float(), (taps - 1, right)), self.weight, groups=self.weight.shape[0])
        return F.gelu(z).to(u.dtype)

    def forward(self, u: Tensor, lengths: Tensor | None = None) -> Tensor:
        who = "S4D" if self.kind == "s4d" else "LongConv"
        u = channels_first(u, self.h, self.transposed, lengths, who)
        if u.shape[-1] != self.length:
            raise ValueError(
                f"this {who} layer was exported for sequences of length {self.length} (its kernel is materialised "
                f"for it), got length {u.shape[-1]}"
            )
        if self.repeats > 1:
            u = u.repeat(1, self.repeats, 1)  # [B, C*H, L], channel c*H + h reads feature h
        y = self.dropout(self._convolve(u.contiguous())).transpose(-1, -2)  # [B, L, C*H]
        if self.kind == "s4d":  # S4D's output_linear: Conv1d(H, 2H, 1) then GLU over the channels, as a matmul
            conv = self.output_linear[0]
            y = F.glu(F.linear(y, conv.weight.squeeze(-1), conv.bias), dim=-1)
        else:
            y = self.output_linear(y)
        return y.transpose(-1, -2) if self.transposed else y


def _sequence_layers(model: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute name, layer) of every S4D / LongConv layer in ``model``."""
    return [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, (S4D, LongConv))
    ]


# ------------------------------------------------------------------------------------------ model preparation


def _architecture(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("architecture"):
        return str(cfg["architecture"])
    return type(model).__name__


def has_deployed_form(model: nn.Module) -> bool:
    """Whether ``model`` has a deployed (re-parameterised) form: a ``reparameterize()`` method and a ``deployed``
    flag (UniRepLKNet, InceptionNeXt)."""
    return callable(getattr(model, "reparameterize", None)) and isinstance(getattr(model, "deployed", None), bool)


def _pair(value: Any) -> tuple[int, int] | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    return None


def _in_chans(model: nn.Module) -> int | None:
    value = getattr(model, "in_chans", None)
    if isinstance(value, int):
        return value
    patch_embed = getattr(model, "patch_embed", None)
    proj = getattr(patch_embed, "proj", None)
    return proj.in_channels if isinstance(proj, nn.Conv2d) else None


def _token_model(model: nn.Module) -> int | None:
    """The vocabulary size of a model that takes token ids (a SequenceModel with ``vocab_size``), else None."""
    vocab = getattr(model, "vocab_size", None)
    return vocab if isinstance(vocab, int) and isinstance(getattr(model, "encoder", None), nn.Embedding) else None


def _resolve_input_size(model: nn.Module, input_size: int | Sequence[int] | None) -> tuple[int, ...]:
    """The per-sample input shape: (C, H, W) for images, (L, d_in) for sequences, (L,) for token ids."""
    arch = _architecture(model)
    if input_size is not None:
        if isinstance(input_size, int) and not isinstance(input_size, bool):
            if _token_model(model) is not None:
                return (int(input_size),)
            chans = _in_chans(model)
            if chans is None:
                raise ValueError(f"input_size={input_size} is one int: give the full per-sample shape for {arch}")
            return (chans, int(input_size), int(input_size))
        size = tuple(input_size)
        if not size or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
            raise ValueError(
                f"input_size must be positive ints (the shape of one sample, no batch), got {input_size!r}"
            )
        return size
    if _token_model(model) is not None:
        raise ValueError(f"{arch} takes token ids: give input_size=(L,), the sequence length to export for")
    chans = _in_chans(model)
    for owner in (getattr(model, "patch_embed", None), model):
        spatial = _pair(getattr(owner, "img_size", None))
        if spatial is not None and chans is not None:
            return (chans, *spatial)
    cfg = getattr(model, "pretrained_cfg", None)
    size = cfg.get("input_size") if isinstance(cfg, dict) else None
    if size:
        size = tuple(int(s) for s in size)
        return (chans, *size[1:]) if chans is not None and len(size) == 3 else size
    raise ValueError(f"{arch} records no input size: give input_size, e.g. (3, 224, 224)")


def _example_input(model: nn.Module, input_size: tuple[int, ...], batch: int) -> Tensor:
    generator = torch.Generator().manual_seed(0)
    vocab = _token_model(model)
    if vocab is not None:
        return torch.randint(0, vocab, (batch, *input_size), generator=generator)
    return torch.randn((batch, *input_size), generator=generator)


@contextlib.contextmanager
def _pytorch_paths(model: nn.Module) -> Iterator[None]:
    """Every module with a ``backend`` runs its PyTorch path (restored afterwards); ``ZOO_BACKEND`` set to torch."""
    saved = [(m, m.backend) for m in model.modules() if isinstance(getattr(m, "backend", None), str)]
    env = os.environ.get("ZOO_BACKEND")
    try:
        for module, _ in saved:
            module.backend = "torch"
        os.environ["ZOO_BACKEND"] = "torch"
        yield
    finally:
        for module, backend in saved:
            module.backend = backend
        if env is None:
            os.environ.pop("ZOO_BACKEND", None)
        else:
            os.environ["ZOO_BACKEND"] = env


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextlib.contextmanager
def _materialised_sequence_layers(model: nn.Module, lengths: dict[int, int], sequence_conv: str) -> Iterator[None]:
    """Swap every S4D / LongConv layer for its exported form (``lengths``: id(layer) -> sequence length)."""
    swapped = []
    try:
        for parent, name, layer in _sequence_layers(model):
            if id(layer) not in lengths:
                continue  # a layer the forward pass never reached: not in the graph either
            setattr(parent, name, _ExportedSequenceLayer(layer, lengths[id(layer)], sequence_conv))
            swapped.append((parent, name, layer))
        yield
    finally:
        for parent, name, layer in swapped:
            setattr(parent, name, layer)


def _run_reference(model: nn.Module, x: Tensor) -> tuple[Tensor, dict[int, int]]:
    """The model's output on ``x`` and the sequence length each S4D / LongConv layer saw."""
    lengths: dict[int, int] = {}

    def record(layer: nn.Module, args: tuple) -> None:
        if args and isinstance(args[0], Tensor) and args[0].dim() == 3:
            lengths[id(layer)] = int(args[0].shape[-1] if layer.transposed else args[0].shape[-2])

    hooks = [layer.register_forward_pre_hook(record) for _, _, layer in _sequence_layers(model)]
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for hook in hooks:
            hook.remove()
    if not isinstance(out, Tensor):
        raise OnnxExportError(
            f"{_architecture(model)} returns {type(out).__name__}, not one tensor: export_onnx exports models "
            "with one tensor output"
        )
    return out, lengths


# ------------------------------------------------------------------------------------------ export


def _import_onnx():
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch's exporter imports it; fail here with the install hint)
    except ImportError as error:
        raise ImportError(f"{_EXTRA_HINT} ({error})") from error
    return onnx


def _check_opset(opset: int | None) -> int:
    onnx = _import_onnx()
    opset = DEFAULT_OPSET if opset is None else opset
    # the newest opset both the installed onnx and torch's exporter know (torch records its own in a private module)
    torch_highest = getattr(getattr(torch.onnx, "_constants", None), "ONNX_MAX_OPSET", None)
    highest = min(onnx.defs.onnx_opset_version(), torch_highest or onnx.defs.onnx_opset_version())
    if not isinstance(opset, int) or isinstance(opset, bool) or not MIN_OPSET <= opset <= highest:
        raise ValueError(
            f"opset must be an int in [{MIN_OPSET}, {highest}] (torch's exporter writes opset {MIN_OPSET} or "
            f"later; {highest} is the newest that torch {torch.__version__} and onnx {onnx.__version__} both "
            f"know), got {opset!r}"
        )
    return opset


_UNSUPPORTED_OP = re.compile(r"OpOverload\(op='([\w.]+)', overload='(\w+)'\)")
_FAILURE = re.compile(r"Failure message: ([^\n]+)")


def _conversion_error(arch: str, error: Exception) -> OnnxExportError:
    """An :class:`OnnxExportError` naming the op torch's exporter could not translate, and why."""
    text = str(error)
    op = _UNSUPPORTED_OP.search(text)
    reason = _FAILURE.search(text)
    if op:
        why = reason.group(1).strip() if reason else "no ONNX translation is registered for it"
        name = op.group(1) if op.group(2) == "default" else f"{op.group(1)}.{op.group(2)}"
        return OnnxExportError(f"{arch} cannot be exported to ONNX: the op {name} has no ONNX translation ({why})")
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    return OnnxExportError(f"{arch} cannot be exported to ONNX: {first}")


def _check_graph(arch: str, program: torch.export.ExportedProgram) -> None:
    """Refuse a captured graph that still calls one of the zoo's custom (Triton) ops."""
    for node in program.graph.nodes:
        if node.op == "call_function" and getattr(node.target, "namespace", None) == "zoo":
            raise OnnxExportError(
                f"{arch} cannot be exported to ONNX: the captured graph calls the custom Triton op "
                f"torch.ops.{node.target.name()} ({node.name}), which no ONNX runtime knows; the op's module "
                "must run its PyTorch path (backend='torch')"
            )


def _dynamic_shapes(dynamic_batch: bool) -> tuple[dict[int, Any]] | None:
    return ({0: torch.export.Dim(BATCH_DIM, min=1)},) if dynamic_batch else None


def _capture(model: nn.Module, x: Tensor, dynamic_batch: bool, arch: str) -> torch.export.ExportedProgram:
    dynamic_shapes = _dynamic_shapes(dynamic_batch)
    try:
        program = torch.export.export(model, (x,), dynamic_shapes=dynamic_shapes, strict=False)
    except Exception as error:  # torch.export raises several types (UserError, GuardOnDataDependent..., ...)
        first = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        batch = " with a dynamic batch (try dynamic_batch=False)" if dynamic_batch else ""
        raise OnnxExportError(f"{arch} cannot be captured by torch.export{batch}: {first}") from error
    _check_graph(arch, program)
    return program


def _verify(path: Path, references: list[tuple[Tensor, Tensor]], arch: str) -> None:
    """Run the ONNX file in onnxruntime (CPU) on each (input, PyTorch output); raise unless they match."""
    try:
        import onnxruntime
    except ImportError as error:
        raise ImportError(f"{_EXTRA_HINT} ({error})") from error
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for x, expected in references:
        got = torch.from_numpy(session.run(None, {INPUT_NAME: x.numpy()})[0])
        error = float((got - expected).abs().max()) if got.shape == expected.shape else math.inf
        if not error <= onnx_tolerance(expected):
            raise OnnxExportError(
                f"{arch}: onnxruntime's output on input {list(x.shape)} differs from PyTorch's by {error:.3g} "
                f"(allowed {onnx_tolerance(expected):.3g}; shapes {list(got.shape)} and {list(expected.shape)})"
            )


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: int | Sequence[int] | None = None,
    dynamic_batch: bool = True,
    opset: int | None = None,
    *,
    deploy: bool = True,
    reparameterize: bool = False,
    sequence_conv: str = "direct",
    verify: bool = False,
) -> Path:
    """Export ``model`` (eval mode, float32, CPU) to an ONNX file of standard operators, checked by onnx.checker.

    The graph has one input ``"input"`` and one output ``"output"``; with ``dynamic_batch`` their first dimension
    is the symbolic ``"batch"``, every other dimension is fixed by ``input_size``. The model given is left as it
    was (its mode, backends and modules are restored; a model that must change is copied first).

    Args:
        model: a zoo model (any ``nn.Module`` with one tensor input and output works the same way).
        path: the ``.onnx`` file to write (parent folders created). Weights over 2 GB go to an external data file
            beside it.
        input_size: the shape of one sample: ``(C, H, W)`` for images (an int S: ``(in_chans, S, S)``),
            ``(L, d_in)`` for sequences, ``(L,)`` for token ids. None: the size the model was built for (its
            ``img_size``, else its pretrained cfg's ``input_size``, with the model's ``in_chans``).
        dynamic_batch: a symbolic batch dimension (the graph is captured at batch 2); False: batch 1, fixed.
        opset: the ONNX opset, :data:`MIN_OPSET` to the newest both torch's exporter and the installed onnx know
            (23 with torch 2.14); None: :data:`DEFAULT_OPSET`.
        deploy: export a model that has a deployed form (UniRepLKNet, InceptionNeXt) in that form; such a model
            still in its training form is an error unless ``reparameterize``. False: export the form the model is in.
        reparameterize: with ``deploy``, re-parameterise a copy of a training-form model and export that.
        sequence_conv: how the S4D / LongConv convolutions are exported: ``"direct"`` (a grouped ``Conv`` with the
            kernel materialised for the exported length) or ``"dft"`` (ONNX ``DFT``, the FFT of the PyTorch path,
            the kernel materialised all the same). See the module docstring.
        verify: also run the file in onnxruntime on the CPU, at the captured batch and (dynamic batch) at batch 3,
            and raise :class:`OnnxExportError` unless it matches the model within :func:`onnx_tolerance`.

    Returns:
        ``path`` as a Path.

    Raises:
        ValueError: an input size the model cannot take (the model's own error is chained), a bad ``opset`` or
            ``sequence_conv``, a training-form UniRepLKNet or InceptionNeXt with ``deploy`` and without
            ``reparameterize``.
        OnnxExportError: the model cannot be exported (the message names the op and the reason), or ``verify``
            found a mismatch.
        ImportError: onnx / onnxscript (or, for ``verify``, onnxruntime) is not installed (``pip install
            "triton-zoo[onnx]"``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if sequence_conv not in SEQUENCE_CONVS:
        raise ValueError(f"sequence_conv must be one of {SEQUENCE_CONVS}, got {sequence_conv!r}")
    opset = _check_opset(opset)
    onnx = _import_onnx()
    arch = _architecture(model)

    fold = False  # re-parameterise (a copy) before the export
    if has_deployed_form(model):
        if reparameterize and not deploy:
            raise ValueError("reparameterize=True goes with deploy=True (it exports the deployed form)")
        if deploy and not model.deployed:
            if not reparameterize:
                raise ValueError(
                    f"{arch} is in its training form and deploy=True exports the deployed form: call "
                    "model.reparameterize() first, pass "
                    "reparameterize=True to export a re-parameterised copy, or deploy=False to export the training "
                    "form as it is"
                )
            fold = True
    elif reparameterize:
        raise ValueError(f"{arch} has no deployed form to re-parameterise into (reparameterize=True)")
    tensors = (*model.parameters(), *model.buffers())
    if any(t.device.type != "cpu" or (t.is_floating_point() and t.dtype != torch.float32) for t in tensors):
        model = copy.deepcopy(model).to(device="cpu", dtype=torch.float32)  # casts floating tensors only
    elif fold:
        model = copy.deepcopy(model)
    if fold:  # after the cast: a half-precision model's folded weights are not rounded to its dtype
        model.reparameterize()

    size = _resolve_input_size(model, input_size)
    batch = 2 if dynamic_batch else 1  # 2: torch.export specialises a dimension it sees as 1
    x = _example_input(model, size, batch)
    path = Path(path).expanduser()
    with _eval_mode(model), _pytorch_paths(model):
        try:
            expected, lengths = _run_reference(model, x)
        except (ValueError, RuntimeError, AssertionError, IndexError, TypeError) as error:
            if isinstance(error, OnnxExportError):
                raise
            raise ValueError(
                f"{arch} cannot take inputs of shape {list(x.shape)} (input_size={size}): {error}"
            ) from error
        references = [(x, expected)]
        if verify and dynamic_batch:
            x3 = _example_input(model, size, 3)
            references.append((x3, _run_reference(model, x3)[0]))
        with _materialised_sequence_layers(model, lengths, sequence_conv):
            program = _capture(model, x, dynamic_batch, arch)
            try:
                onnx_program = torch.onnx.export(
                    program,
                    (x,),
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    opset_version=opset,
                    dynamic_shapes=_dynamic_shapes(dynamic_batch),  # names the graph's batch dimension
                    dynamo=True,
                    verbose=False,
                )
            except Exception as error:  # torch.onnx.OnnxExporterError and the errors it wraps
                raise _conversion_error(arch, error) from error
            path.parent.mkdir(parents=True, exist_ok=True)
            onnx_program.save(str(path))
            onnx.checker.check_model(str(path), full_check=True)
    if verify:
        _verify(path, references, arch)
    return path
