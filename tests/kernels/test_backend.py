"""Backend selection (zoo/kernels/_backend.py): argument > ZOO_BACKEND (read per call) > auto; then the Triton
dispatch every op shares (registered op / launcher / autograd.Function) and the one set of Triton dtypes."""

from __future__ import annotations

import dataclasses
import itertools
import math
import types
from collections.abc import Callable

import pytest
import torch

import zoo.kernels._backend as backend_module
from tests.helpers import DEVICE
from zoo.kernels import fftconv, neighborhood, rational, ssm
from zoo.kernels._backend import cdiv, check_triton_dtypes, requested_backend, resolve_backend, tl, triton
from zoo.kernels.dwconv import ops as dwconv


def test_auto_picks_reference_on_cpu_and_triton_on_cuda(monkeypatch):
    monkeypatch.delenv("ZOO_BACKEND", raising=False)
    assert resolve_backend("auto", torch.empty(1)) == "torch"  # never the interpreter by accident
    assert resolve_backend("auto", torch.empty(1, device="meta")) == "torch"
    if torch.cuda.is_available():
        assert resolve_backend("auto", torch.empty(1, device="cuda")) == "triton"


def test_argument_beats_environment(monkeypatch):
    monkeypatch.setenv("ZOO_BACKEND", "triton")
    assert resolve_backend("torch", torch.empty(1)) == "torch"
    monkeypatch.setenv("ZOO_BACKEND", "torch")
    assert requested_backend("triton") == "triton"


def test_environment_is_read_at_every_call(monkeypatch):
    monkeypatch.setenv("ZOO_BACKEND", "torch")
    assert requested_backend() == "torch"
    monkeypatch.setenv("ZOO_BACKEND", "triton")
    assert requested_backend() == "triton"
    monkeypatch.setenv("ZOO_BACKEND", "")
    assert requested_backend() == "auto"
    monkeypatch.delenv("ZOO_BACKEND")
    assert requested_backend() == "auto"


def test_environment_selects_the_interpreter_on_cpu(monkeypatch):
    monkeypatch.setattr(backend_module, "INTERPRETER", True)
    monkeypatch.setenv("ZOO_BACKEND", "TRITON")  # case-insensitive
    assert resolve_backend("auto", torch.empty(1)) == "triton"


def test_unknown_names_are_errors(monkeypatch):
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'torch', 'triton'\), got 'cuda'"):
        requested_backend("cuda")
    monkeypatch.setenv("ZOO_BACKEND", "fast")
    with pytest.raises(ValueError, match="environment variable ZOO_BACKEND must be one of"):
        requested_backend()


def test_triton_where_it_cannot_run(monkeypatch):
    monkeypatch.delenv("ZOO_BACKEND", raising=False)
    monkeypatch.setattr(backend_module, "INTERPRETER", False)
    with pytest.raises(ValueError, match="needs a CUDA tensor, got a CPU tensor"):
        resolve_backend("triton", torch.empty(1))
    with pytest.raises(ValueError, match="got device 'meta'"):
        resolve_backend("triton", torch.empty(1, device="meta"))
    monkeypatch.setattr(backend_module, "HAS_TRITON", False)
    with pytest.raises(ValueError, match="Triton is not installed"):
        resolve_backend("triton", torch.empty(1))


@pytest.fixture
def fake_gpu(monkeypatch):
    """``fake_gpu(capability, hip=False)``: CUDA device 0 reports that compute capability (and a ROCm build of
    torch with ``hip``), with an empty per-device table of :func:`unsupported_gpu`."""
    monkeypatch.delenv("ZOO_BACKEND", raising=False)
    monkeypatch.setattr(backend_module, "HAS_TRITON", True)

    def fake(capability: tuple[int, int], hip: bool = False) -> types.SimpleNamespace:
        monkeypatch.setattr(backend_module, "_GPU_SUPPORT", {})
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "Test GPU")
        monkeypatch.setattr(torch.version, "hip", "7.0" if hip else None)
        # resolve_backend reads only the device and dtype of its tensor
        return types.SimpleNamespace(device=torch.device("cuda", 0), dtype=torch.bfloat16)

    return fake


@pytest.mark.parametrize("capability", [(8, 0), (8, 9), (9, 0), (10, 0)])
def test_auto_runs_triton_on_nvidia_gpus_from_ampere_on(fake_gpu, capability):
    tensor = fake_gpu(capability)
    assert backend_module.unsupported_gpu(0) is None
    assert resolve_backend("auto", tensor) == "triton"
    assert resolve_backend("triton", tensor) == "triton"


