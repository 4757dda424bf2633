"""zoo::fftconv: both Triton paths (torch.fft plus the fused Triton prologue/epilogue kernels, and the direct
short-kernel path; interpreter on CPU) against the PyTorch reference in float64, and the reference against a direct
(non-FFT) float64 convolution."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import zoo.kernels._backend as backend_module
import zoo.kernels.fftconv as fftconv_module
from tests.helpers import DEVICE, assert_close, assert_relative_error
from zoo.kernels.fftconv import fft_length, fftconv, fftconv_backward, fftconv_forward, fftconv_reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]

# (B, H, L, L', bidirectional, D, gate_in, gate_out, activation): lengths not multiples of the interpreter's block
# (16) nor powers of two; kernels shorter than the input; everything off; everything on.
CASES = [
    (2, 3, 21, 21, False, False, False, False, "none"),
    (1, 4, 19, 7, False, True, True, True, "gelu"),
    (2, 3, 23, 23, True, True, False, True, "gelu"),
    (2, 2, 17, 5, True, True, True, False, "none"),
]


@pytest.fixture(params=["fft", "direct"])
def path(request, monkeypatch):
    """Run the Triton op through the FFT path or the direct (tap-by-tap) path, whatever the kernel length."""
    monkeypatch.setattr(fftconv_module, "DIRECT_MAX_TAPS", 0 if request.param == "fft" else 1 << 30)
    return request.param


def _case_id(case) -> str:
    B, H, L, k_len, bidirectional, has_D, gin, gout, act = case
    parts = [f"{B}x{H}x{L}", f"k{k_len}", "bidir" if bidirectional else "causal", act]
    parts += [name for name, on in (("D", has_D), ("gin", gin), ("gout", gout)) if on]
    return "-".join(parts)


def _inputs(B, H, L, k_len, bidirectional, has_D, gin, gout, dtype, seed=0):
    """u and the gates in ``dtype``; the kernel and D (learned parameters) in float32."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(B, H, L, generator=gen).to(DEVICE, dtype)
    k = (torch.randn((2, H, k_len) if bidirectional else (H, k_len), generator=gen) / k_len**0.5).to(DEVICE)
    D = torch.randn(H, generator=gen).to(DEVICE) if has_D else None
    gate_in = torch.randn(B, H, L, generator=gen).to(DEVICE, dtype) if gin else None
    gate_out = torch.randn(B, H, L, generator=gen).to(DEVICE, dtype) if gout else None
    return u, k, D, gate_in, gate_out


def _grads(fn, inputs, dy):
    leaves = [None if t is None else t.detach().clone().requires_grad_(True) for t in inputs]
    y = fn(*leaves)
    y.backward(dy)
    return y.detach(), [None if t is None else t.grad for t in leaves]


def _conv(backend, bidirectional, activation):
    def fn(u, k, D, gate_in, gate_out):
        return fftconv(
            u,
            k,
            D,
            bidirectional=bidirectional,
            activation=activation,
            gate_in=gate_in,
            gate_out=gate_out,
            backend=backend,
        )

    return fn


def _double(inputs):
    return [None if t is None else t.double() for t in inputs]


def _check(y, grads, y64, grads64, dtype):
    """Elementwise outputs (y, du, d gate_in, d gate_out) within the dtype's rounding; the reductions (dk, dD),
    accumulated in float32 from the same inputs, within a relative error."""
    assert_close(y, y64, dtype, scale=float(y64.abs().max().clamp_min(1.0)))
    for index, (g, g64) in enumerate(zip(grads, grads64, strict=True)):
        assert (g is None) == (g64 is None), index
        if g is None:
            continue
        if index in (1, 2):
            assert_relative_error(g, g64, 1e-5 if dtype == torch.float32 else 1e-4)
        else:
            assert_close(g, g64, dtype, scale=float(g64.abs().max().clamp_min(1.0)))


