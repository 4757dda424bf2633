"""``S4D``: the diagonal state-space layer of state-spaces/s4 (``models/s4/s4d.py``), with recurrent inference.

Parameters are named as in the official layer, so its state dicts load strictly:

- ``kernel.log_dt`` [C*H], ``kernel.C`` [C*H, N/2, 2] (a complex tensor stored with ``torch.view_as_real``),
  ``kernel.log_A_real`` [C*H, N/2], ``kernel.A_imag`` [C*H, N/2]: the SSM; C = 1 kernel channel (causal) or
  C = 2 (bidirectional: rows ``0..H-1`` generate the causal kernel, rows ``H..2H-1`` the anti-causal one, the
  ``[2, H, L]`` layout of :func:`zoo.kernels.fftconv.fftconv`);
- ``D`` [H]: the skip term;
- ``output_linear.0.weight`` [2H, H, 1] / ``output_linear.0.bias`` [2H]: Conv1d(H, 2H, 1), then GLU over the
  channels (``output_linear.1``, no parameters).

The SSM parameters ``log_dt``, ``log_A_real`` and ``A_imag`` carry ``_optim = {"lr": lr, "weight_decay": 0.0}``
(state-spaces' convention, honoured by :func:`zoo.training.param_groups`).
"""

from __future__ import annotations

import math
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.kernels.fftconv import fftconv
from zoo.kernels.ssm import s4d_kernel
from zoo.layers._padding import channels_first

__all__ = ["S4D", "S4DKernel", "S4D_INITS", "s4d_init"]

S4D_INITS = ("lin", "inv", "legs", "real")


