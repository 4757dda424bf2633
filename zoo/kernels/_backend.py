"""The one place that decides whether an op runs its Triton kernel or its PyTorch reference.

Backends:

* ``"torch"``: the plain-PyTorch reference (any device; autograd through PyTorch).
* ``"triton"``: the hand-written Triton kernels. Needs a CUDA tensor, or a CPU tensor with the Triton
  interpreter switched on (``TRITON_INTERPRET=1`` set before ``zoo.kernels`` is imported).
* ``"auto"``: Triton when the tensor is on a CUDA GPU the kernels run on (NVIDIA, compute capability 8.0 and
  newer: :func:`unsupported_gpu`) and Triton is installed, the reference otherwise. The interpreter is never picked
  by ``auto``: it is only used when ``"triton"`` is asked for explicitly.

Precedence: an explicit ``backend=`` argument (anything but ``"auto"``), then the environment variable
``ZOO_BACKEND`` (read at every call), then ``auto``. Asking for ``triton`` where it cannot run raises a
``ValueError``; there is never a silent fallback.

Once an op's backend resolved to ``"triton"``, :func:`dispatch_triton` picks how its Triton path runs: the
registered custom op under ``torch.compile``, the forward launcher when no gradient is needed, the op's
``torch.autograd.Function`` otherwise. :data:`TRITON_DTYPES` are the dtypes the kernels take.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import weakref
from collections.abc import Callable, Hashable, Mapping
from typing import Any

import torch

BACKENDS = ("auto", "torch", "triton")
ENV_VAR = "ZOO_BACKEND"
# The dtypes the Triton kernels take (the S4D kernel, fp32 arithmetic only, takes float32 alone). ``auto`` runs the
# reference for any other dtype; ``triton`` rejects it with a TypeError (:func:`check_triton_dtypes`).
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

try:  # Triton ships with PyTorch on Linux; elsewhere the reference still works.
    import triton
    import triton.language as tl
    from triton import knobs as triton_knobs
    from triton.language.extra.cuda import libdevice

    HAS_TRITON = True
except ImportError:  # tests/test_without_triton.py hides Triton to exercise this
    HAS_TRITON = False

    class _MissingTriton:
        """Stands in for ``triton`` / ``triton.language`` so kernel modules import without Triton.

        Decorators return the function unchanged; any launch is prevented by :func:`resolve_backend`.
        """

        class constexpr:  # noqa: N801 - Triton's name; module constants are built with it at import
            def __init__(self, value: Any = None) -> None:
                self.value = value

        def __getattr__(self, name: str) -> Any:
            return self

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            if len(args) == 1 and callable(args[0]) and not kwargs:
                return args[0]
            return self

    triton = _MissingTriton()  # type: ignore[assignment]
    tl = _MissingTriton()  # type: ignore[assignment]
    libdevice = _MissingTriton()  # type: ignore[assignment]

# triton.jit reads TRITON_INTERPRET when a kernel is defined, i.e. when the kernel modules are imported.
# Record it at that moment: later changes to the variable do not change what the kernels are.
INTERPRETER = HAS_TRITON and os.environ.get("TRITON_INTERPRET", "0") == "1"


def skip_discarded_overflow_checks() -> bool:
    """Stop Triton's interpreter from computing integer-overflow checks that it then throws away.

    With its options' ``sanitize_overflow`` (on by default) the interpreter widens every 32-bit integer add, sub
    and mul of a kernel to 64 bits and compares the result with the int32 range, then hands the comparison to
    ``device_assert``, which drops it unless ``debug`` is set; the interpreter's options never set it (a GPU build
    drops the checks the same way). That dead work was about 40% of a neighborhood-attention test's time. Called
    once at import under the interpreter; returns whether it changed the options (False where ``debug`` is on, or
    where this Triton keeps them elsewhere: they are its internal state,
    ``triton.runtime.interpreter.interpreter_builder.options``; tests/kernels/test_backend.py checks the premise)."""
    import dataclasses

    from triton.runtime import interpreter

    builder = getattr(interpreter, "interpreter_builder", None)
    options = getattr(builder, "options", None)
    if not dataclasses.is_dataclass(options) or getattr(options, "debug", True):
        return False
    if not getattr(options, "sanitize_overflow", False):
        return False
    builder.options = dataclasses.replace(options, sanitize_overflow=False)
    return True


def skip_repeated_language_patches() -> bool:
    """Stop Triton's interpreter from re-patching ``triton.language`` at every call of a ``@triton.jit`` helper.

    The interpreter runs a kernel with the builtins of ``triton.language`` (the modules the kernel's globals hold:
    ``tl``, ``tl.core``) replaced by its own, for the whole launch, and restores them after it. A helper called from
    the kernel (an ``InterpretedFunction`` call) patches them again: about a millisecond scanning the modules'
    members to replace nothing (the builtins are replaced already; the scope it records is never restored), about
    30% of a neighborhood-attention test's time. This wraps the interpreter's ``_patch_lang``: while a launch's
    patch is in force, a call for a function whose language modules are patched already (by the launch, or by a
    helper of it that used another one, such as Triton's own ``tl.zeros``) returns an empty scope; every other call
    patches as before. Called once at import under the interpreter; returns whether it installed the wrapper
    (False where this Triton lacks ``_patch_lang`` or ``_LangPatchScope``, its internal state;
    tests/kernels/test_backend.py checks the premise)."""
    from triton.runtime import interpreter

    patch_lang = getattr(interpreter, "_patch_lang", None)
    scope_type = getattr(interpreter, "_LangPatchScope", None)
    if patch_lang is None or scope_type is None or getattr(patch_lang, "_zoo_wrapped", False):
        return False
    language = (tl, tl.core)
    launch: list[frozenset[int]] = []  # the language modules of the launch whose patch is in force, if one is
    langs_of: dict[Any, frozenset[int]] = {}

    def langs(fn: Any) -> frozenset[int]:
        found = langs_of.get(fn)
        if found is None:
            found = langs_of[fn] = frozenset(id(v) for v in fn.__globals__.values() if any(v is m for m in language))
        return found

    def patch_once(fn: Any) -> Any:
        needed = langs(fn)
        if launch and needed <= launch[0]:
            return scope_type()  # an empty scope: nothing to patch, nothing to restore
        scope = patch_lang(fn)
        if launch:  # a helper that uses a module the launch's patch left alone: patched as before, and for the
            launch[0] |= needed  # rest of the launch (the interpreter never restores a helper's scope)
            return scope
        launch.append(needed)
        restore = scope.restore

        def restore_and_leave() -> None:
            launch.clear()
            restore()

        scope.restore = restore_and_leave
        return scope

    patch_once._zoo_wrapped = True
    patch_once.__wrapped__ = patch_lang
    interpreter._patch_lang = patch_once
    return True


if INTERPRETER:
    skip_discarded_overflow_checks()
    skip_repeated_language_patches()


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) of two non-negative ints, for launchers: ``triton.cdiv`` is a Triton constexpr function, about
    1.4 us per call from host code (this machine), several per launch. The same formula as Triton's, so that it also
    holds for the interpreter's tensors that reach a grid function (its ``//`` truncates toward zero)."""
    return (a + b - 1) // b


def next_power_of_2(n: int) -> int:
    """The smallest power of two >= ``n`` (0 for 0), for launchers: ``triton.next_power_of_2`` without its
    constexpr-function call overhead (see :func:`cdiv`)."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


def _check_name(backend: str, source: str) -> str:
    if not isinstance(backend, str) or backend.lower() not in BACKENDS:
        raise ValueError(f"{source} must be one of {BACKENDS}, got {backend!r}")
    return backend.lower()


def requested_backend(backend: str = "auto") -> str:
    """The backend asked for, before looking at any tensor: the argument, else ``ZOO_BACKEND``, else auto. Called on
    every op call (twice on the CPU paths): the common spellings skip the validation (a few microseconds per call
    were a measurable share of small CPU convolutions)."""
    if not (isinstance(backend, str) and backend in BACKENDS):
        backend = _check_name(backend, "backend")
    if backend != "auto":
        return backend
    env = os.environ.get(ENV_VAR)
    if not env or env == "auto":
        return "auto"
    return _check_name(env, f"environment variable {ENV_VAR}")


# The oldest NVIDIA GPUs the kernels run on: Triton supports compute capability 8.0 and newer (its README's
# "Supported Hardware"), and the kernels' bf16 arithmetic and tensor-core paths assume it. Older GPUs (T4, V100)
# and AMD GPUs (ROCm builds of torch also call their devices "cuda"; the kernels hold NVIDIA inline PTX) run the
# references under ``auto``.
MIN_CAPABILITY = (8, 0)


_GPU_SUPPORT: dict[int, str] = {}  # device index -> why the kernels cannot run there ("" where they can)


@torch.compiler.assume_constant_result  # a constant to torch.compile, which traces the ops' Python wrappers
def _gpu_support(index: int) -> str:
    reason = _GPU_SUPPORT.get(index)
    if reason is None:
        reason = _GPU_SUPPORT[index] = _why_unsupported(index)
    return reason


def _why_unsupported(index: int) -> str:
    if not torch.cuda.is_available():  # fake CUDA tensors on a machine without a GPU (tracing): nothing to ask
        return ""
    if torch.version.hip is not None:
        return f"{torch.cuda.get_device_name(index)} (an AMD GPU: the kernels hold NVIDIA inline PTX)"
    capability = torch.cuda.get_device_capability(index)
    if capability < MIN_CAPABILITY:
        major, minor = capability
        return (
            f"{torch.cuda.get_device_name(index)} (compute capability {major}.{minor}; Triton runs on NVIDIA GPUs of "
            f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} and newer)"
        )
    return ""


def unsupported_gpu(index: int) -> str | None:
    """Why the Triton kernels cannot run on CUDA device ``index`` (a phrase for an error message), or None where
    they can (and on a machine without a GPU, where CUDA tensors are fake ones being traced). Asked once per device
    and process: every op call asks; under ``torch.compile`` the answer is a constant of the graph."""
    return _gpu_support(index) or None


def _device_index(device: torch.device) -> int:
    return torch.cuda.current_device() if device.index is None else device.index


def resolve_backend(backend: str, tensor: torch.Tensor, triton_dtypes: tuple[torch.dtype, ...] | None = None) -> str:
    """Return ``"triton"`` or ``"torch"``: the backend that will run an op on ``tensor``.

    ``triton_dtypes``: the dtypes the op's kernels take; ``auto`` picks ``"torch"`` for any other dtype (e.g.
    float64 on CUDA), on GPUs the kernels do not run on (:func:`unsupported_gpu`) and on CPU tensors, where the
    ops that have a CPU path (docs/design.md §17) take it in place of the reference. Raises ``ValueError`` when
    ``"triton"`` is asked for but cannot run on this device.
    """
    choice = requested_backend(backend)
    if choice == "auto":
        device = tensor.device
        if not HAS_TRITON or device.type != "cuda" or _gpu_support(_device_index(device)):
            return "torch"
        return "triton" if triton_dtypes is None or tensor.dtype in triton_dtypes else "torch"
    if choice == "triton":
        check_triton_device(tensor.device)
    return choice


def check_triton_device(device: torch.device) -> None:
    """Raise ``ValueError`` unless tensors on ``device`` can go to a Triton launch: CUDA, or CPU under the
    interpreter."""
    if not HAS_TRITON:
        raise ValueError("backend='triton' was asked for, but Triton is not installed; use backend='torch'")
    if device.type == "cuda":
        reason = _gpu_support(_device_index(device))
        if reason:
            raise ValueError(f"backend='triton' cannot run on {reason}; use backend='torch'")
        return
    if device.type == "cpu" and INTERPRETER:
        return
    if device.type == "cpu":
        raise ValueError(
            "backend='triton' needs a CUDA tensor, got a CPU tensor. To run the Triton interpreter on the "
            "CPU, set TRITON_INTERPRET=1 before importing `zoo.kernels` (slow; meant for tests), or use "
            "backend='torch'."
        )
    raise ValueError(
        f"backend='triton' runs on CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), got device {str(device)!r}"
    )


def device_guard(device: torch.device):
    """Launch on ``device`` (Triton launches on the current CUDA device); a no-op context elsewhere and while
    tracing (:func:`tracing_kernels`: the compiled graph launches on its tensors' device)."""
    if device.type != "cuda" or tracing_kernels():
        return contextlib.nullcontext()
    return torch.cuda.device(device)


def check_float_tensor(name: str, t: object) -> torch.Tensor:
    """Raise ``TypeError`` unless ``t`` is a floating-point tensor; return it."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {t.dtype}")
    return t


def check_triton_dtypes(
    kernel_takes: str, tensors: Mapping[str, torch.Tensor | None], dtypes: tuple[torch.dtype, ...] = TRITON_DTYPES
) -> None:
    """Raise ``TypeError`` unless every tensor in ``tensors`` (name -> tensor; None is skipped) has a dtype in
    ``dtypes``. ``kernel_takes`` starts the message, e.g. ``"the Triton FFT convolution takes"``."""
    for name, t in tensors.items():
        if t is not None and t.dtype not in dtypes:
            raise TypeError(
                f"{kernel_takes} {name} in {[str(d) for d in dtypes]}, got {t.dtype}; use backend='torch' for other "
                "dtypes"
            )


def check_triton_out_dtype(kernel: str, out_dtype: torch.dtype | None) -> None:
    """Raise ``TypeError`` unless ``out_dtype`` (None: the input's dtype) is one the Triton kernels write;
    ``kernel`` names them in the message, e.g. ``"group-rational kernel"``."""
    if out_dtype is not None and out_dtype not in TRITON_DTYPES:
        raise TypeError(
            f"the Triton {kernel} writes out_dtype in {[str(d) for d in TRITON_DTYPES]}, got {out_dtype}; use "
            "backend='torch' for other dtypes"
        )


def dispatch_triton(
    *args: Any,
    op: Callable[..., Any],
    function: type[torch.autograd.Function],
    launcher: Callable[..., Any],
) -> Any:
    """Run an op's Triton path on ``args``; every op's public function calls this once its backend resolved to
    ``"triton"``. One of three runs:

    * ``op``, the registered op (``torch.ops.zoo.*``), while ``torch.compile`` traces: its registered autograd
      and fake implementation, and on CUDA its kernels in the compiled graph (:func:`triton_op`);
    * ``launcher``, the Triton forward launcher, when no gradient is needed (grad mode off, or no tensor in
      ``args`` requires grad): no autograd node to build, the fast inference path;
    * ``function.apply``, the op's ``torch.autograd.Function`` (calling the launchers directly, which skips two
      custom-op dispatches per call), otherwise.

    ``op``, ``launcher`` and ``function.apply`` all take ``args`` positionally and return the op's result; an op
    whose registered op or launcher orders its arguments differently or returns more (attention's log-sum-exp)
    passes a small adapter. The launchers validate the inputs, so a bad input raises the same error on the launcher
    and autograd paths.
    """
    if torch.compiler.is_compiling():
        return op(*args)
    if not torch.is_grad_enabled() or not any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
        return launcher(*args)
    return function.apply(*args)


def once_differentiable(backward: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.autograd.function.once_differentiable`` for a Function's ``backward``, without its cost in the usual
    case: a backward runs with grad mode off unless ``create_graph=True``, and then torch's wrapper (which runs the
    backward under ``no_grad`` and makes a second differentiation raise) has nothing to do but enter ``no_grad``
    (3-4 us of host time per call, scripts/host_time.py). With grad mode on, torch's wrapper runs."""
    guarded = torch.autograd.function.once_differentiable(backward)

    @functools.wraps(backward)
    def wrapper(ctx: Any, *grads: Any) -> Any:
        if torch.is_grad_enabled():
            return guarded(ctx, *grads)
        return backward(ctx, *grads)

    return wrapper


def capturing(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a CUDA tensor and the current stream is capturing a CUDA graph."""
    return tensor.is_cuda and torch.cuda.is_current_stream_capturing()


def cached_zeros(
    cache: dict, key: Hashable, size: int, minimum: int, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """``cache[key]``, a buffer of zeros of at least ``size`` elements (kernels keep it zero), allocated with
    max(size, minimum) elements when missing or too small. A buffer that a larger one replaces stays allocated
    (``_REPLACED``): a CUDA graph captured with it reads and writes its memory at every replay."""
    buffer = cache.get(key)
    if buffer is None or buffer.numel() < size:
        if buffer is not None:
            _REPLACED.append(buffer)
        buffer = cache[key] = torch.zeros(max(size, minimum), dtype=dtype, device=device)
    return buffer


_REPLACED: list[torch.Tensor] = []

# Tables derived from weights (the padded, pre-scaled attention bias): (id(weight), key) -> (weakref, version, table)
_DERIVED: dict[tuple[int, Hashable], tuple[weakref.ref, int, torch.Tensor]] = {}
_DERIVED_MAX = 64


def derived_from_weight(weight: torch.Tensor, key: Hashable, build: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``build()``, a tensor computed from ``weight`` for a kernel to read, kept until ``weight`` changes: cached per
    (weight object, ``key``) and rebuilt once the weight's version counter moves (an in-place update such as an
    optimiser step) or the weight is gone, so that an inference call launches no table-building ops. Inference
    tensors (no version counter) build every call, and so does a traced call (:func:`tracing_kernels`). At most
    ``_DERIVED_MAX`` tables, the oldest dropped first. While a CUDA graph captures (:func:`capturing`) it builds
    without caching, so that the graph records the build and each replay rebuilds from the weights it updated (a
    cached table would be read as it was at the capture)."""
    if tracing_kernels():
        return build()
    if capturing(weight):
        with torch.no_grad():
            return build()
    try:
        version = weight._version
    except RuntimeError:  # an inference tensor
        return build()
    slot = (id(weight), key)
    hit = _DERIVED.get(slot)
    if hit is not None and hit[0]() is weight and hit[1] == version:
        return hit[2]
    with torch.no_grad():
        table = build()
    _DERIVED.pop(slot, None)
    while len(_DERIVED) >= _DERIVED_MAX:
        _DERIVED.pop(next(iter(_DERIVED)))
    _DERIVED[slot] = (weakref.ref(weight), version, table)
    return table


# ----------------------------------------------------------------------------------------------------------------
# Registered ops that torch.compile traces into their kernels (issue 21)
# ----------------------------------------------------------------------------------------------------------------

TRACE_KERNELS_ENV_VAR = "ZOO_TRACE_KERNELS"
_TRACING_KERNELS = threading.local()


def tracing_kernels() -> bool:
    """True while a registered op's implementation is being traced into a compiled graph (see
    :func:`triton_op`): launchers then wrap their kernels (:func:`launchable`) and build per call what they
    otherwise cache across calls (tables derived from weights, zero buffers, ticket counters), since a cached
    tensor cannot enter a traced graph."""
    return getattr(_TRACING_KERNELS, "on", False)


# The SMs of an H100 / H200, the GPUs the ahead-of-time specs describe: the stand-in where there is no GPU to ask.
H200_SMS = 132
_SM_COUNTS: dict[torch.device, int] = {}


def sm_count(device: torch.device, stand_in: int = H200_SMS) -> int:
    """Streaming multiprocessors of a CUDA ``device`` (asked once per GPU; ``cuda`` without an index: the current
    one), for launchers that size their grids to fill the GPU; ``stand_in`` where there is no such GPU (CPU tensors
    under the interpreter, fake CUDA tensors traced without a GPU)."""
    sms = _SM_COUNTS.get(device)
    if sms is None:
        if device.type != "cuda" or not torch.cuda.is_available():
            return stand_in
        if device.index is None:  # the current GPU's (not cached under "cuda": the current GPU may change)
            return sm_count(torch.device("cuda", torch.cuda.current_device()), stand_in)
        sms = _SM_COUNTS[device] = torch.cuda.get_device_properties(device).multi_processor_count
    return sms


_TICKETS: dict[tuple, torch.Tensor] = {}


def ticket_counters(device: torch.device, size: int) -> torch.Tensor:
    """The int32 ticket counters of the one-launch reductions (the depthwise weight gradients, the neighborhood
    attention's bias gradient) on this device and stream.

    Each program of such a reduction writes its partial sums, then takes a ticket (one acq_rel atomic on its
    group's counter); the program that draws the last ticket adds the partials in a fixed order (deterministic)
    and resets the counter to zero. So the counters are zero between launches: allocated once (grown when a
    launch needs more groups), never cleared by a memset launch. Launches on one stream run in order and share
    them; each stream has its own. A traced call (``tracing_kernels``) allocates zeroed counters in its graph."""
    if tracing_kernels():
        return torch.zeros(size, dtype=torch.int32, device=device)
    stream = 0
    if device.type == "cuda":  # the raw stream handle, as Triton's launcher reads it (no Stream object per call)
        stream = torch._C._cuda_getCurrentRawStream(
            torch.cuda.current_device() if device.index is None else device.index
        )
    return cached_zeros(_TICKETS, (device, stream), size, 1024, torch.int32, device)


def launchable(kernel: Any) -> Any:
    """``kernel`` (a ``triton.jit`` function or ``triton.autotune`` wrapper) as the launcher should call it
    (``launchable(kernel)[grid](*args, **constexprs)``): ``torch.library.wrap_triton(kernel)`` while
    :func:`tracing_kernels`, so that the launch enters the graph as a Triton-kernel node which Inductor compiles and
    launches itself; an autotuned kernel through its :class:`TunedLaunch`; a compiled (not interpreted) kernel
    through its :class:`FastLaunch`; else (the interpreter) the kernel itself."""
    if tracing_kernels():
        return torch.library.wrap_triton(kernel)
    if HAS_TRITON and isinstance(kernel, triton.runtime.Autotuner):
        tuned = kernel.__dict__.get("_zoo_tuned_launch")
        if tuned is None:
            tuned = kernel._zoo_tuned_launch = TunedLaunch(kernel)
        return tuned
    return _fast_launch(kernel)


FAST_LAUNCH_ENV_VAR = "ZOO_FAST_LAUNCH"
# The Triton releases whose JITFunction.run FastLaunch follows (tested: 3.6 and 3.8); others launch through
# JITFunction.run, correct but slower, until checked (tests/kernels/test_fast_launch.py under that release).
FAST_LAUNCH_TRITON = ((3, 6), (3, 8))


def fast_launch_supported(version: str) -> bool:
    """Whether Triton ``version`` (e.g. ``"3.6.0"``, ``"3.8.0+git1234"``) is in :data:`FAST_LAUNCH_TRITON`."""
    try:
        major_minor = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return False
    return FAST_LAUNCH_TRITON[0] <= major_minor <= FAST_LAUNCH_TRITON[1]


_FAST_LAUNCH_ON = (
    HAS_TRITON
    and os.environ.get(FAST_LAUNCH_ENV_VAR, "1") != "0"
    and fast_launch_supported(getattr(triton, "__version__", ""))
)


def _fast_launch(fn: Any) -> Any:
    """The :class:`FastLaunch` of a compiled ``triton.jit`` function (one per function), or ``fn`` itself: under
    the interpreter, with a Triton release outside :data:`FAST_LAUNCH_TRITON`, and when ``ZOO_FAST_LAUNCH=0``
    (read once, at import: a switch for telling whether a problem on a GPU comes from this launch path)."""
    if not _FAST_LAUNCH_ON or not isinstance(fn, triton.runtime.JITFunction):
        return fn
    fast = fn.__dict__.get("_zoo_fast_launch")
    if fast is None:
        fast = fn._zoo_fast_launch = FastLaunch(fn)
    return fast


class FastLaunch:
    """Launches of a compiled ``triton.jit`` function that skip most of ``JITFunction.run``'s per-call work.

    Triton's launch path spends about 8 us of host time per launch on this project's kernels (scripts/host_time.py,
    an AMD EPYC core): its binder (the arguments' specialisation: 2-3 us for 10-15 arguments), a string key for its
    kernel cache (1 us), knob and hook look-ups, the check that the globals a kernel read have not changed, and
    launch metadata for profiler hooks. Here the binder still runs (Triton's own specialisation, so a launch picks
    the binary Triton would), its result is looked up as a tuple in this function's own cache, and the binary's
    launcher is called as ``JITFunction.run`` calls it: about 4 us. The first launch of each specialisation, and
    every launch while a launch hook, a pre-run hook or a stage-inspection hook is set (outside
    :func:`compile_only`, which never launches), goes through ``JITFunction.run``, which compiles or loads the
    binary this cache then keeps. Not checked per launch: that the module globals a kernel read are unchanged (this
    project's kernels read constants only)."""

    def __init__(self, fn: Any):
        self.fn = fn
        self.binaries: dict[tuple, Any] = {}

    def __getitem__(self, grid: Any) -> Callable[..., None]:
        return functools.partial(self.launch, grid)

    def launch(self, grid: Any, *args: Any, **kwargs: Any) -> None:
        """``fn[grid](*args, **kwargs)``."""
        fn = self.fn
        runtime = triton_knobs.runtime
        compiling = _COMPILING
        if compiling is None and (
            fn.pre_run_hooks
            or _hooked(runtime.launch_enter_hook)
            or _hooked(runtime.launch_exit_hook)
            or getattr(runtime, "add_stages_inspection_hook", None) is not None  # Triton 3.8: custom passes
        ):
            fn.run(*args, grid=grid, warmup=False, **kwargs)
            return
        device = triton.runtime.driver.active.get_current_device()
        bound, specialization, options = fn.device_caches[device][4](*args, **kwargs)
        key = (
            device,
            tuple(specialization),
            tuple(options.items()),
            runtime.debug,
            triton_knobs.compilation.instrumentation_mode,
        )
        binary = self.binaries.get(key)
        if compiling is not None:  # compile_only(): compile in its pool, launch nothing
            if binary is None:
                args = tuple(_PointerArg(a) if isinstance(a, torch.Tensor) else a for a in args)
                kwargs = {k: _PointerArg(v) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
                compiling.submit(
                    (id(fn), key), device, functools.partial(fn.run, *args, grid=grid, warmup=True, **kwargs)
                )
            return
        if binary is None:
            binary = fn.run(*args, grid=grid, warmup=False, **kwargs)
            if binary is not None and not hasattr(binary, "result"):  # not a compile still under way
                self.binaries[key] = binary
            return
        if callable(grid):
            grid = grid(bound)
        size = len(grid)
        binary.run(
            grid[0],
            grid[1] if size > 1 else 1,
            grid[2] if size > 2 else 1,
            triton.runtime.driver.active.get_current_stream(device),
            binary.function,
            binary.packed_metadata,
            None,  # launch metadata and hooks: none set (above)
            None,
            None,
            *bound.values(),
        )


def _hooked(hook: Any) -> bool:
    """Whether a Triton launch hook is set: a ``HookChain`` with calls (Triton 3.6 / 3.8), or any other value
    but None."""
    calls = getattr(hook, "calls", None)
    return bool(calls) if isinstance(calls, list) else hook is not None


class _PointerArg:
    """What Triton's specialisation reads of a tensor argument, its dtype and address (``data_ptr``), without the
    tensor: a compile queued by :func:`compile_only` must not keep the pass's tensors alive until it starts (the
    backward's temporaries would pile up)."""

    __slots__ = ("dtype", "_address")

    def __init__(self, tensor: torch.Tensor):
        self.dtype, self._address = tensor.dtype, tensor.data_ptr()

    def data_ptr(self) -> int:
        return self._address


class _CompileSession:
    """The compiles that :func:`compile_only` queued: one per kernel and specialisation, in a thread pool."""

    def __init__(self, workers: int):
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="zoo-compile")
        self.queued: dict[tuple, Any] = {}
        self.tolerant = False  # set while an autotuned kernel queues its configurations

    def submit(self, key: tuple, device: int, compile_: Callable[[], Any]) -> None:
        if key not in self.queued:
            self.queued[key] = self.pool.submit(_compile_on, device, compile_, self.tolerant)

    def wait(self) -> None:
        try:
            for future in list(self.queued.values()):
                future.result()
        finally:
            self.pool.shutdown(cancel_futures=True)


def _compile_on(device: int, compile_: Callable[[], Any], tolerant: bool) -> Any:
    """``compile_()`` in a pool thread, with ``device`` current there (a thread starts on device 0). ``tolerant``
    (an autotuner's configuration): the errors for which Triton's autotuner drops a configuration instead of
    failing (it times them as infinitely slow) drop the compile; the real launch meets them again, as it would."""
    triton.runtime.driver.active.set_current_device(device)
    if not tolerant:
        return compile_()
    from triton.compiler.errors import CompileTimeAssertionFailure
    from triton.runtime.errors import OutOfResources, PTXASError

    try:
        return compile_()
    except (OutOfResources, CompileTimeAssertionFailure, PTXASError):
        return None


_COMPILING: _CompileSession | None = None


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, which containers and job schedulers set), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - platforms without sched_getaffinity (macOS)
        return max(1, os.cpu_count() or 1)


def fast_launch_on() -> bool:
    """Whether compiled kernels launch through :class:`FastLaunch` (and so whether :func:`compile_only` can keep
    them from running): off under ``ZOO_FAST_LAUNCH=0`` and with a Triton release outside
    :data:`FAST_LAUNCH_TRITON`."""
    return _FAST_LAUNCH_ON


@contextlib.contextmanager
def compile_only(workers: int | None = None):
    """Inside this context every launch of a compiled (not interpreted) Triton kernel through :func:`launchable`
    compiles its binary instead of running, in a pool of ``workers`` threads (default: :func:`available_cpus`;
    Triton's compiler releases the GIL); an autotuned kernel compiles every configuration its autotuner would try
    (one that fails as the autotuner tolerates, e.g. out of resources, is dropped). Needs :func:`fast_launch_on`:
    without it the launches run as usual. Leaving waits for the compiles (raising the first error) and returns; the
    kernels' later launches find their binaries in Triton's cache. The ops still run everything else, so their
    outputs hold whatever memory they were given. An error inside the context propagates as it is (the compiles not
    yet started are dropped).

    Process-wide (the autograd engine runs backwards on threads of its own): every thread's launches compile only
    while the context is open. Yields the session; ``len(session.queued)`` is the number of compiles queued. For
    :meth:`zoo.training.step.TrainStep.precompile`, which runs a step this way before the first real one."""
    global _COMPILING
    if _COMPILING is not None:
        raise RuntimeError("compile_only() is already open")
    session = _CompileSession(workers or available_cpus())
    _COMPILING = session
    try:
        yield session
    except BaseException:  # the pass failed: its error, not the compiles', and no wait for them
        _COMPILING = None
        session.pool.shutdown(wait=False, cancel_futures=True)
        raise
    _COMPILING = None
    session.wait()


class TunedLaunch:
    """Launches of an autotuned kernel that skip the autotuner's per-call work once it has chosen.

    ``triton.autotune``'s wrapper spends several microseconds of host time on every launch before the kernel's own
    launch path: a dict of all the arguments, a pass over them for their key (a quadratic one for its name filter)
    and the name of every tensor's dtype; for the 20-40 arguments of the depthwise and attention kernels, as long
    as Triton's launch itself (scripts/host_time.py). The first launch of each key goes through the autotuner
    (which benchmarks the configurations of a key it has not seen) and keeps the configuration it chose; later
    ones launch the kernel with it directly (through its :class:`FastLaunch` when compiled). The key is at least
    as fine as the autotuner's: the values of its key arguments and the dtype of every argument; a kernel with one
    configuration needs none. A configuration with a ``pre_hook`` always goes through the autotuner."""

    def __init__(self, tuner: Any):
        self.tuner = tuner
        kernel = _fast_launch(tuner.fn)
        self.compiled = isinstance(kernel, FastLaunch)
        self.launch = kernel.launch if self.compiled else lambda grid, *a, **k: kernel[grid](*a, **k)
        self.key_args = [(tuner.arg_names.index(name), name) for name in tuner.keys]
        self.chosen: dict[tuple, dict] = {}
        only = tuner.configs[0] if len(tuner.configs) == 1 else None
        self.only = only.all_kwargs() if only is not None and only.pre_hook is None else None

    def __getitem__(self, grid: Any) -> Callable[..., None]:
        return functools.partial(self._launch, grid)

    def _launch(self, grid: Any, *args: Any, **kwargs: Any) -> None:
        if _COMPILING is not None and self.compiled:  # compile_only(): every configuration the autotuner would try
            tuner = self.tuner
            configs = tuner.configs
            if tuner.early_config_prune:
                configs = tuner.early_config_prune(configs, dict(zip(tuner.arg_names, args, strict=False)), **kwargs)
            _COMPILING.tolerant = True
            try:
                for config in configs:
                    self.launch(grid, *args, **kwargs, **config.all_kwargs())
            finally:
                _COMPILING.tolerant = False
            return
        if self.only is not None:
            self.launch(grid, *args, **kwargs, **self.only)
            return
        key = (
            tuple([args[i] if i < len(args) else kwargs.get(name) for i, name in self.key_args]),
            tuple([getattr(a, "dtype", None) for a in args]),
            tuple([getattr(a, "dtype", None) for a in kwargs.values()]),
        )
        config = self.chosen.get(key)
        if config is not None:
            self.launch(grid, *args, **kwargs, **config)
            return
        self.tuner[grid](*args, **kwargs)
        if self.tuner.best_config.pre_hook is None:
            self.chosen[key] = self.tuner.best_config.all_kwargs()


def _decomposes(args: tuple, kwargs: dict) -> bool:
    """Whether a registered op called with these (functional) arguments is traced into its kernels: CUDA
    tensors of static shapes (a launcher picks tiles from concrete sizes; with symbolic sizes, and on CPU tensors,
    where the interpreter cannot run on fake tensors, the op stays one opaque node), unless ``ZOO_TRACE_KERNELS=0``.
    """
    if os.environ.get(TRACE_KERNELS_ENV_VAR, "1") == "0":
        return False
    tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
    return any(t.device.type == "cuda" for t in tensors) and all(
        isinstance(size, int) for t in tensors for size in t.shape
    )


def _export_keeps_ops() -> bool:
    """torch.export keeps ops that torch.library.triton_op registers as single nodes (serialisable); so do we."""
    try:
        from torch.export._trace import custom_triton_ops_decomposition_disabled
    except ImportError:  # pragma: no cover - torch versions without the switch
        return False
    return custom_triton_ops_decomposition_disabled()


def triton_op(name: str) -> Callable[[Callable[..., Any]], Any]:
    """Register ``fn`` (typed, it runs the op's Triton launchers) as the custom op ``name`` (no mutated arguments).

    Like ``torch.library.triton_op``, the op is visible to ``torch.compile``: when AOTAutograd functionalises a
    graph holding it on CUDA tensors, ``fn`` itself is traced, every kernel it launches through
    :func:`launchable` becoming a ``triton_kernel_wrapper_functional`` node that Inductor compiles, launches
    without Python and captures in CUDA graphs, and the allocations and casts around them ordinary graph ops.
    Unlike ``torch.library.triton_op``, the fake implementation is registered separately (``register_fake``, a
    shape function) and CPU tensors keep the op opaque: the Triton interpreter, which runs the kernels on CPU
    tensors, cannot run on the fake tensors that tracing passes (tests/kernels/test_traced_ops.py)."""

    def register(fn: Callable[..., Any]) -> Any:
        op = torch.library.custom_op(name, fn, mutates_args=())
        from torch._subclasses.functional_tensor import FunctionalTensorMode

        def decompose(mode, func, types, args, kwargs):
            if _export_keeps_ops() or not _decomposes(args, kwargs):
                return mode.__torch_dispatch__(func, types, args, kwargs)
            previous = tracing_kernels()
            _TRACING_KERNELS.on = True
            try:
                with mode:
                    return fn(*args, **kwargs)
            finally:
                _TRACING_KERNELS.on = previous

        op.register_torch_dispatch(FunctionalTensorMode, decompose)
        return op

    return register