def _direct_convolution(u, k, D, bidirectional, activation, gate_in, gate_out):
    """The formula of the module docstring as explicit sums over taps, float64, no FFT."""
    u, k = u.double(), k.double()
    v = u if gate_in is None else u * gate_in.double()
    L, k_len = u.shape[-1], k.shape[-1]
    z = torch.zeros_like(v)
    causal = k[0] if bidirectional else k
    for d in range(k_len):
        z[..., d:] += causal[:, d, None] * v[..., : L - d]
        if bidirectional and d + 1 < L:
            z[..., : L - d - 1] += k[1][:, d, None] * v[..., d + 1 :]
    if D is not None:
        z = z + D.double()[:, None] * v
    if activation == "gelu":
        z = F.gelu(z)
    return z if gate_out is None else z * gate_out.double()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_fftconv_matches_float64_reference(case, dtype, path):
    B, H, L, k_len, bidirectional, has_D, gin, gout, act = case
    inputs = _inputs(B, H, L, k_len, bidirectional, has_D, gin, gout, dtype)
    dy = torch.randn(B, H, L, device=DEVICE).to(dtype)
    y, grads = _grads(_conv("triton", bidirectional, act), inputs, dy)
    y64, grads64 = _grads(_conv("torch", bidirectional, act), _double(inputs), dy.double())
    assert y.dtype == dtype and y.shape == (B, H, L)
    for g, t in zip(grads, inputs, strict=True):
        assert g is None or (g.dtype == t.dtype and g.shape == t.shape)
    _check(y, grads, y64, grads64, dtype)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_fftconv_equals_direct_convolution(case, backend, path):
    B, H, L, k_len, bidirectional, has_D, gin, gout, act = case
    u, k, D, gate_in, gate_out = _inputs(B, H, L, k_len, bidirectional, has_D, gin, gout, torch.float32, seed=1)
    expected = _direct_convolution(u, k, D, bidirectional, act, gate_in, gate_out)
    if backend == "torch":  # the reference in float64 is the formula, to rounding
        y = fftconv(
            u.double(),
            k.double(),
            None if D is None else D.double(),
            bidirectional=bidirectional,
            activation=act,
            gate_in=None if gate_in is None else gate_in.double(),
            gate_out=None if gate_out is None else gate_out.double(),
            backend="torch",
        )
        torch.testing.assert_close(y, expected, rtol=1e-10, atol=1e-10)
    else:
        y = fftconv(
            u, k, D, bidirectional=bidirectional, activation=act, gate_in=gate_in, gate_out=gate_out, backend="triton"
        )
        assert_close(y, expected, torch.float32, scale=float(expected.abs().max()))


def test_bidirectional_is_the_state_spaces_convention():
    """k = pad(k0, (0, L)) + pad(k1.flip(-1), (L, 0)), circular convolution of length 2L, first L outputs."""
    torch.manual_seed(2)
    u, k = torch.randn(2, 3, 12, dtype=torch.float64), torch.randn(2, 3, 12, dtype=torch.float64)
    full = F.pad(k[0], (0, 12)) + F.pad(k[1].flip(-1), (12, 0))
    expected = torch.fft.irfft(torch.fft.rfft(u, n=24) * torch.fft.rfft(full, n=24), n=24)[..., :12]
    torch.testing.assert_close(fftconv_reference(u, k, bidirectional=True), expected)
    y = fftconv(u.float().to(DEVICE), k.float().to(DEVICE), bidirectional=True, backend="triton")
    assert_close(y, expected.to(DEVICE), torch.float32, scale=float(expected.abs().max()))


def test_non_contiguous_inputs(path):
    B, H, L = 2, 3, 18
    inputs = _inputs(B, H, L, L, True, True, True, True, torch.float32, seed=3)
    u, k, D, gate_in, gate_out = inputs
    strided = [
        u.transpose(1, 2).contiguous().transpose(1, 2),  # [B, L, H] memory, as a (B, L, H) model keeps it
        torch.stack((k, k), -1)[..., 0],  # every second element
        torch.stack((D, D), -1)[..., 1],
        gate_in.permute(2, 0, 1).contiguous().permute(1, 2, 0),
        torch.stack((gate_out, gate_out), -1)[..., 1],
    ]
    assert not any(t.is_contiguous() for t in strided)
    dy = torch.randn(B, L, H, device=DEVICE).transpose(1, 2)
    y, grads = _grads(_conv("triton", True, "gelu"), strided, dy)
    y64, grads64 = _grads(_conv("torch", True, "gelu"), _double(inputs), dy.double())
    _check(y, grads, y64, grads64, torch.float32)
    direct = fftconv_backward(dy, strided[0], strided[1], strided[2], True, "gelu", strided[3], strided[4])
    _check(y, list(direct), y64, grads64, torch.float32)


