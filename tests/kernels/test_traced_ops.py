"""The registered ops under torch.compile on CUDA (issue 21): traced into their Triton kernels.

``zoo.kernels._backend.triton_op`` makes AOTAutograd trace each op's launcher on CUDA tensors, so that the compiled
graph holds the kernels themselves (``triton_kernel_wrapper_functional`` nodes that Inductor launches and captures
in CUDA graphs) instead of one opaque op. This machine has no GPU, so the tracing runs on fake CUDA tensors in a
subprocess with the interpreter off (real ``triton.jit`` kernels) and Triton's driver reporting an sm_90 target (the
mutation analysis compiles every kernel to TTIR for it). The subprocess prints one JSON line per traced call; the
tests check that every op forward and backward became kernel launches, that no kernel writes to a graph input, and
that the traced outputs match the op's registered shapes. CPU tensors (the interpreter) keep the ops opaque: the
compile tests of each op cover that path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import assert_relative_error

ROOT = Path(__file__).resolve().parents[2]


def _cases():
    """name -> (a registered op, its tensor inputs[, its other arguments by keyword]). Imported in the subprocess."""

    ops = torch.ops.zoo
    cuda = "cuda"

    def t(*shape, dtype=torch.bfloat16, channels_last=False):
        x = torch.empty(shape, dtype=dtype, device=cuda)
        return x.to(memory_format=torch.channels_last) if channels_last else x

    f32 = torch.float32
    s4d = (t(3, dtype=f32), t(3, 6, 2, dtype=f32), t(3, 6, dtype=f32), t(3, 6, dtype=f32))
    q2 = [t(2, 7, 9, 2, 16) for _ in range(3)]
    q1 = [t(2, 33, 2, 32) for _ in range(3)]
    rpb = t(2, 5, 5, dtype=f32)
    mixer = (t(2, 16, 9, 9, channels_last=True), t(4, 1, 3, 3), t(4), t(4, 1, 1, 11), t(4), t(4, 1, 11, 1), t(4))
    return {
        "group_rational": (ops.group_rational, (t(4, 64), t(1, 6, dtype=f32), t(8, 4, dtype=f32))),
        # KAN's act1 under autocast: float32 in, bf16 out
        "group_rational_out_dtype": (
            ops.group_rational,
            (t(4, 64, dtype=f32), t(1, 6, dtype=f32), t(8, 4, dtype=f32)),
            {"out_dtype": torch.bfloat16},
        ),
        "group_rational_backward": (
            ops.group_rational_backward,
            (t(4, 64), t(4, 64), t(1, 6, dtype=f32), t(8, 4, dtype=f32)),
        ),
        # KAT's norm2 -> act1 under autocast: float32 in, bf16 out
        "layer_norm_group_rational": (
            ops.layer_norm_group_rational,
            (t(6, 48, dtype=f32), t(48, dtype=f32), t(48, dtype=f32), t(1, 6, dtype=f32), t(8, 4, dtype=f32)),
            {"eps": 1e-6, "out_dtype": torch.bfloat16},
        ),
        "layer_norm_group_rational_backward": (
            ops.layer_norm_group_rational_backward,
            (
                t(6, 48),
                t(6, 48, dtype=f32),
                t(6, dtype=f32),
                t(6, dtype=f32),
                t(48, dtype=f32),
                t(48, dtype=f32),
                t(1, 6, dtype=f32),
                t(8, 4, dtype=f32),
            ),
        ),
        # UniRepLKNet's act under autocast: bf16 in and out, float32 gamma and beta
        "gelu_grn": (ops.gelu_grn, (t(2, 5, 7, 40), t(1, 1, 1, 40, dtype=f32), t(1, 1, 1, 40, dtype=f32), 1e-6, None)),
        "gelu_grn_backward": (
            ops.gelu_grn_backward,
            (t(2, 5, 7, 40), t(2, 5, 7, 40), t(2, 41, dtype=f32), t(1, 1, 1, 40, dtype=f32), None),
        ),
        # UniRepLKNet's block tail under autocast: bf16 input (the second Linear's), float32 residual and parameters
        "batch_norm_add": (
            ops.batch_norm_add,
            (t(3, 40, 5, 7, channels_last=True), t(3, 40, 5, 7, dtype=f32, channels_last=True))
            + (t(40, dtype=f32),) * 4
            + (True, 0.1, 1e-5, t(40, dtype=f32), t(3, dtype=f32)),
        ),
        "batch_norm_add_eval": (
            ops.batch_norm_add,
            (t(3, 40, 5, 7, channels_last=True), t(3, 40, 5, 7, dtype=f32, channels_last=True))
            + (t(40, dtype=f32),) * 4
            + (False, 0.1, 1e-5, t(40, dtype=f32), None),
        ),
        "batch_norm_add_backward": (
            ops.batch_norm_add_backward,
            (
                t(3, 40, 5, 7, dtype=f32, channels_last=True),
                t(3, 40, 5, 7, channels_last=True),
                t(2, 40, dtype=f32),
                t(40, dtype=f32),
                t(40, dtype=f32),
                t(40, dtype=f32),
                t(3, dtype=f32),
                True,
            ),
        ),
        # UniRepLKNet's BN + SE under autocast: the depthwise convolution's bf16 output, float32 parameters
        "batch_norm_se": (
            ops.batch_norm_se,
            (t(3, 40, 5, 7, channels_last=True),)
            + (t(40, dtype=f32),) * 4
            + (True, 0.1, 1e-5, t(10, 40, dtype=f32), t(10, dtype=f32), t(40, 10, dtype=f32), t(40, dtype=f32)),
        ),
        "batch_norm_se_eval": (
            ops.batch_norm_se,
            (t(3, 40, 5, 7, channels_last=True),)
            + (t(40, dtype=f32),) * 4
            + (False, 0.1, 1e-5, t(10, 40, dtype=f32), None, t(40, 10, dtype=f32), None),
        ),
        "batch_norm_se_backward": (
            ops.batch_norm_se_backward,
            (
                t(3, 40, 5, 7, channels_last=True),
                t(3, 40, 5, 7, channels_last=True),
                t(2, 40, dtype=f32),
                t(2, 3, 40, dtype=f32),
                t(3, 10, dtype=f32),
                t(3, 40, dtype=f32),
                t(40, dtype=f32),
                t(40, dtype=f32),
                t(10, 40, dtype=f32),
                t(40, 10, dtype=f32),
                True,
            ),
        ),
        "dwconv2d_direct": (ops.dwconv2d, (t(2, 8, 9, 9, channels_last=True), t(8, 1, 7, 7), t(8), [1, 1], [1, 1])),
        "dwconv2d_direct_backward": (
            ops.dwconv2d_backward,
            (t(2, 8, 9, 9, channels_last=True), t(2, 8, 9, 9, channels_last=True), t(8, 1, 7, 7), [1, 1], [1, 1]),
        ),
        "dwconv2d_whole_row": (ops.dwconv2d, (t(2, 8, 9, 9), t(8, 1, 3, 3), t(8), [1, 1], [1, 1])),
        "dwconv2d_whole_row_backward": (
            ops.dwconv2d_backward,
            (t(2, 8, 9, 9), t(2, 8, 9, 9), t(8, 1, 3, 3), [1, 1], [1, 1]),
        ),
        "dwconv2d_igemm": (ops.dwconv2d, (t(2, 8, 14, 14, channels_last=True), t(8, 1, 13, 13), t(8), [1, 1], [1, 1])),
        "dwconv2d_igemm_backward": (
            ops.dwconv2d_backward,
            (t(2, 8, 14, 14, channels_last=True), t(2, 8, 14, 14, channels_last=True), t(8, 1, 13, 13), [1, 1], [1, 1]),
        ),
        "dwconv2d_generic": (ops.dwconv2d, (t(2, 8, 9, 9), t(8, 1, 3, 3), None, [2, 2], [1, 1])),
        "dwconv2d_generic_backward": (
            ops.dwconv2d_backward,
            (t(2, 8, 5, 5), t(2, 8, 9, 9), t(8, 1, 3, 3), [2, 2], [1, 1]),
        ),
        "inception_dwconv2d": (ops.inception_dwconv2d, mixer),
        "inception_dwconv2d_backward": (
            ops.inception_dwconv2d_backward,
            (mixer[0], mixer[0], mixer[1], mixer[3], mixer[5]),
        ),
        "s4d_kernel": (ops.s4d_kernel, (*s4d, 21, "zoh")),
        "s4d_kernel_backward": (ops.s4d_kernel_backward, (t(3, 21, dtype=f32), *s4d, 21, "zoh")),
        "fftconv": (
            ops.fftconv,
            (t(2, 3, 40, dtype=f32), t(3, 40, dtype=f32), t(3, dtype=f32), None, t(2, 3, 40, dtype=f32), False, "gelu"),
        ),
        "fftconv_backward": (
            ops.fftconv_backward,
            (
                t(2, 3, 40, dtype=f32),
                t(2, 3, 40, dtype=f32),
                t(3, 40, dtype=f32),
                t(3, dtype=f32),
                None,
                t(2, 3, 40, dtype=f32),
                t(2, 3, 40, dtype=f32),
                False,
                "gelu",
            ),
        ),
        "neighborhood_attention_2d_bias": (
            ops.neighborhood_attention,
            (*q2, rpb, [3, 3], [2, 1], [False, False], 0.25),
        ),
        "neighborhood_attention_2d_bias_backward": (
            ops.neighborhood_attention_backward,
            (q2[0], *q2, q2[0], t(2, 2, 63, dtype=f32), rpb, [3, 3], [2, 1], [False, False], 0.25),
        ),
        "neighborhood_attention_1d_causal": (ops.neighborhood_attention, (*q1, None, [7], [1], [True], 0.17)),
        "neighborhood_attention_1d_causal_backward": (
            ops.neighborhood_attention_backward,
            (q1[0], *q1, q1[0], t(2, 2, 33, dtype=f32), None, [7], [1], [True], 0.17),
        ),
    }


def _describe(graph, outputs, expected) -> dict:
    """What a traced graph holds: its kernels, any op left opaque, the inputs a kernel writes to, and whether the
    outputs have the shapes, dtypes and strides of the registered op's fake implementation."""

    placeholders = {n.name for n in graph.graph.nodes if n.op == "placeholder"}
    kernels, opaque, written_inputs, source_errors = [], [], [], []
    for node in graph.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target is torch.ops.higher_order.triton_kernel_wrapper_functional:
            from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

            kernel = kernel_side_table.get_kernel(node.kwargs["kernel_idx"])
            kernels.append(kernel.__name__ if hasattr(kernel, "src") else kernel.fn.__name__)
            arguments = {
                **kernel_side_table.get_constant_args(node.kwargs["constant_args_idx"]),
                **{k: getattr(v, "meta", {}).get("val", v) for k, v in node.kwargs["kwargs"].items()},
            }
            error = _inductor_source_error(kernel, arguments)
            if error:
                source_errors.append(f"{kernels[-1]}: {error}")
            for name in node.kwargs["tensors_to_clone"]:
                base = node.kwargs["kwargs"][name]
                while getattr(base, "op", None) == "call_function" and getattr(base.target, "is_view", False):
                    base = base.args[0]  # a view of ...
                if getattr(base, "name", None) in placeholders:
                    written_inputs.append(f"{kernels[-1]}.{name}")
        elif str(node.target).startswith("zoo."):
            opaque.append(str(node.target))
    same = all(
        (a.shape, a.dtype, a.stride()) == (b.shape, b.dtype, b.stride())
        for a, b in zip(outputs, expected, strict=True)
        if b.numel()
    )
    return {
        "kernels": kernels,
        "opaque": opaque,
        "written_inputs": written_inputs,
        "source_errors": source_errors,
        "outputs_match": same,
    }