@pytest.mark.parametrize(
    ("capability", "hip", "reason"),
    [
        ((7, 5), False, r"Test GPU \(compute capability 7\.5; Triton runs on NVIDIA GPUs of 8\.0 and newer\)"),
        ((7, 0), False, r"Test GPU \(compute capability 7\.0; Triton runs on NVIDIA GPUs of 8\.0 and newer\)"),
        ((9, 4), True, r"Test GPU \(an AMD GPU: the kernels hold NVIDIA inline PTX\)"),
    ],
)
def test_auto_runs_the_reference_on_gpus_the_kernels_do_not_support(fake_gpu, capability, hip, reason):
    """A T4 (7.5), a V100 (7.0) or an AMD GPU: ``auto`` runs the reference, ``triton`` is an error that says why
    and what to use instead."""
    tensor = fake_gpu(capability, hip)
    assert resolve_backend("auto", tensor) == "torch"
    with pytest.raises(ValueError, match=f"backend='triton' cannot run on {reason}; use backend='torch'"):
        resolve_backend("triton", tensor)


@pytest.mark.parametrize("reason", ["Test GPU (compute capability 7.5; ...)", ""])
def test_the_gpu_check_is_a_constant_under_torch_compile(monkeypatch, reason):
    """torch.compile traces the ops' Python wrappers, resolve_backend included: the per-device answer must be a
    constant of the graph, not a call it traces (the real one asks torch.cuda for the device's name, which it cannot
    trace; the stand-in makes such a call too). fullgraph=True: any break is an error."""
    monkeypatch.setattr(backend_module, "_GPU_SUPPORT", {})
    monkeypatch.setattr(backend_module, "_why_unsupported", lambda index: reason + "" * torch.get_num_threads())

    def pick(x):
        return x + 1 if backend_module.unsupported_gpu(0) else x - 1

    try:
        assert torch.compile(pick, fullgraph=True, backend="eager")(torch.zeros(1)).item() == (1.0 if reason else -1.0)
    finally:
        torch._dynamo.reset()


def test_no_gpu_to_ask_on_a_machine_without_one(monkeypatch):
    """Fake CUDA tensors traced on a machine without a GPU (tests/kernels/test_traced_ops.py): nothing to ask, the
    kernels' path is traced."""
    monkeypatch.setattr(backend_module, "_GPU_SUPPORT", {})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert backend_module.unsupported_gpu(0) is None


@pytest.mark.gpu
def test_the_gpu_under_test_runs_the_kernels():
    assert backend_module.unsupported_gpu(torch.cuda.current_device()) is None


# ------------------------------------------------------------------------------------------- the Triton dispatch
#
# Every op's public function runs its Triton path through `dispatch_triton`: the registered op while compiling,
# the forward launcher when no gradient is needed, the autograd.Function otherwise.


@dataclasses.dataclass(frozen=True)
class OpCase:
    """One op's public function on the Triton backend and the names of what it hands to ``dispatch_triton``."""

    name: str
    module: types.ModuleType
    make: Callable[[torch.Generator], list[torch.Tensor]]  # the tensor arguments, float32 on DEVICE
    call: Callable[[list[torch.Tensor]], torch.Tensor]  # the public function with backend="triton"
    function: str  # the module's autograd.Function
    launcher: str  # the module's function dispatch_triton calls on the no-gradient path
    op: str  # "torch.ops.zoo.<name>", or the module's function that calls the registered op

    def op_owner(self) -> tuple[object, str]:
        """(object, attribute) of the registered-op path, for monkeypatching."""
        prefix = "torch.ops.zoo."
        if self.op.startswith(prefix):
            return torch.ops.zoo, self.op[len(prefix) :]
        return self.module, self.op


