"""zoo.kernels._backend.FastLaunch: a compiled kernel's launch that skips most of ``JITFunction.run`` must launch
the binary Triton's own path would, with the same grid and arguments, for every specialisation (pointer alignment,
integers equal to 1 or divisible by 16, dtypes, constexprs), and leave launches to Triton while a launch hook is
set; inside compile_only() its launches compile in threads and launch nothing. Without a GPU: a subprocess compiles
for a stand-in sm_90 GPU (scripts/host_time.py's driver) and records each launch call instead of making it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import zoo.kernels._backend as backend_module

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, "scripts")  # run from the repository root
    import host_time
    host_time.install_stand_in()

    import torch
    import triton
    import triton.compiler.compiler as triton_compiler
    import triton.language as tl
    from zoo.kernels import _backend

    launches = []

    def recording_handles(self):  # host_time's _no_launch, but the launch call records its binary and arguments
        if self.module is None:
            self.module = self.function = 0
            self._run = lambda *args, binary=self: launches.append((binary, args))

    triton_compiler.CompiledKernel._init_handles = recording_handles

    @triton.jit
    def scale(x_ptr, y_ptr, n, stride, factor, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + offs * stride, mask=offs < n)
        tl.store(y_ptr + offs, x * factor, mask=offs < n)

    def recorded(launch):
        launches.clear()
        launch()
        (call,) = launches
        return call

    def same(a, b):
        return a is b if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor) else a == b

    fast = _backend.launchable(scale)
    assert isinstance(fast, _backend.FastLaunch) and _backend.launchable(scale) is fast
    buffers = {dtype: torch.zeros(80, dtype=dtype) for dtype in (torch.bfloat16, torch.float32)}
    out = torch.zeros(80)
    cases = {
        "aligned": (buffers[torch.bfloat16], out, 48, 1, 2.0, 16),
        "misaligned x": (buffers[torch.bfloat16][1:], out, 48, 1, 2.0, 16),
        "n = 1": (buffers[torch.bfloat16], out, 1, 1, 2.0, 16),
        "n % 16 != 0": (buffers[torch.bfloat16], out, 47, 1, 2.0, 16),
        "stride 2": (buffers[torch.bfloat16], out, 32, 2, 2.0, 16),
        "float32 x": (buffers[torch.float32], out, 48, 1, 2.0, 16),
        "BLOCK 32": (buffers[torch.bfloat16], out, 48, 1, 2.0, 32),
        "another factor": (buffers[torch.bfloat16], out, 48, 1, 0.5, 16),
    }
    binaries = {}
    for rounds in range(2):  # the first launch of a specialisation goes through JITFunction.run, later ones do not
        for name, (*args, block) in cases.items():
            grid = lambda meta: (triton.cdiv(args[2], meta["BLOCK"]),)
            binary, fast_args = recorded(lambda: fast[grid](*args, BLOCK=block))
            reference, ref_args = recorded(lambda: scale.run(*args, grid=grid, warmup=False, BLOCK=block))
            assert binary is reference, name
            # grid, stream, function, metadata; then (past the launch metadata and hooks, which the fast path
            # leaves out: no hook is set) every argument
            assert fast_args[:6] == ref_args[:6], name
            assert not rounds or fast_args[6:9] == (None, None, None), name
            assert len(fast_args) == len(ref_args) and all(map(same, fast_args[9:], ref_args[9:])), name
            assert binaries.setdefault(name, binary) is binary, name  # kept, not recompiled
    # the cache tells specialisations apart: each case compiled a binary of its own but the float's value, which
    # Triton does not specialise on
    distinct = {id(binaries[name]) for name in cases if name != "another factor"}
    assert len(distinct) == len(fast.binaries) == len(cases) - 1
    assert binaries["another factor"] is binaries["aligned"]

    # a launch hook (a profiler's) must see every launch: with one set, the launch goes through JITFunction.run,
    # which hands the launcher its launch metadata and the hook (the launcher calls it; the recording one does not)
    hook = lambda metadata: None
    triton.knobs.runtime.launch_enter_hook.add(hook)
    try:
        *args, block = cases["aligned"]
        _, hooked_args = recorded(lambda: fast[(3,)](*args, BLOCK=block))
    finally:
        triton.knobs.runtime.launch_enter_hook.remove(hook)
    assert hooked_args[6] is not None and hooked_args[7] is triton.knobs.runtime.launch_enter_hook

    # an autotuned kernel launches its chosen configuration through the fast path
    tuned = triton.autotune([triton.Config({"BLOCK": 16}), triton.Config({"BLOCK": 32})], key=["n"])(scale)
    *args, _ = cases["aligned"]
    grid = lambda meta: (triton.cdiv(48, meta["BLOCK"]),)
    _backend.launchable(tuned)[grid](*args)
    chosen = tuned.best_config.kwargs["BLOCK"]
    binary, fast_args = recorded(lambda: _backend.launchable(tuned)[grid](*args))
    assert fast_args[0] == triton.cdiv(48, chosen) and fast_args[-1] == chosen
    assert binary in _backend.launchable(scale).binaries.values()

    # compile_only(): launches compile in a thread pool, once per specialisation, and launch nothing; afterwards the
    # first real launch of each compiles nothing
    compiled = []
    compile_fn = triton.compiler.compile

    def counted(src, *args, **kwargs):
        compiled.append(src.fn.__name__)
        return compile_fn(src, *args, **kwargs)

    triton.compiler.compile = counted  # JITFunction looks it up here when it compiles

    @triton.jit
    def shift(x_ptr, y_ptr, n, stride, factor, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(y_ptr + offs, tl.load(x_ptr + offs * stride, mask=offs < n) + factor, mask=offs < n)

    tuned_shift = triton.autotune([triton.Config({"BLOCK": 16}), triton.Config({"BLOCK": 32})], key=["n"])(shift)
    launches.clear()
    with _backend.compile_only(workers=2) as session:
        for name in ("aligned", "misaligned x", "aligned"):  # the second "aligned" queues nothing
            *args, block = cases[name]
            _backend.launchable(shift)[(3,)](*args, BLOCK=block)
        _backend.launchable(tuned_shift)[grid](*cases["n = 1"][:-1])  # both configurations the autotuner would try
    assert launches == [] and len(session.queued) == 4 and sorted(compiled) == ["shift"] * 4
    for name in ("aligned", "misaligned x"):
        *args, block = cases[name]
        recorded(lambda: _backend.launchable(shift)[(3,)](*args, BLOCK=block))
    _backend.launchable(tuned_shift)[grid](*cases["n = 1"][:-1])  # the autotuner runs both: compiled already
    assert len(compiled) == 4, compiled

    # a configuration that fails to compile as Triton's autotuner tolerates (it drops it) does not fail the pass
    @triton.jit
    def capped(x_ptr, y_ptr, n, stride, factor, BLOCK: tl.constexpr):
        tl.static_assert(BLOCK <= 16)
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(y_ptr + offs, tl.load(x_ptr + offs * stride, mask=offs < n) * factor, mask=offs < n)

    tuned_capped = triton.autotune([triton.Config({"BLOCK": 16}), triton.Config({"BLOCK": 32})], key=["n"])(capped)
    with _backend.compile_only(workers=2) as session:
        _backend.launchable(tuned_capped)[grid](*cases["aligned"][:-1])
    assert len(session.queued) == 2
    _backend.launchable(tuned_capped)[grid](*cases["aligned"][:-1])  # the autotuner drops BLOCK 32 again
    assert tuned_capped.best_config.kwargs["BLOCK"] == 16

    # an error inside propagates as it is; the context cannot nest
    try:
        with _backend.compile_only():
            raise KeyError("inside")
    except KeyError as error:
        assert error.args == ("inside",)
    with _backend.compile_only():
        try:
            with _backend.compile_only():
                pass
        except RuntimeError as error:
            assert "already open" in str(error)
        else:
            raise AssertionError("a nested compile_only() was allowed")
    print("ok")
    """
)


