"""The trainer's CUDA-graph mode (``cuda_graph=true``): every optimiser update one replay of a captured step.

:class:`GraphedUpdates` wraps :class:`zoo.training.step.TrainStep` in ``"graph"`` mode (forward, loss, backward,
gradient clipping and the AdamW update in one CUDA graph) with what the training loop needs around it:

* **Learning rates as device tensors.** A captured update reads ``group["lr"]`` from the memory it saw at capture,
  so each group's rate is a 0-dim CUDA tensor; timm's schedule keeps writing Python floats into ``group["lr"]``,
  and before each update a float found there is copied into the group's tensor (a tiny device copy, no sync).
* **Capturable optimiser state.** ``capturable=True`` on every group, step counts on the device (also for the state
  of a checkpoint written without graphs).
* **Losses on the device.** The loss of each update is added, times the batch size, to a device sum, and a flag
  records a non-finite one; :meth:`GraphedUpdates.read` synchronises once and returns both. The loop reads them
  every ``cuda_graph_sync`` updates and whenever it logs or checkpoints, so a NaN is found at most that many
  updates late (the run then stops without writing anything, as in eager mode).
* **Batches of another shape** (a loader that drops undecodable images) run one eager update on the same
  gradient and state tensors instead of a replay; the step is captured on the first batch of the loader's size
  (``capture_batch``), so that a short first batch does not fix the shape every replay needs.
* **The captured tensors stay put.** The step holds the gradient tensors the graph writes and gives them back to
  the parameters before each replay (a ``zero_grad(set_to_none=True)`` cannot free their memory), each replay
  moves the parameters' version counters (caches of tables derived from a weight, such as attention's bias,
  rebuild for the next eager evaluation), and the capture runs in ``thread_local`` mode (a DataLoader's
  pin-memory thread keeps allocating meanwhile).

Limits (checked by the trainer with a clear error): CUDA, one process, ``accum_steps=1``, ``amp`` null or bf16
(fp16's GradScaler reads the gradients on the host), ``optim`` adam or adamw, fixed-length batches. Runs are not
bit-identical to eager runs (the capture's kernels and warm-up differ), and exact resume is not promised.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from zoo.training.step import TrainStep

CAPTURABLE_OPTIMIZERS = ("adam", "adamw")


def make_capturable(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    """Prepare ``optimizer`` (Adam/AdamW) for a captured update: ``capturable=True`` on every group, any step count
    moved to its parameter's device, and each group's learning rate a 0-dim float32 tensor on that device (returned,
    one per group, in group order)."""
    rates = []
    for group in optimizer.param_groups:
        device = group["params"][0].device
        group["capturable"] = True
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            step = state.get("step")
            if isinstance(step, Tensor) and step.device != param.device:
                state["step"] = step.to(param.device, torch.float32)
        rate = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)
        group["lr"] = rate
        rates.append(rate)
    return rates


def host_learning_rates(optimizer_state: dict) -> dict:
    """``optimizer_state`` (an optimiser's ``state_dict()``) with tensor learning rates as floats, so that the
    checkpoint resumes with or without graphs (the groups are the state dict's own copies)."""
    for group in optimizer_state["param_groups"]:
        if isinstance(group.get("lr"), Tensor):
            group["lr"] = float(group["lr"])
    return optimizer_state


class GraphedUpdates:
    """Optimiser updates by CUDA-graph replay (see the module docstring).

    Args:
        model: the model (training mode, on its CUDA device; not wrapped in DDP).
        optimizer: its Adam/AdamW optimiser; made capturable here (:func:`make_capturable`).
        loss_fn: ``loss_fn(model(images), targets)``, a 0-dim tensor.
        amp_dtype: autocast dtype of the forward (None or torch.bfloat16).
        grad_clip: the global gradient norm's bound (None: no clipping).
        capture_batch: capture the step on the first batch of this many samples (the loader's batch size; earlier
            batches of another size update eagerly), so that a short first batch (undecodable images skipped)
            does not become the shape every later replay needs; None: the first batch.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        amp_dtype: torch.dtype | None = None,
        grad_clip: float | None = None,
        capture_batch: int | None = None,
    ) -> None:
        self.optimizer = optimizer
        self.capture_batch = capture_batch
        self.rates = make_capturable(optimizer)
        self.values = [float(rate) for rate in self.rates]  # the host's copy of the rates
        self.step = TrainStep(model, optimizer, mode="graph", loss_fn=loss_fn, amp_dtype=amp_dtype, grad_clip=grad_clip)
        device = self.rates[0].device
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.non_finite = torch.zeros((), dtype=torch.bool, device=device)

    def __call__(self, images: Tensor, targets: Tensor) -> Tensor:
        """One update on (images, targets); returns the loss on the device (do not read it on the host)."""
        self._copy_learning_rates()
        captures = self.step.captured or self.capture_batch in (None, images.shape[0])
        replays = captures and self.step.replays(images, targets)
        loss = self.step(images, targets) if replays else self.step.update_eagerly(images, targets)
        self.loss_sum.add_(loss.double(), alpha=images.shape[0])
        self.non_finite.logical_or_(~torch.isfinite(loss))
        return loss

    def read(self) -> tuple[float, bool]:
        """(summed loss x batch size, whether any loss was NaN or inf) since the last read; one synchronisation."""
        loss_sum, non_finite = torch.stack([self.loss_sum, self.non_finite.double()]).tolist()
        self.loss_sum.zero_()
        self.non_finite.zero_()
        return loss_sum, non_finite > 0

    def learning_rates(self) -> list[float]:
        """The groups' current learning rates, read from the host (no synchronisation)."""
        self._copy_learning_rates()
        return list(self.values)

    def _copy_learning_rates(self) -> None:
        for index, group in enumerate(self.optimizer.param_groups):
            value = group["lr"]
            if value is not self.rates[index]:  # the schedule wrote a float
                self.values[index] = float(value)
                self.rates[index].fill_(self.values[index])
                group["lr"] = self.rates[index]