def _inductor_source_error(kernel, arguments: dict) -> str:
    """Inductor compiles a traced kernel from source it writes itself: the kernel's text and the transitive closure
    of the ``triton.jit`` helpers and constants it names, under its standard imports. Write that module as Inductor
    does, import it and lower the kernel to TTIR for sm_90 with the traced arguments; '' when that works, else the
    error (a helper or constant Inductor does not carry over)."""
    import importlib.util
    import tempfile

    from torch._higher_order_ops.triton_kernel_wrap import generate_ttir
    from torch._inductor.codegen.triton import TritonKernel
    from torch._inductor.codegen.wrapper import user_defined_triton_kernel_transitive_closure_source_code
    from triton.runtime.autotuner import Autotuner

    jit = kernel.fn if isinstance(kernel, Autotuner) else kernel
    source = TritonKernel.gen_common_triton_imports() + "\n@triton.jit\n"
    source += user_defined_triton_kernel_transitive_closure_source_code(jit)
    try:
        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
            f.write(source)
        spec = importlib.util.spec_from_file_location(f"inductor_{jit.__name__}", f.name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        emitted = getattr(module, jit.__name__)
        if jit is not kernel:  # the autotuner's first configuration, as the mutation analysis takes
            arguments = {**arguments, **kernel.configs[0].kwargs}
        generate_ttir(emitted, arguments, {})
    except Exception as error:  # reported, and the test fails on it
        return f"{type(error).__name__}: {str(error)[:500]}"
    finally:
        os.unlink(f.name)
    return ""


def _symbolic(mode, t):
    """A fake CUDA tensor like ``t`` whose sizes are all symbolic."""
    from torch.fx.experimental.symbolic_shapes import DimDynamic, StatelessSymbolicContext

    context = StatelessSymbolicContext(dynamic_sizes=[DimDynamic.DYNAMIC] * t.dim())
    with torch._subclasses.fake_tensor.unset_fake_temporarily():
        real = torch.empty(t.shape, dtype=t.dtype)
    return mode.from_tensor(real, symbolic_context=context).to("cuda")


def main(names: list[str], dynamic: bool) -> None:
    """Trace each named case (fake CUDA tensors, sm_90 target) and print one JSON line per case."""
    import triton
    from torch._functorch.aot_autograd import aot_function
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv
    from triton.backends.compiler import GPUTarget

    class _Sm90Driver:
        """Stands in for Triton's CUDA driver on a machine without a GPU: the target kernels compile for."""

        def get_current_target(self):
            return GPUTarget("cuda", 90, 32)

    triton.runtime.driver.set_active(_Sm90Driver())
    import zoo.kernels  # noqa: F401  (registers the ops)
    import zoo.kernels.neighborhood  # noqa: F401

    mode = FakeTensorMode(shape_env=ShapeEnv()) if dynamic else FakeTensorMode()
    with mode:
        cases = _cases()
        for name in names:
            op, args, *options = cases[name]  # options: keyword arguments that are not tensors
            kwargs = options[0] if options else {}
            if dynamic:  # every size symbolic
                args = tuple(_symbolic(mode, a) if isinstance(a, torch.Tensor) else a for a in args)
            graphs = []

            def keep(gm, _inputs, graphs=graphs):
                graphs.append(gm)
                return gm

            outputs = aot_function(lambda *a, op=op, kwargs=kwargs: op(*a, **kwargs), fw_compiler=keep)(*args)
            outputs = tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)
            fake = op.default(*args, **kwargs)  # the registered fake implementation's outputs (FakeTensorMode is on)
            expected = tuple(fake) if isinstance(fake, (tuple, list)) else (fake,)
            print(json.dumps({"name": name, **_describe(graphs[0], outputs, expected)}), flush=True)