def test_fast_launch_launches_the_binary_and_arguments_of_tritons_own_launch_path(tmp_path):
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path / "triton-cache"), PYTHONPATH=str(ROOT))
    env.pop("TRITON_INTERPRET", None)
    env.pop("ZOO_FAST_LAUNCH", None)
    script = tmp_path / "fast_launch_check.py"  # a file: triton.jit reads its kernels' source
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout[-2000:] + proc.stderr[-4000:]


def test_zoo_fast_launch_0_leaves_launches_to_triton():
    check = (
        "from zoo.kernels import _backend, rational; fn = rational._group_rational_bwd.fn; "
        "print(type(_backend.launchable(fn)).__name__)"
    )
    kinds = {}
    for value in ("0", "1"):
        env = dict(os.environ, TRITON_INTERPRET="0", ZOO_FAST_LAUNCH=value, PYTHONPATH=str(ROOT))
        proc = subprocess.run([sys.executable, "-c", check], cwd=ROOT, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        kinds[value] = proc.stdout.strip()
    assert kinds == {"0": "JITFunction", "1": "FastLaunch"}


@pytest.mark.parametrize(
    "version, supported",
    [("3.6.0", True), ("3.7.1", True), ("3.8.0", True), ("3.8.0+git1a2b3c", True), ("3.5.1", False),
     ("3.9.0", False), ("4.0.0", False), ("", False), ("main", False)],
)  # fmt: skip
def test_fast_launch_follows_only_the_triton_releases_it_was_checked_against(version, supported):
    assert backend_module.fast_launch_supported(version) is supported