def _randn(gen: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return (scale * torch.randn(shape, generator=gen)).to(DEVICE)


def _s4d_params(gen: torch.Generator) -> list[torch.Tensor]:
    log_dt = torch.rand(2, generator=gen) * (math.log(0.1) - math.log(0.001)) + math.log(0.001)
    log_A_real = torch.rand(2, 4, generator=gen) - 1.0
    A_imag = math.pi * torch.arange(4.0).expand(2, 4) + torch.randn(2, 4, generator=gen)
    return [t.to(DEVICE) for t in (log_dt, torch.randn(2, 4, 2, generator=gen), log_A_real, A_imag)]


OP_CASES = [
    OpCase(
        "group_rational",
        rational,
        lambda g: [_randn(g, 2, 16), _randn(g, 1, 6, scale=0.5), _randn(g, 2, 4, scale=0.5)],
        lambda t: rational.group_rational(*t, backend="triton"),
        "_GroupRationalFunction",
        "group_rational_forward",
        "torch.ops.zoo.group_rational",
    ),
    OpCase(
        "dwconv2d",
        dwconv,
        lambda g: [_randn(g, 1, 4, 6, 6), _randn(g, 4, 1, 3, 3), _randn(g, 4)],
        lambda t: dwconv.dwconv2d(*t, backend="triton"),
        "_DwConv2dFunction",
        "dwconv2d_forward",
        "torch.ops.zoo.dwconv2d",
    ),
    OpCase(
        "inception_dwconv2d",
        dwconv,
        lambda g: [
            _randn(g, 1, 8, 6, 6),
            _randn(g, 2, 1, 3, 3),
            _randn(g, 2),
            _randn(g, 2, 1, 1, 5),
            _randn(g, 2),
            _randn(g, 2, 1, 5, 1),
            _randn(g, 2),
        ],
        lambda t: dwconv.inception_dwconv2d(*t, backend="triton"),
        "_InceptionFunction",
        "inception_dwconv2d_forward",
        "torch.ops.zoo.inception_dwconv2d",
    ),
    OpCase(
        "fftconv",
        fftconv,
        lambda g: [_randn(g, 1, 2, 8), _randn(g, 2, 4), _randn(g, 2), _randn(g, 1, 2, 8), _randn(g, 1, 2, 8)],
        lambda t: fftconv.fftconv(t[0], t[1], t[2], activation="gelu", gate_in=t[3], gate_out=t[4], backend="triton"),
        "_FFTConvFunction",
        "_fftconv_forward_in_op_order",
        "_fftconv_traced",
    ),
    OpCase(
        "s4d_kernel",
        ssm,
        _s4d_params,
        lambda t: ssm.s4d_kernel(*t, L=8, backend="triton"),
        "_S4DKernelFunction",
        "s4d_kernel_forward",
        "torch.ops.zoo.s4d_kernel",
    ),
    OpCase(
        "neighborhood_attention",
        neighborhood,
        lambda g: [_randn(g, 1, 8, 1, 16), _randn(g, 1, 8, 1, 16), _randn(g, 1, 8, 1, 16), _randn(g, 1, 5)],
        lambda t: neighborhood.neighborhood_attention(t[0], t[1], t[2], 3, rpb=t[3], backend="triton"),
        "_NAFunction",
        "_na_inference",
        "_na_traced",
    ),
]


def _inputs(case: OpCase) -> list[torch.Tensor]:
    return case.make(torch.Generator().manual_seed(0))


# What the public function runs in: (compiling, grad mode, which tensor arguments require grad) -> path.
SITUATIONS = {
    "compiling": (True, True, "first", "op"),
    "no_grad": (False, False, "all", "launcher"),
    "nothing_requires_grad": (False, True, "none", "launcher"),
    "first_requires_grad": (False, True, "first", "function"),
    "last_requires_grad": (False, True, "last", "function"),  # a weight, bias, rpb, A_imag: not only x
}


@pytest.mark.parametrize("situation", list(SITUATIONS))
@pytest.mark.parametrize("case", OP_CASES, ids=lambda c: c.name)
def test_dispatch_picks_the_path(case, situation, monkeypatch):
    compiling, grad_mode, requiring, expected = SITUATIONS[situation]
    calls = []

    def stub(path):
        def run(*args):
            calls.append(path)
            return path

        return run

    monkeypatch.setattr(case.module, case.launcher, stub("launcher"))
    monkeypatch.setattr(case.module, case.function, type("FunctionStub", (), {"apply": staticmethod(stub("function"))}))
    monkeypatch.setattr(*case.op_owner(), stub("op"))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: compiling)
    tensors = _inputs(case)
    chosen = {"all": tensors, "none": [], "first": tensors[:1], "last": tensors[-1:]}[requiring]
    for t in chosen:
        t.requires_grad_(True)
    with torch.set_grad_enabled(grad_mode):
        result = case.call(tensors)
    assert calls == [expected]
    assert result == expected