def _trace(names: list[str], dynamic: bool = False, **env: str) -> dict[str, dict]:
    """Run :func:`main` in a subprocess with the interpreter off; name -> its description."""
    code = f"from tests.kernels.test_traced_ops import main; main({names!r}, {dynamic!r})"
    environment = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": str(ROOT), **env}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-4000:]
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    return {row["name"]: row for row in rows}


CASES = [
    "group_rational",
    "group_rational_out_dtype",
    "layer_norm_group_rational",
    "layer_norm_group_rational_backward",
    "group_rational_backward",
    "gelu_grn",
    "gelu_grn_backward",
    "batch_norm_add",
    "batch_norm_add_eval",
    "batch_norm_add_backward",
    "batch_norm_se",
    "batch_norm_se_eval",
    "batch_norm_se_backward",
    "dwconv2d_direct",
    "dwconv2d_direct_backward",
    "dwconv2d_whole_row",
    "dwconv2d_whole_row_backward",
    "dwconv2d_igemm",
    "dwconv2d_igemm_backward",
    "dwconv2d_generic",
    "dwconv2d_generic_backward",
    "inception_dwconv2d",
    "inception_dwconv2d_backward",
    "s4d_kernel",
    "s4d_kernel_backward",
    "fftconv",
    "fftconv_backward",
    "neighborhood_attention_2d_bias",
    "neighborhood_attention_2d_bias_backward",
    "neighborhood_attention_1d_causal",
    "neighborhood_attention_1d_causal_backward",
]