@cache
def _legs_diagonal(d_state: int) -> tuple[Tensor, Tensor]:
    """Eigenvalues (imaginary parts) and projected B of the normal part of HiPPO-LegS, computed in float64.

    HiPPO-LegS (N = ``d_state``): A[n, k] = -sqrt(2n+1) sqrt(2k+1) for n > k, -(n+1) for n = k, 0 above;
    B[n] = sqrt(2n+1). With P[n] = sqrt(n + 1/2), S = A + P P^T = -I/2 + (a skew-symmetric matrix), a normal
    matrix: S = V diag(-1/2 + i w) V^*. Keeps the N/2 eigenvalues with w > 0 (one of each conjugate pair), in
    ascending order, and B projected on their eigenvectors (V^* B). Returns (w [N/2], V^* B [N/2] complex128).
    """
    n = torch.arange(d_state, dtype=torch.float64)
    root = torch.sqrt(2.0 * n + 1.0)
    A = -torch.tril(root[:, None] * root[None, :], diagonal=-1) - torch.diag(n + 1.0)
    P = torch.sqrt(n + 0.5)
    skew = A + P[:, None] * P[None, :] + 0.5 * torch.eye(d_state, dtype=torch.float64)
    # -i * skew is Hermitian: its real eigenvalues w are the imaginary parts of skew's eigenvalues.
    w, V = torch.linalg.eigh(-1j * skew.to(torch.complex128))
    order = torch.argsort(w, descending=True)[: d_state // 2].flip(0)  # the N/2 largest, ascending
    projected_b = V.conj().transpose(0, 1) @ root.to(torch.complex128)
    return w[order].contiguous(), projected_b[order].contiguous()


def s4d_init(init: str, d_state: int) -> tuple[Tensor, Tensor, Tensor]:
    """The initial diagonal SSM of one channel: ``(log_A_real [N/2], A_imag [N/2], B [N/2] complex)``, float32.

    ``n = 0..N/2-1``, ``N = d_state``; A = -exp(log_A_real) + i A_imag. B multiplies the random C (B = 1 except
    for LegS):

    - ``"lin"`` (S4D-Lin): A = -1/2 + i pi n.
    - ``"inv"`` (S4D-Inv): A = -1/2 + i (N/pi) (N/(2n+1) - 1).
    - ``"legs"`` (S4D-LegS): A = -1/2 + i w, w the eigenvalues of the normal part of HiPPO-LegS; its B folded
      into C (see ``_legs_diagonal``).
    - ``"real"`` (S4D-Real): A = -(n+1), imaginary part 0.
    """
    if init not in S4D_INITS:
        raise ValueError(f"init must be one of {S4D_INITS}, got {init!r}")
    half = d_state // 2
    n = torch.arange(half, dtype=torch.float64)
    log_a_real = torch.full((half,), math.log(0.5), dtype=torch.float64)
    b = torch.ones(half, dtype=torch.complex128)
    if init == "lin":
        a_imag = math.pi * n
    elif init == "inv":
        a_imag = (d_state / math.pi) * (d_state / (2.0 * n + 1.0) - 1.0)
    elif init == "legs":
        a_imag, b = _legs_diagonal(d_state)
    else:
        log_a_real = torch.log(n + 1.0)
        a_imag = torch.zeros(half, dtype=torch.float64)
    return log_a_real.float(), a_imag.float(), b.to(torch.complex64)


class S4DKernel(nn.Module):
    """Generates the S4D convolution kernel K [channels, L] from diagonal SSM parameters (``kernel.*`` keys).

    Args:
        channels: number of kernels (H, or 2H for a bidirectional layer).
        d_state: N, the state size (even); the layer keeps N/2 complex modes (and their conjugates implicitly).
        init: one of ``S4D_INITS``.
        dt_min, dt_max: log_dt ~ U[log dt_min, log dt_max].
        lr: learning rate of log_dt, log_A_real, A_imag (``_optim``); None keeps the optimiser's lr; 0.0 freezes
            them (registered as buffers, as in the official code).
        backend: kernel backend of :func:`zoo.kernels.ssm.s4d_kernel`.
    """

    def __init__(
        self,
        channels: int,
        d_state: int = 64,
        init: str = "lin",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        lr: float | None = 0.001,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        log_a_real, a_imag, b = s4d_init(init, d_state)
        log_dt = torch.rand(channels) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        C = torch.randn(channels, d_state // 2, dtype=torch.cfloat) * b
        self.C = nn.Parameter(torch.view_as_real(C).contiguous())
        self._register("log_dt", log_dt, lr)
        self._register("log_A_real", log_a_real.repeat(channels, 1), lr)
        self._register("A_imag", a_imag.repeat(channels, 1), lr)
        self.backend = backend

    def _register(self, name: str, tensor: Tensor, lr: float | None) -> None:
        if lr == 0.0:
            self.register_buffer(name, tensor)
            return
        self.register_parameter(name, nn.Parameter(tensor))
        optim = {"weight_decay": 0.0}
        if lr is not None:
            optim["lr"] = float(lr)
        getattr(self, name)._optim = optim

    def discretize(self) -> tuple[Tensor, Tensor, Tensor]:
        """ZOH discretisation in complex64: ``(dA = exp(dt A), dB = (exp(dt A) - 1) / A, C)``, each [channels, N/2]."""
        dt = torch.exp(self.log_dt.float())
        A = torch.complex(-torch.exp(self.log_A_real.float()), self.A_imag.float())
        dtA = A * dt.unsqueeze(-1)
        dA = torch.exp(dtA)
        return dA, (dA - 1.0) / A, torch.view_as_complex(self.C.float())

    def forward(self, L: int) -> Tensor:
        """K [channels, L] (float32): K[h, l] = 2 Re(sum_n C[h, n] dB[h, n] dA[h, n]^l)."""
        return s4d_kernel(self.log_dt, self.C, self.log_A_real, self.A_imag, L, method="zoh", backend=self.backend)


class S4D(nn.Module):
    """The S4D layer: y = GLU(Conv1d(dropout(GELU(K * u + D u)))), K the S4D kernel (docs/semantics.md §4.4).

    Input and output are [B, H, L] when ``transposed`` (the official default), else [B, L, H]. The causal
    convolution runs through :func:`zoo.kernels.fftconv.fftconv` (FFT of size 2L, D skip and GELU fused); a
    bidirectional layer adds an anti-causal kernel (S4's convention: its lag-1 tap is ``k[1, :, 0]``).

    ``lengths`` (optional, [B] integers): a batch padded at the end; positions l >= lengths[b] of the input are
    zeroed before the convolution, so that a bidirectional layer never reads padding as signal. Outputs at padded
    positions are not meaningful.

    Recurrent inference (causal layers): ``state = layer.default_state(B)``, then ``y_t, state = layer.step(u_t,
    state)`` for u_t [B, H]; y_t is the full layer output at that position, equal to ``forward`` on the whole
    sequence at every position (in eval mode).

    Args:
        d_model: H, the channels.
        d_state: N, the state size (even; N/2 complex modes per channel).
        dropout: channel dropout after the GELU (one mask per sequence, as the official ``DropoutNd``).
        transposed: input layout [B, H, L] (True) or [B, L, H] (False).
        init: ``"lin"``, ``"inv"``, ``"legs"`` or ``"real"`` (see ``s4d_init``).
        bidirectional: add an anti-causal kernel (the kernel generator then holds 2H channels).
        dt_min, dt_max: range of the initial step sizes (log-uniform).
        lr: learning rate of the SSM parameters (their ``_optim``); None: the optimiser's; 0.0: frozen.
        backend: ``"auto"``, ``"torch"`` or ``"triton"`` for the kernel generation and the convolution.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        dropout: float = 0.0,
        transposed: bool = True,
        init: str = "lin",
        bidirectional: bool = False,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        lr: float | None = 0.001,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if int(d_model) <= 0:
            raise ValueError(f"d_model must be a positive int, got {d_model!r}")
        if int(d_state) <= 0 or int(d_state) % 2:
            raise ValueError(f"d_state must be a positive even int (N/2 complex modes), got {d_state!r}")
        if init not in S4D_INITS:
            raise ValueError(f"init must be one of {S4D_INITS}, got {init!r}")
        if not 0.0 < dt_min <= dt_max:
            raise ValueError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min!r}, dt_max={dt_max!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.h = int(d_model)
        self.n = int(d_state)
        self.d_output = self.h
        self.transposed = bool(transposed)
        self.bidirectional = bool(bidirectional)
        self.backend = backend

        self.D = nn.Parameter(torch.randn(self.h))
        self.kernel = S4DKernel((2 if bidirectional else 1) * self.h, self.n, init, dt_min, dt_max, lr, backend)
        self.dropout = nn.Dropout1d(dropout) if dropout > 0.0 else nn.Identity()
        self.output_linear = nn.Sequential(nn.Conv1d(self.h, 2 * self.h, kernel_size=1), nn.GLU(dim=-2))

    def extra_repr(self) -> str:
        return (
            f"d_model={self.h}, d_state={self.n}, transposed={self.transposed}, "
            f"bidirectional={self.bidirectional}, backend={self.backend!r}"
        )

    def forward(self, u: Tensor, lengths: Tensor | None = None) -> Tensor:
        """u: [B, H, L] (transposed) or [B, L, H]; lengths: None or [B] valid lengths; returns u's layout."""
        u = channels_first(u, self.h, self.transposed, lengths, "S4D")
        L = u.shape[-1]
        k = self.kernel(L)
        if self.bidirectional:
            k = k.view(2, self.h, L)
        y = fftconv(
            u.contiguous(), k, self.D, bidirectional=self.bidirectional, activation="gelu", backend=self.backend
        )
        y = self._output_linear(self.dropout(y).transpose(-1, -2))  # [B, L, H]
        return y.transpose(-1, -2) if self.transposed else y

    def _output_linear(self, y: Tensor) -> Tensor:
        """``output_linear`` (Conv1d(H, 2H, 1) then GLU over the channels) on a [..., H] tensor, as a matmul."""
        conv = self.output_linear[0]
        return F.glu(F.linear(y, conv.weight.squeeze(-1), conv.bias), dim=-1)

    # ----------------------------------------------------------------------------------------- recurrent mode

    def default_state(self, batch_size: int, device: torch.device | str | None = None) -> Tensor:
        """The zero state: complex64 [batch_size, H, N/2] (on ``device``, default the parameters' device)."""
        self._check_causal()
        device = self.D.device if device is None else device
        return torch.zeros(int(batch_size), self.h, self.n // 2, dtype=torch.complex64, device=device)

    def step(self, u_t: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """One position of the recurrence: ``(y_t [B, H], next_state [B, H, N/2])`` for ``u_t`` [B, H].

        state' = dA state + dB u_t; y_t = GLU(Conv1d(GELU(2 Re(sum_n C state') + D u_t))), with dA = exp(dt A),
        dB = (exp(dt A) - 1) / A (ZOH, the same discretisation as the convolution kernel).
        """
        self._check_causal()
        if u_t.ndim != 2 or u_t.shape[1] != self.h:
            raise ValueError(f"S4D.step expects u_t of shape [B, H] with H = {self.h}, got {tuple(u_t.shape)}")
        expected = (u_t.shape[0], self.h, self.n // 2)
        if not torch.is_complex(state) or tuple(state.shape) != expected:
            raise ValueError(
                f"S4D.step expects a complex state of shape {list(expected)} (see default_state), got "
                f"{state.dtype} {tuple(state.shape)}"
            )
        dA, dB, C = self.kernel.discretize()
        u = u_t.float()
        state = dA * state + dB * u.unsqueeze(-1)
        y = 2.0 * torch.einsum("hn,bhn->bh", C, state).real + self.D.float() * u
        y = F.gelu(y).to(u_t.dtype)
        y = self._output_linear(self.dropout(y.unsqueeze(-1)).squeeze(-1))
        return y, state

    def _check_causal(self) -> None:
        if self.bidirectional:
            raise RuntimeError(
                "S4D.step/default_state: a bidirectional layer sees future positions and has no "
                "recurrent mode; use forward() on the whole sequence"
            )