@pytest.mark.parametrize("how", ["no_grad", "nothing_requires_grad"])
@pytest.mark.parametrize("case", OP_CASES, ids=lambda c: c.name)
def test_no_gradient_path_matches_autograd_path(case, how, monkeypatch):
    """The launcher path (group_rational's is new) gives the autograd path's result, with no autograd node."""
    function = getattr(case.module, case.function)
    applied = []

    class Spy:
        @staticmethod
        def apply(*args):
            applied.append(case.function)
            return function.apply(*args)

    monkeypatch.setattr(case.module, case.function, Spy)
    tensors = _inputs(case)
    leaves = [t.clone().requires_grad_(True) for t in tensors]
    expected = case.call(leaves)
    assert applied == [case.function]
    assert type(expected.grad_fn).__name__ == f"{case.function}Backward"
    if how == "no_grad":
        with torch.no_grad():
            result = case.call(leaves)
    else:
        result = case.call(tensors)
    assert applied == [case.function]  # not applied again
    assert result.grad_fn is None and not result.requires_grad
    torch.testing.assert_close(result, expected.detach(), rtol=0, atol=0)


def test_one_definition_of_the_triton_dtypes():
    for module in (rational, dwconv, fftconv, neighborhood):
        assert module.TRITON_DTYPES is backend_module.TRITON_DTYPES
    message = (
        r"the Triton thing takes u in \['torch.float16', 'torch.bfloat16', 'torch.float32'\], got torch.float64; "
        r"use backend='torch' for other dtypes"
    )
    with pytest.raises(TypeError, match=message):
        check_triton_dtypes("the Triton thing takes", {"D": None, "u": torch.empty(1, dtype=torch.float64)})
    check_triton_dtypes("the Triton thing takes", {"D": None, "u": torch.empty(1, dtype=torch.bfloat16)})


def test_every_op_is_covered():
    """Each op's autograd.Function has a case above: a new op gets its dispatch tested."""
    modules = (rational, dwconv, fftconv, ssm, neighborhood)
    functions = {
        (module.__name__, name)
        for module in modules
        for name, obj in vars(module).items()
        if isinstance(obj, type) and issubclass(obj, torch.autograd.Function) and obj.__module__ == module.__name__
    }
    assert functions == {(case.module.__name__, case.function) for case in OP_CASES}


def test_sm_count_asks_a_cuda_device_and_stands_in_elsewhere(monkeypatch):
    """Grids sized to the GPU: a CUDA device's own SM count (asked once), the stand-in (an H200's by default)
    for CPU tensors and for CUDA tensors traced without a GPU."""
    monkeypatch.setattr(backend_module, "_SM_COUNTS", {})  # on a GPU, earlier launches cached its count
    cpu = torch.device("cpu")
    assert backend_module.sm_count(cpu) == backend_module.H200_SMS == 132
    assert backend_module.sm_count(cpu, 3) == 3
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert backend_module.sm_count(torch.device("cuda", 0), 7) == 7
    asked = []

    def properties(device):
        asked.append(device)
        return types.SimpleNamespace(multi_processor_count=78)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", properties)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(backend_module, "_SM_COUNTS", {})
    gpu = torch.device("cuda", 1)
    assert backend_module.sm_count(gpu) == backend_module.sm_count(gpu, 3) == 78
    assert backend_module.sm_count(torch.device("cuda")) == 78  # the current GPU, index 1: asked already
    assert asked == [gpu]  # cached per GPU