def test_constexpr_functions_are_bound_under_their_own_names():
    """Every ``triton.constexpr_function`` of the kernels' modules is a global of its function's own name: Inductor
    before torch 2.14 (the GPU machine's 2.11) writes the constexpr functions a traced kernel calls into the
    kernel's source under their ``__name__``, so a kernel calling one under another name fails to compile there
    (NameError), though 2.14's own copy renames it and the traced kernels below lower."""
    import importlib
    import pkgutil

    import triton.runtime.jit

    import zoo.kernels

    names = [m.name for m in pkgutil.walk_packages(zoo.kernels.__path__, "zoo.kernels.")]
    found = []
    for module in map(importlib.import_module, names):
        for name, value in vars(module).items():
            if isinstance(value, triton.runtime.jit.ConstexprFunction):
                found.append((module.__name__, name, value.fn.__name__))
    assert found and all(name == fn_name for _, name, fn_name in found), found


@pytest.fixture(scope="module")
def traced() -> dict[str, dict]:
    return _trace(CASES)


@pytest.mark.parametrize("name", CASES)
def test_op_traces_into_its_kernels(traced, name):
    row = traced[name]
    assert row["kernels"] and not row["opaque"], row
    assert not row["written_inputs"], row  # a kernel writing to an input would make Inductor copy it first
    assert not row["source_errors"], row  # the kernel as Inductor writes it out compiles
    assert row["outputs_match"], row


