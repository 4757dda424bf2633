"""One training step (forward, loss, backward, optimiser update) in three modes, without Hydra.

``TrainStep(model, optimizer, mode=...)(inputs, targets)`` runs one update and returns the loss as a 0-dim tensor
on the model's device, never read on the host (no synchronisation inside the step: read it every N steps).

* ``"eager"``: the model as it is, one Python call per module and kernel.
* ``"compile"``: the forward and the loss through ``torch.compile`` (AOTAutograd compiles the backward with it;
  ``fullgraph=True`` by default: every model family of the zoo traces as one graph, its ops as their Triton
  kernels on CUDA (docs/design.md §20) and as their references on the CPU); the optimiser update stays eager.
* ``"graph"`` (CUDA only): the whole step - forward, backward and the optimiser's update - captured once in a CUDA
  graph and replayed: inputs are copied into static buffers, the gradients are never freed (``set_to_none=False``),
  and the optimiser must be capturable (``torch.optim.Adam``/``AdamW`` with ``capturable=True``, a tensor ``lr``
  to change the rate). A host-side learning-rate schedule or gradient clipping that reads values on the host does
  not belong inside a captured step.

``scripts/benchmark.py`` times each mode (the ``train``, ``train-compile`` and ``train-graph`` rows);
tests/training/test_train_step.py checks that the compiled step follows the eager one for every family.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch import Tensor, nn

from zoo.kernels._backend import compile_only, fast_launch_on

MODES = ("eager", "compile", "graph")
WARMUP_STEPS = 3  # eager steps on a side stream before a capture (allocator and autotuning settle)


def precompile(forward_loss: Callable[[], Tensor], model: nn.Module, workers: int | None = None) -> int:
    """Compile the Triton kernels of a training step before running it: ``forward_loss()`` (the step's forward and
    loss on a batch of the step's shapes) and its backward run once with every Triton launch compiling instead of
    running (:func:`zoo.kernels._backend.compile_only`), in ``workers`` threads (default: the CPUs it may use). A first
    step otherwise compiles its kernels one after another as it reaches them: 25 compiles and 41-47 s of one CPU
    core for unireplknet_t, 11 and about 30 s for inceptionnext_t (docs/design.md §18).

    The model's buffers (BatchNorm statistics) and the RNG state are restored afterwards, also when the pass
    raises, and no ``.grad`` is written; the PyTorch ops of that pass run for real on whatever the skipped kernels
    left in their outputs. Returns the number of compiles queued (kernels already in Triton's cache count: they load
    from it), 0 where nothing launches compiled Triton kernels (the CPU paths, the interpreter) and, without running
    the pass, where :func:`zoo.kernels._backend.fast_launch_on` is false."""
    if not fast_launch_on():  # the pass would launch every kernel for real: nothing to gain
        return 0
    params = [p for p in model.parameters() if p.requires_grad]
    buffers = [(buffer, buffer.clone()) for buffer in model.buffers()]
    cuda = sorted({p.device.index or 0 for p in params if p.device.type == "cuda"})
    try:
        # anomaly mode off: the pass computes on what the skipped kernels left, NaN included
        with torch.random.fork_rng(devices=cuda), torch.autograd.set_detect_anomaly(False):
            with compile_only(workers) as session:
                loss = forward_loss()
                if params and loss.requires_grad:  # a non-scalar result: the gradient of its sum
                    torch.autograd.grad(loss, params, torch.ones_like(loss), allow_unused=True)
    finally:
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
    return len(session.queued)


def cross_entropy_loss(outputs: Tensor, targets: Tensor) -> Tensor:
    """The default loss: cross entropy of the model's logits against class indices."""
    return nn.functional.cross_entropy(outputs, targets)


class TrainStep:
    """A callable training step over ``model`` and ``optimizer`` (see the module docstring for the modes).

    Args:
        model: the module to train (put it in training mode and on its device first).
        optimizer: its optimiser; for ``mode="graph"`` one created with ``capturable=True``.
        mode: ``"eager"``, ``"compile"`` or ``"graph"``.
        loss_fn: ``loss_fn(model(inputs), targets)``, a 0-dim tensor (default: cross entropy).
        amp_dtype: run the forward under ``torch.autocast`` in this dtype (None: no autocast).
        fullgraph: ``torch.compile``'s ``fullgraph`` in ``"compile"`` mode.
        grad_clip: clip the global gradient norm to this value before the update (None: no clipping; on the
            device, no host synchronisation, so also inside a captured step).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        mode: str = "eager",
        loss_fn: Callable[[Tensor, Tensor], Tensor] = cross_entropy_loss,
        amp_dtype: torch.dtype | None = None,
        fullgraph: bool = True,
        grad_clip: float | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.model, self.optimizer, self.mode = model, optimizer, mode
        self.loss_fn, self.amp_dtype, self.grad_clip = loss_fn, amp_dtype, grad_clip
        self._forward = self._forward_loss
        if mode == "compile":
            # static shapes: a training step sees one input shape, and a second TrainStep in the process (another
            # model) would otherwise recompile with dynamic shapes, which Inductor fails on for some of the models
            self._forward = torch.compile(self._forward_loss, fullgraph=fullgraph, dynamic=False)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static: tuple[Tensor, Tensor, Tensor] | None = None
        # graph mode: the parameters the graph updates and the gradient tensors it writes (set at the capture)
        self._params: list[Tensor] = []
        self._grads: list[Tensor] = []

    def _forward_loss(self, inputs: Tensor, targets: Tensor) -> Tensor:
        device_type = inputs.device.type
        autocast = torch.autocast(device_type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()
        with autocast:
            return self.loss_fn(self.model(inputs), targets)

    def precompile(self, inputs: Tensor, targets: Tensor, workers: int | None = None) -> int:
        """Compile the Triton kernels a step on batches shaped like (``inputs``, ``targets``) launches, in
        ``workers`` threads, before the first step (:func:`precompile`: nothing of the model's state changes).
        Nothing to do in ``"compile"`` mode, where Inductor compiles the kernels itself. Returns the number of
        compiles queued."""
        if self.mode == "compile":
            return 0
        return precompile(lambda: self._forward_loss(inputs, targets), self.model, workers)

    def _eager_step(self, inputs: Tensor, targets: Tensor, set_to_none: bool = True) -> Tensor:
        self.optimizer.zero_grad(set_to_none=set_to_none)
        loss = self._forward(inputs, targets)
        loss.backward()
        if self.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        return loss.detach()

    def update_eagerly(self, inputs: Tensor, targets: Tensor) -> Tensor:
        """One eager update whatever the mode, keeping the gradient tensors in graph mode (a captured step's replays
        read and write those same tensors): for a batch of another shape between replays."""
        self._attach_static_grads()
        return self._eager_step(inputs, targets, set_to_none=self.mode != "graph")

    def _attach_static_grads(self) -> None:
        """Give every parameter back the gradient tensor the captured graph writes, where something replaced or
        dropped it (``zero_grad(set_to_none=True)`` between replays). The step holds those tensors, so their memory,
        which the graph addresses directly, is never freed while the graph lives."""
        for param, grad in zip(self._params, self._grads, strict=True):
            if param.grad is not grad:
                param.grad = grad

    @property
    def captured(self) -> bool:
        """Whether graph mode has captured its step (on the first :meth:`__call__`)."""
        return self._graph is not None

    def replays(self, inputs: Tensor, targets: Tensor) -> bool:
        """Whether a graph-mode call on these tensors captures or replays the graph (False: another shape, dtype or
        device than the captured ones, which :meth:`__call__` refuses and :meth:`update_eagerly` takes)."""
        if self._static is None:
            return True
        static_inputs, static_targets, _ = self._static
        return all(
            new.shape == static.shape and new.dtype == static.dtype and new.device == static.device
            for new, static in ((inputs, static_inputs), (targets, static_targets))
        )

    def __call__(self, inputs: Tensor, targets: Tensor) -> Tensor:
        """One update on (inputs, targets); returns the loss (0-dim, on the device; in graph mode the static
        buffer the next replay overwrites: clone it to keep it)."""
        if self.mode != "graph":
            return self._eager_step(inputs, targets)
        if self._graph is None:
            self._capture(inputs, targets)
        static_inputs, static_targets, static_loss = self._static
        if not self.replays(inputs, targets):
            raise ValueError(
                f"a captured step replays one shape, dtype and device: inputs {list(static_inputs.shape)} "
                f"{static_inputs.dtype} and targets {list(static_targets.shape)} {static_targets.dtype} on "
                f"{static_inputs.device}, got {list(inputs.shape)} {inputs.dtype} and {list(targets.shape)} "
                f"{targets.dtype} on {inputs.device}"
            )
        self._attach_static_grads()
        static_inputs.copy_(inputs, non_blocking=True)
        static_targets.copy_(targets, non_blocking=True)
        with torch.cuda.device(static_inputs.device):
            self._graph.replay()
        # the replay updated the parameters without moving their version counters, which caches of tables derived
        # from a weight (zoo.kernels._backend.derived_from_weight: attention's bias) compare: move them (host only)
        torch.autograd.graph.increment_version(self._params)
        return static_loss

    def _capture(self, inputs: Tensor, targets: Tensor) -> None:
        if not all(group.get("capturable", False) for group in self.optimizer.param_groups):
            raise ValueError("mode='graph' needs an optimiser created with capturable=True (Adam, AdamW)")
        cumulative = [
            name
            for name, module in self.model.named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm)
            and module.training
            and module.track_running_stats
            and module.momentum is None
        ]
        if cumulative:  # nn.BatchNorm's cumulative average takes 1 / num_batches_tracked as a Python float
            raise ValueError(
                "mode='graph' cannot capture batch norms with momentum=None (their cumulative average reads "
                f"num_batches_tracked on the host): {', '.join(cumulative[:3])}{' ...' if len(cumulative) > 3 else ''}"
            )
        if inputs.device.type != "cuda":
            raise RuntimeError(f"mode='graph' captures a CUDA graph: the inputs are on {inputs.device}")
        with torch.cuda.device(inputs.device):  # the streams and the capture on the inputs' GPU, not the current one
            self._capture_on_device(inputs, targets)

    def _capture_on_device(self, inputs: Tensor, targets: Tensor) -> None:
        static_inputs = inputs.clone(memory_format=torch.preserve_format)
        static_targets = targets.clone()
        # the warm-up updates are undone, so that every call is one update (capture records, it does not run)
        model_state = copy.deepcopy(self.model.state_dict())
        optimizer_state = {p: copy.deepcopy(state) for p, state in self.optimizer.state.items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_STEPS):
                self._eager_step(static_inputs, static_targets, set_to_none=False)
        torch.cuda.current_stream().wait_stream(side)
        self.model.load_state_dict(model_state)  # in place: the captured kernels read these tensors
        self._restore_optimizer_state(optimizer_state)
        graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=False)
        # thread_local: a DataLoader's pin-memory thread may allocate pinned memory or query events meanwhile, which
        # the default global mode forbids (it would invalidate the capture). On the warm-up's stream: the kernels'
        # cached per-stream buffers (ticket counters, zero runs) were made and zeroed there, so the capture takes
        # them from the cache; on a stream of its own it would allocate them inside the capture, where the zero fill
        # only runs at the first replay (a capture that failed would leave them cached unzeroed)
        with torch.cuda.graph(graph, stream=side, capture_error_mode="thread_local"):
            static_loss = self._eager_step(static_inputs, static_targets, set_to_none=False)
        self._graph, self._static = graph, (static_inputs, static_targets, static_loss)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self._params = [p for p in params if p.grad is not None]
        self._grads = [p.grad for p in self._params]

    def _restore_optimizer_state(self, saved: dict) -> None:
        """Put the optimiser's state back to ``saved`` in place, keeping the tensors the warm-up created (a state
        created during the capture would be re-initialised by every replay). A parameter that had no state yet gets
        zeros: Adam's fresh state (moments and step count)."""
        for param, state in self.optimizer.state.items():
            before = saved.get(param, {})
            for key, value in state.items():
                if not isinstance(value, Tensor):
                    if key in before:
                        state[key] = before[key]
                elif key in before:
                    value.copy_(before[key])
                else:
                    value.zero_()