def test_short_kernels_take_the_direct_path(monkeypatch):
    """The default choice is by kernel length; the direct path never calls torch.fft."""
    assert fftconv_module.use_direct(fftconv_module.DIRECT_MAX_TAPS)
    assert not fftconv_module.use_direct(fftconv_module.DIRECT_MAX_TAPS + 1)
    calls = []
    monkeypatch.setattr(torch.fft, "rfft", lambda *a, **kw: calls.append("rfft"))
    u = torch.randn(1, 2, 9, device=DEVICE, requires_grad=True)
    k = torch.randn(2, 5, device=DEVICE, requires_grad=True)
    fftconv(u, k, backend="triton").sum().backward()
    assert calls == []
    with pytest.raises(TypeError):  # the FFT path does call it (and gets None back)
        fftconv_forward(u, k, direct=False)


def test_fft_length_is_smooth_and_long_enough():
    for L in (1, 7, 21, 100, 1000, 1024, 4097):
        for k_len in {1, (L + 1) // 2, L}:
            n = fft_length(L, k_len)
            assert n >= L + k_len
            rest = n
            for p in (2, 3, 5, 7):
                while rest % p == 0:
                    rest //= p
            assert rest == 1, n
    assert fft_length(1024, 1024) == 2048 and fft_length(1000, 1000) == 2000


def test_bad_inputs_raise_clear_errors():
    u = torch.randn(2, 3, 10, device=DEVICE)
    k = torch.randn(3, 10, device=DEVICE)
    for backend in ("torch", "triton"):
        with pytest.raises(ValueError, match=r"u must be a 3-D tensor \[B, H, L\], got shape \[3, 10\]"):
            fftconv(u[0], k, backend=backend)
        with pytest.raises(ValueError, match=r"k must have shape \[H, L'\] = \[3, L'\] with L' <= 10.*got \[4, 10\]"):
            fftconv(u, torch.randn(4, 10, device=DEVICE), backend=backend)
        with pytest.raises(ValueError, match=r"kernel length L' = 11 .* must be in \[1, L = 10\]"):
            fftconv(u, torch.randn(3, 11, device=DEVICE), backend=backend)
        with pytest.raises(ValueError, match=r"bidirectional: k must have shape \[2, H, L'\] = \[2, 3, L'\]"):
            fftconv(u, k, bidirectional=True, backend=backend)
        with pytest.raises(ValueError, match=r"D must have shape \[H\] = \[3\], got \[4\]"):
            fftconv(u, k, torch.randn(4, device=DEVICE), backend=backend)
        with pytest.raises(ValueError, match=r"gate_out must have the shape of u \[B, H, L\] = \[2, 3, 10\]"):
            fftconv(u, k, gate_out=torch.randn(2, 3, 9, device=DEVICE), backend=backend)
        with pytest.raises(ValueError, match="activation must be one of"):
            fftconv(u, k, activation="relu", backend=backend)
        with pytest.raises(TypeError, match="u must have a floating-point dtype"):
            fftconv(u.long(), k, backend=backend)
    with pytest.raises(TypeError, match="use backend='torch'"):
        fftconv(u.double(), k.double(), backend="triton")
    with pytest.raises(ValueError, match=r"grad_output must have the output's shape \[2, 3, 10\]"):
        fftconv_backward(torch.randn(2, 3, 9, device=DEVICE), u, k)
    with pytest.raises(ValueError, match="device"):
        fftconv_forward(u, k.to("meta"))


def test_triton_on_cpu_without_interpreter_is_an_error(monkeypatch):
    monkeypatch.setattr(backend_module, "INTERPRETER", False)
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
        fftconv(torch.randn(1, 2, 5), torch.randn(2, 5), backend="triton")


def test_empty_batch(path):
    u = torch.randn(0, 3, 9, device=DEVICE, requires_grad=True)
    k = torch.randn(3, 9, device=DEVICE, requires_grad=True)
    D = torch.randn(3, device=DEVICE, requires_grad=True)
    y = fftconv(u, k, D, backend="triton")
    assert y.shape == (0, 3, 9)
    y.sum().backward()
    assert torch.count_nonzero(k.grad) == 0 and torch.count_nonzero(D.grad) == 0


@pytest.mark.parametrize("with_extras", [False, True], ids=["plain", "D-gates-gelu"])
def test_opcheck(with_extras, path):
    u, k, D, gate_in, gate_out = _inputs(
        2, 3, 13, 9, with_extras, with_extras, with_extras, with_extras, torch.float32, seed=4
    )
    act = "gelu" if with_extras else "none"
    leaves = [None if t is None else t.requires_grad_() for t in (u, k, D, gate_in, gate_out)]
    torch.library.opcheck(torch.ops.zoo.fftconv.default, (*leaves, with_extras, act))
    dy = torch.randn(2, 3, 13, device=DEVICE)
    detached = [None if t is None else t.detach() for t in leaves]
    _, z = torch.ops.zoo.fftconv(*detached, with_extras, act)  # the pre-activation, saved for GELU / gate_out
    assert z.shape == ((2, 3, 13) if with_extras else (0,))
    torch.library.opcheck(torch.ops.zoo.fftconv_backward.default, (dy, *detached, z, with_extras, act))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_torch_compile_fullgraph(backend, path):
    inputs = _inputs(2, 3, 14, 14, True, True, True, True, torch.float32, seed=5)
    dy = torch.randn(2, 3, 14, device=DEVICE)

    def fn(u, k, D, gate_in, gate_out):
        y = fftconv(
            u * 2.0, k, D, bidirectional=True, activation="gelu", gate_in=gate_in, gate_out=gate_out, backend=backend
        )
        return fftconv(y, k[0], None, backend=backend) + 1.0

    y, grads = _grads(torch.compile(fn, fullgraph=True), inputs, dy)
    expected, grads_eager = _grads(fn, inputs, dy)
    assert_close(y, expected, torch.float32, scale=float(expected.abs().max()))
    for g, e in zip(grads, grads_eager, strict=True):
        assert_relative_error(g, e, 1e-5)


def test_autocast_keeps_the_input_dtype():
    """Under autocast the op keeps the activation's dtype (the FFT stays float32); the kernel and D keep float32
    gradients; both backends agree."""
    inputs = _inputs(2, 3, 11, 11, False, True, True, True, torch.bfloat16, seed=7)
    dy = torch.randn(2, 3, 11, device=DEVICE).to(torch.bfloat16)
    results = {}
    for backend in ("torch", "triton"):
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            y, grads = _grads(_conv(backend, False, "gelu"), inputs, dy)
        assert y.dtype == torch.bfloat16
        assert [g.dtype for g in grads] == [t.dtype for t in inputs]
        results[backend] = (y, grads)
    (y_t, grads_t), (y_r, grads_r) = results["triton"], results["torch"]
    assert_close(y_t, y_r, torch.bfloat16, scale=float(y_r.abs().max()))
    for g_t, g_r in zip(grads_t, grads_r, strict=True):
        assert_relative_error(g_t, g_r, 2e-2)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("L", [1024, 3000])
def test_gpu_model_sizes_match_reference(L, dtype, path):
    inputs = _inputs(4, 64, L, L, False, True, True, True, dtype, seed=6)
    dy = torch.randn(4, 64, L, device=DEVICE).to(dtype)
    y, grads = _grads(_conv("triton", False, "gelu"), inputs, dy)
    y64, grads64 = _grads(_conv("torch", False, "gelu"), _double(inputs), dy.double())
    _check(y, grads, y64, grads64, dtype)