@triton.jit
def _fill_block_kernel(out_ptr, n, BLOCK: tl.constexpr):
    """out[:n] = BLOCK: the output tells which configuration ran."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, tl.full([BLOCK], BLOCK, tl.int32), mask=offs < n)


def _tuned_fill(pre_hook=None):
    """An autotuned kernel whose benchmark (no GPU here) times BLOCK 8 at 2 ms and BLOCK 16 at 1 ms: it picks 16."""
    configs = [triton.Config({"BLOCK": b}, pre_hook=pre_hook) for b in (8, 16)]
    timings = itertools.cycle((2.0, 1.0))  # the autotuner benchmarks its configurations in order

    def do_bench(kernel_call, quantiles=None, **kwargs):
        kernel_call()
        ms = next(timings)
        return [ms] * len(quantiles) if quantiles else ms

    return triton.autotune(configs, key=["n"], do_bench=do_bench)(_fill_block_kernel)


def _counting_runs(tuner, monkeypatch) -> list:
    runs, run = [], tuner.run
    monkeypatch.setattr(tuner, "run", lambda *args, **kwargs: (runs.append(1), run(*args, **kwargs))[1])
    return runs


def _grid(meta):
    return (cdiv(20, meta["BLOCK"]),)


def test_an_autotuned_kernel_is_launched_with_the_autotuners_choice_asked_once_per_key(monkeypatch):
    tuner = _tuned_fill()
    runs = _counting_runs(tuner, monkeypatch)
    launch = backend_module.launchable(tuner)
    assert backend_module.launchable(tuner) is launch  # one per kernel
    out = torch.zeros(20, dtype=torch.int32, device=DEVICE)
    launch[_grid](out, 20)
    chosen = tuner.best_config.kwargs["BLOCK"]
    assert chosen == 16 and len(runs) == 1 and (out == chosen).all()
    out.zero_()
    launch[_grid](out, 20)  # the same key: straight to the kernel, with the chosen configuration
    assert len(runs) == 1 and (out == chosen).all()
    launch[_grid](torch.zeros(20, dtype=torch.int32, device=DEVICE), 19)  # another value of the key argument
    assert len(runs) == 2
    launch[_grid](torch.zeros(20, dtype=torch.float32, device=DEVICE), 20)  # another dtype
    assert len(runs) == 3
    launch[_grid](out, 20)
    assert len(runs) == 3 and (out == chosen).all()


def test_an_autotuned_configuration_with_a_pre_hook_always_goes_through_the_autotuner(monkeypatch):
    hooks = []
    tuner = _tuned_fill(pre_hook=lambda nargs: hooks.append(1))
    runs = _counting_runs(tuner, monkeypatch)
    out = torch.zeros(20, dtype=torch.int32, device=DEVICE)
    backend_module.launchable(tuner)[_grid](out, 20)
    before = len(hooks)
    backend_module.launchable(tuner)[_grid](out, 20)  # the same key, through the autotuner: its hook runs
    assert len(runs) == 2 and len(hooks) == before + 1 and (out == tuner.best_config.kwargs["BLOCK"]).all()


def test_an_autotuned_kernel_with_one_configuration_never_asks_the_autotuner(monkeypatch):
    tuner = triton.autotune([triton.Config({"BLOCK": 16})], key=["n"])(_fill_block_kernel)
    runs = _counting_runs(tuner, monkeypatch)
    out = torch.zeros(20, dtype=torch.int32, device=DEVICE)
    for n in (20, 19):
        backend_module.launchable(tuner)[_grid](out, n)
    assert not runs and (out == 16).all()


def test_once_differentiable_runs_the_backward_as_is_and_refuses_a_second_differentiation():
    grad_modes = []

    class Double(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        @backend_module.once_differentiable
        def backward(ctx, grad):
            grad_modes.append(torch.is_grad_enabled())
            return grad * 2

    x = torch.randn(3, requires_grad=True)
    (grad,) = torch.autograd.grad(Double.apply(x).sum(), x)
    assert torch.equal(grad, torch.full((3,), 2.0)) and grad_modes == [False]
    upstream = torch.ones(3, requires_grad=True)  # a gradient that is itself differentiable
    (grad,) = torch.autograd.grad(Double.apply(x), x, upstream, create_graph=True)  # torch's wrapper: no_grad
    assert torch.equal(grad, torch.full((3,), 2.0)) and grad_modes == [False, False]
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()


def test_a_table_derived_from_a_weight_is_rebuilt_when_the_weight_moves_and_while_a_graph_captures(monkeypatch):
    """Cached until an in-place update moves the weight's version; built on every call (nothing cached) while a
    CUDA graph captures, so that the graph records the build."""
    weight = torch.zeros(3)
    builds = []

    def build():
        builds.append(weight._version)
        return weight * 2

    first = backend_module.derived_from_weight(weight, "test", build)
    assert backend_module.derived_from_weight(weight, "test", build) is first and len(builds) == 1
    weight.add_(1)
    assert torch.equal(backend_module.derived_from_weight(weight, "test", build), weight * 2) and len(builds) == 2
    monkeypatch.setattr(backend_module, "capturing", lambda tensor: True)
    captured = [backend_module.derived_from_weight(weight, "test", build) for _ in range(2)]
    assert len(builds) == 4 and captured[0] is not captured[1]


def test_a_grown_zero_buffer_keeps_the_one_it_replaces(monkeypatch):
    """A captured CUDA graph keeps the address of the buffer it saw: growing the cache must not free it."""
    monkeypatch.setattr(backend_module, "_REPLACED", [])
    cache, cpu = {}, torch.device("cpu")
    small = backend_module.cached_zeros(cache, "test", 3, 4, torch.int32, cpu)
    assert small.numel() == 4 and backend_module.cached_zeros(cache, "test", 4, 4, torch.int32, cpu) is small
    large = backend_module.cached_zeros(cache, "test", 5, 4, torch.int32, cpu)
    assert large.numel() == 5 and cache["test"] is large and not large.any()
    assert len(backend_module._REPLACED) == 1 and backend_module._REPLACED[0] is small


@triton.jit
def _int32_product_kernel(out_ptr, a, b):
    tl.store(out_ptr, a * b)


@pytest.mark.skipif(not backend_module.INTERPRETER, reason="a setting of Triton's interpreter")
def test_the_interpreter_skips_only_overflow_checks_it_would_discard():
    """``skip_discarded_overflow_checks`` (at import under the interpreter) turned the interpreter's overflow checks
    off, and its premise holds: with them on, as Triton ships them, an int32 product past 2**31 does not stop the
    kernel (the check is computed, then dropped without ``debug``); it wraps as on a GPU, either way."""
    import dataclasses

    from triton.runtime.interpreter import interpreter_builder

    options = interpreter_builder.options
    assert not options.debug and not options.sanitize_overflow
    a = b = 65537  # a * b = 2**32 + 2**17 + 1
    wrapped = (a * b + 2**31) % 2**32 - 2**31
    assert wrapped == 2**17 + 1
    for sanitize in (True, False):
        out = torch.zeros(1, dtype=torch.int32)
        interpreter_builder.options = dataclasses.replace(options, sanitize_overflow=sanitize)
        try:
            _int32_product_kernel[(1,)](out, a, b)
        finally:
            interpreter_builder.options = options
        assert out.item() == wrapped


@triton.jit
def _add_three(x):
    return x + 3


@triton.jit
def _helper_calls_kernel(out_ptr, helper: tl.constexpr):
    offsets = tl.arange(0, 4)
    x = offsets * 0
    for _ in tl.static_range(3):
        x = _add_three(x)
    for _ in tl.static_range(2):
        x = helper(x)
    tl.store(out_ptr + offsets, x)


_CORE_HELPER = """
import triton
from triton.language import core