def test_symbolic_shapes_and_the_switch_keep_ops_opaque():
    """With symbolic sizes (a launcher picks its tiles from concrete ones) and with ZOO_TRACE_KERNELS=0 the op stays
    one node."""
    for row in (
        *_trace(["group_rational"], dynamic=True).values(),
        *_trace(["s4d_kernel"], ZOO_TRACE_KERNELS="0").values(),
    ):
        assert row["opaque"] and not row["kernels"], row


def _gpu_cases(device: str = "cuda") -> dict:
    """name -> (function of tensors calling one public op with backend="triton", its leaf tensors on ``device``)
    at small shapes whose kernels compile in seconds; float32 except where the op's fast path is half precision."""
    from zoo.kernels import dwconv2d, group_rational, inception_dwconv2d, s4d_kernel
    from zoo.kernels.batch_norm_add import batch_norm_add
    from zoo.kernels.batch_norm_se import batch_norm_se
    from zoo.kernels.fftconv import fftconv
    from zoo.kernels.neighborhood import neighborhood_attention

    gen = torch.Generator().manual_seed(0)

    def leaf(*shape, scale=1.0, dtype=torch.float32, channels_last=False):
        t = (scale * torch.randn(*shape, generator=gen)).to(device, dtype)
        return (t.to(memory_format=torch.channels_last) if channels_last else t).requires_grad_(True)

    bf16 = torch.bfloat16
    s4d = [torch.rand(8, generator=gen) - 6.0, torch.randn(8, 16, 2, generator=gen)]
    s4d += [torch.rand(8, 16, generator=gen) - 1.0, 3.14 * torch.arange(16.0).expand(8, 16).contiguous()]
    return {
        "group_rational": (
            lambda x, a, b: group_rational(x, a, b, backend="triton"),
            [leaf(4, 50, 192), leaf(1, 6, scale=0.5), leaf(8, 4, scale=0.5)],
        ),
        "dwconv2d": (
            lambda x, w, b: dwconv2d(x, w, b, backend="triton"),
            [leaf(2, 64, 15, 15, channels_last=True), leaf(64, 1, 3, 3), leaf(64)],
        ),
        "inception_dwconv2d": (
            lambda x, *p: inception_dwconv2d(x, *p, backend="triton"),
            [leaf(2, 96, 14, 14, dtype=bf16, channels_last=True)]
            + [
                leaf(*shape, dtype=bf16)
                for shape in ((12, 1, 3, 3), (12,), (12, 1, 1, 11), (12,), (12, 1, 11, 1), (12,))
            ],
        ),
        "s4d_kernel": (
            lambda *p: s4d_kernel(*p, L=300, backend="triton"),
            [t.to(device).requires_grad_(True) for t in s4d],
        ),
        "fftconv": (
            lambda u, k, d: fftconv(u, k, d, activation="gelu", backend="triton"),
            [leaf(2, 8, 300), leaf(8, 300, scale=1 / 300), leaf(8)],
        ),
        "batch_norm_add": (
            lambda y, x, w, b, s: batch_norm_add(y, x, None, None, w, b, True, 0.1, 1e-5, s, backend="triton"),
            [leaf(4, 80, 14, 14, dtype=bf16, channels_last=True), leaf(4, 80, 14, 14, channels_last=True)]
            + [leaf(80) for _ in range(3)],
        ),
        "batch_norm_se": (
            lambda y, w, b, dw, db, uw, ub: batch_norm_se(
                y, None, None, w, b, True, 0.1, 1e-5, dw, db, uw, ub, backend="triton"
            ),  # fmt: skip
            [
                leaf(4, 80, 14, 14, dtype=bf16, channels_last=True),
                leaf(80),
                leaf(80),
                leaf(20, 80, scale=0.2),
                leaf(20),
                leaf(80, 20, scale=0.2),
                leaf(80),
            ],  # fmt: skip
        ),
        "neighborhood_attention_2d_bias": (
            lambda q, k, v, rpb: neighborhood_attention(q, k, v, kernel_size=5, rpb=rpb, backend="triton"),
            [leaf(2, 9, 11, 2, 32, dtype=bf16) for _ in range(3)] + [leaf(2, 9, 9, dtype=bf16)],
        ),
    }


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    "name",
    [
        "group_rational",
        "dwconv2d",
        "inception_dwconv2d",
        "s4d_kernel",
        "fftconv",
        "batch_norm_add",
        "batch_norm_se",
        "neighborhood_attention_2d_bias",
    ],
)
def test_inductor_runs_the_traced_kernels_like_eager(name):
    """On a GPU: torch.compile (Inductor, fullgraph, static shapes) of the op - its kernels traced, compiled and
    launched by Inductor - gives the eager output and gradients (the same kernels; the autotuner may pick other
    tiles, so reductions may add in another order)."""
    fn, inputs = _gpu_cases()[name]
    results = []
    for run in (fn, torch.compile(fn, fullgraph=True, dynamic=False)):
        leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
        y = run(*leaves)
        grads = torch.autograd.grad(y, leaves, torch.full_like(y, 0.5))
        results.append((y, *grads))
    for eager, compiled in zip(*results, strict=True):
        assert_relative_error(compiled.float(), eager.float(), 1e-2 if eager.dtype == torch.bfloat16 else 1e-4)