@triton.jit
def times_arange(x):
    return x * core.arange(0, 4)
"""


@pytest.mark.skipif(not backend_module.INTERPRETER, reason="a setting of Triton's interpreter")
def test_the_interpreter_patches_the_language_once_per_launch(monkeypatch, tmp_path):
    """``skip_repeated_language_patches`` (at import under the interpreter): a launch patches ``triton.language``
    once, its helpers' calls not again; a helper whose module uses a language module the launch's patch left alone
    (here ``triton.language.core``, which this module does not hold) gets it patched, once a launch; after the
    launch its builtins are Triton's own again."""
    import importlib
    import sys

    from triton.runtime import interpreter

    assert getattr(interpreter._patch_lang, "_zoo_wrapped", False)
    patched, patch_lang = [], interpreter._patch_lang.__wrapped__

    def counting(fn):
        patched.append(fn.__name__)
        return patch_lang(fn)

    monkeypatch.setattr(interpreter, "_patch_lang", counting)
    assert backend_module.skip_repeated_language_patches()
    out = torch.zeros(4, dtype=torch.int32)
    _helper_calls_kernel[(1,)](out, _add_three)
    assert out.tolist() == [15] * 4 and patched == ["_helper_calls_kernel"]  # not again for the 5 helper calls

    (tmp_path / "zoo_core_helper.py").write_text(_CORE_HELPER)
    monkeypatch.syspath_prepend(str(tmp_path))
    core_helper = importlib.import_module("zoo_core_helper")
    monkeypatch.delitem(sys.modules, "zoo_core_helper")
    patched.clear()
    _helper_calls_kernel[(1,)](out, core_helper.times_arange)
    assert out.tolist() == [0, 9, 36, 81] and patched == ["_helper_calls_kernel", "times_arange"]  # once a launch
    assert tl.core.is_builtin(tl.arange)  # the launch's patch restored
