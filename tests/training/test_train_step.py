"""zoo.training.step.TrainStep: the compiled step (torch.compile, fullgraph) follows the eager one for a reduced
model of every family, and the CUDA-graph step refuses what it cannot capture (it is checked against the eager
step where a GPU is at hand); zoo.training.graphed.GraphedUpdates, the trainer's cuda_graph=true: its learning-rate
tensors follow the schedule, and (on a GPU) its updates follow eager ones."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import timm
import torch

import zoo  # noqa: F401  (registers the zoo's models with timm)
from tests.helpers import REDUCED_MODELS
from zoo.training.graphed import GraphedUpdates, host_learning_rates
from zoo.training.step import TrainStep, cross_entropy_loss

STEPS = 3


def _losses(
    name: str,
    mode: str,
    steps: int = STEPS,
    device: str = "cpu",
    before_steps: Callable[[TrainStep, torch.Tensor, torch.Tensor], object] | None = None,
    after_step: Callable[[TrainStep], object] | None = None,
    **optimizer_kwargs,
) -> list[float]:
    """The losses of ``steps`` updates of the reduced ``name``; ``before_steps(step, inputs, targets)`` runs first,
    ``after_step(step)`` after each update."""
    kwargs, (channels, side) = REDUCED_MODELS[name]
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, **kwargs).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, **optimizer_kwargs)
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(4, channels, side, side, generator=generator).to(device)
    targets = torch.randint(0, 10, (4,), generator=generator).to(device)
    step = TrainStep(model, optimizer, mode=mode)
    if before_steps is not None:
        before_steps(step, inputs, targets)
    losses = []
    for _ in range(steps):
        losses.append(float(step(inputs, targets)))
        if after_step is not None:
            after_step(step)
    return losses


@pytest.mark.parametrize("name", sorted(REDUCED_MODELS))
def test_compiled_step_follows_eager(name):
    """Three AdamW updates: the compiled forward/backward (fullgraph=True) gives the eager losses within 1e-4
    relative (Inductor fuses and reorders float32 reductions; nothing else differs), and the loss falls."""
    eager = _losses(name, "eager")
    compiled = _losses(name, "compile")
    assert compiled == pytest.approx(eager, rel=1e-4), (eager, compiled)
    assert eager[-1] < eager[0]


def test_bad_modes_are_refused():
    model = torch.nn.Linear(4, 3)
    with pytest.raises(ValueError, match="mode must be one of"):
        TrainStep(model, torch.optim.SGD(model.parameters(), lr=0.1), mode="jit")
    inputs, targets = torch.randn(2, 4), torch.tensor([0, 2])
    with pytest.raises(ValueError, match="capturable=True"):
        TrainStep(model, torch.optim.AdamW(model.parameters()), mode="graph")(inputs, targets)
    with pytest.raises(RuntimeError, match="CUDA graph"):
        TrainStep(model, torch.optim.AdamW(model.parameters(), capturable=True), mode="graph")(inputs, targets)
    cumulative = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3, momentum=None))
    with pytest.raises(ValueError, match=r"momentum=None .* on the host\): 1"):
        TrainStep(cumulative, torch.optim.AdamW(cumulative.parameters(), capturable=True), mode="graph")(
            inputs, targets
        )


def test_warm_up_optimizer_state_is_restored_in_place():
    """Before a capture the warm-up steps are undone in the optimiser's own tensors (a replay reads them; a state
    created inside the capture would be reset by every replay): back to the saved state, or to Adam's fresh zeros
    for parameters that had none."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    step = TrainStep(model, optimizer)
    inputs, targets = torch.randn(5, 4), torch.tensor([0, 1, 2, 1, 0])
    step(inputs, targets)
    saved = {p: {k: v.clone() for k, v in state.items()} for p, state in optimizer.state.items()}
    tensors = {id(v) for state in optimizer.state.values() for v in state.values()}
    step(inputs, targets)
    step(inputs, targets)
    assert any(not torch.equal(optimizer.state[p]["exp_avg"], saved[p]["exp_avg"]) for p in saved)
    step._restore_optimizer_state(saved)
    assert {id(v) for state in optimizer.state.values() for v in state.values()} == tensors
    for param, state in optimizer.state.items():
        for key, value in state.items():
            assert torch.equal(value, saved[param][key]), key
    step._restore_optimizer_state({})
    assert all(not v.any() for state in optimizer.state.values() for v in state.values())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["kat_t", "s4d_t"])  # kernels that compile in seconds (not the depthwise ones)
def test_graph_step_follows_eager(name):
    """The captured step (forward, backward and a capturable AdamW update, replayed) gives the eager losses: every
    call is one update (the capture's warm-up steps are undone)."""
    eager = _losses(name, "eager", device="cuda", capturable=True)
    graphed = _losses(name, "graph", device="cuda", capturable=True)
    assert graphed == pytest.approx(eager, rel=1e-3), (eager, graphed)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_graph_replays_survive_dropped_gradients_and_move_versions():
    """Between replays, ``zero_grad(set_to_none=True)`` (as an epoch's start did) cannot free the gradient tensors
    the graph writes: the step gives the same tensors back before the next replay, which still follows the eager
    losses; and every replay moves the parameters' version counters (caches of tables derived from a weight, such
    as attention's bias, then rebuild)."""
    captured = {}

    def drop_gradients(step):
        if not captured:
            captured.update({p: p.grad for p in step.model.parameters() if p.grad is not None})
        else:
            assert all(p.grad is grad for p, grad in captured.items())
        step.optimizer.zero_grad(set_to_none=True)

    versions = []

    def record_versions(step):
        versions.append([p._version for p in step.model.parameters() if p.grad is not None])

    eager = _losses("kat_t", "eager", device="cuda", capturable=True)
    dropped = _losses("kat_t", "graph", device="cuda", capturable=True, after_step=drop_gradients)
    assert dropped == pytest.approx(eager, rel=1e-3), (eager, dropped)
    _losses("kat_t", "graph", device="cuda", capturable=True, after_step=record_versions)
    assert len(versions) == STEPS
    for before, after in zip(versions, versions[1:], strict=False):  # consecutive updates
        assert all(b > a for a, b in zip(before, after, strict=True)), versions


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["kat_t", "s4d_t"])
def test_precompile_on_a_gpu_leaves_the_steps_as_they_were(name, monkeypatch):
    """TrainStep.precompile on CUDA (compiles in threads; the pass computes on what the skipped kernels left) leaves
    the model's state exactly as it was and writes no gradient; the eager updates after it compile nothing and give
    the losses of updates without it (within the GPU tolerance of the graph test: attention's backward may sum in
    another order from run to run). Every kernel's in-memory binaries are dropped first (earlier launches in this
    process would otherwise leave precompile nothing to do and the count nothing to see); Triton's on-disk cache
    keeps those compiles quick."""
    import gc

    import triton

    plain = _losses(name, "eager", device="cuda")
    compiles = []
    compile_fn = triton.compiler.compile

    def counted(src, *args, **kwargs):
        compiles.append(getattr(getattr(src, "fn", None), "__name__", "ir"))
        return compile_fn(src, *args, **kwargs)

    def forget_compiled_kernels():
        """Triton's per-device caches (a new one looks the patched compile function up), our fast-launch binaries
        and every autotuner's choices."""
        for obj in gc.get_objects():
            if isinstance(obj, triton.runtime.JITFunction):
                obj.device_caches.clear()
                if "_zoo_fast_launch" in obj.__dict__:
                    obj._zoo_fast_launch.binaries.clear()
            elif isinstance(obj, triton.runtime.Autotuner):
                obj.cache.clear()
                if "_zoo_tuned_launch" in obj.__dict__:
                    obj._zoo_tuned_launch.chosen.clear()

    def precompile_then_count(step, inputs, targets):
        before = {k: v.clone() for k, v in step.model.state_dict().items()}
        forget_compiled_kernels()
        step.precompile(inputs, targets)
        assert compiles, "precompile compiled nothing"
        assert all(torch.equal(v, before[k]) for k, v in step.model.state_dict().items())
        assert all(p.grad is None for p in step.model.parameters())
        compiles.clear()

    monkeypatch.setattr(triton.compiler, "compile", counted)  # JITFunction looks it up here when it compiles
    precompiled = _losses(name, "eager", device="cuda", before_steps=precompile_then_count)
    assert precompiled == pytest.approx(plain, rel=1e-3), (plain, precompiled)
    assert compiles == [], compiles


def _scheduled_adamw(model: torch.nn.Module, **kwargs):
    """AdamW under a timm cosine schedule with warm-up, as the trainer builds them (the schedule writes floats)."""
    from timm.scheduler import create_scheduler_v2

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, **kwargs)
    scheduler, _ = create_scheduler_v2(
        optimizer, sched="cosine", num_epochs=2, warmup_epochs=1, step_on_epochs=False, updates_per_epoch=4
    )
    scheduler.step_update(num_updates=0)
    return optimizer, scheduler


def test_graphed_updates_keep_the_schedule_in_device_tensors():
    """cuda_graph=true's optimiser: capturable, each group's rate a tensor that follows the floats timm's schedule
    writes (checked on CPU: no update is captured here); checkpoints get the rates back as floats."""
    model = torch.nn.Linear(4, 3)
    optimizer, scheduler = _scheduled_adamw(model)
    graphed = GraphedUpdates(model, optimizer, cross_entropy_loss)
    rates = [group["lr"] for group in optimizer.param_groups]
    assert all(
        isinstance(rate, torch.Tensor) and group["capturable"]
        for rate, group in zip(rates, optimizer.param_groups, strict=True)
    )
    for update in range(1, 8):
        scheduler.step_update(num_updates=update)
        expected = [group["lr"] for group in optimizer.param_groups]  # the floats the schedule just wrote
        assert all(isinstance(value, float) for value in expected)
        assert graphed.learning_rates() == expected
        assert [group["lr"] for group in optimizer.param_groups] == rates  # the same tensors, now holding them
        assert [float(rate) for rate in rates] == pytest.approx(expected, rel=1e-6)
    saved = host_learning_rates(optimizer.state_dict())
    assert [group["lr"] for group in saved["param_groups"]] == pytest.approx(expected, rel=1e-6)
    assert all(isinstance(group["lr"], float) for group in saved["param_groups"])
    assert optimizer.param_groups[0]["lr"] is rates[0]


def test_graphed_updates_capture_on_the_first_full_batch():
    """With ``capture_batch``, batches of another size before the first full one update eagerly (a short first
    batch would otherwise fix the captured shape and send every full batch after it down the eager path); after
    the capture, full batches replay and the others update eagerly. Checked on CPU with the step's graph calls
    recorded in place of a GPU's capture and replays."""
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    graphed = GraphedUpdates(model, optimizer, cross_entropy_loss, capture_batch=4)
    calls = []

    class RecordedStep:
        captured_shape = None

        @property
        def captured(self):
            return self.captured_shape is not None

        def replays(self, inputs, targets):
            return self.captured_shape in (None, inputs.shape)

        def __call__(self, inputs, targets):
            calls.append(("capture" if self.captured_shape is None else "replay", len(inputs)))
            self.captured_shape = inputs.shape
            return torch.zeros(())

        def update_eagerly(self, inputs, targets):
            calls.append(("eager", len(inputs)))
            return torch.zeros(())

    graphed.step = RecordedStep()
    for n in (3, 2, 4, 4, 3, 4):
        graphed(torch.randn(n, 4), torch.zeros(n, dtype=torch.long))
    expected = [("eager", 3), ("eager", 2), ("capture", 4), ("replay", 4), ("eager", 3), ("replay", 4)]
    assert calls == expected


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_graphed_updates_follow_eager_updates():
    """GraphedUpdates (replays; one batch of another size runs eagerly between them) gives the losses of eager
    AdamW updates under the same schedule, read back from the device every two updates."""
    kwargs, (channels, side) = REDUCED_MODELS["kat_t"]
    generator = torch.Generator().manual_seed(3)
    sizes = [4, 4, 4, 3, 4, 4, 4, 4]
    batches = [
        (torch.randn(n, channels, side, side, generator=generator), torch.randint(0, 10, (n,), generator=generator))
        for n in sizes
    ]
    sums = {}
    for graph in (False, True):
        torch.manual_seed(0)
        model = timm.create_model("kat_t", num_classes=10, **kwargs).cuda().train()
        optimizer, scheduler = _scheduled_adamw(model, capturable=True)
        step = GraphedUpdates(model, optimizer, cross_entropy_loss, grad_clip=1.0) if graph else None
        eager = TrainStep(model, optimizer, grad_clip=1.0)
        totals = []
        for update, (inputs, targets) in enumerate(batches, start=1):
            inputs, targets = inputs.cuda(), targets.cuda()
            if graph:
                step(inputs, targets)
                if update % 2 == 0:
                    total, non_finite = step.read()
                    assert not non_finite
                    totals.append(total)
            else:
                loss = eager(inputs, targets)
                if update % 2 == 1:
                    totals.append(float(loss) * len(targets))
                else:
                    totals[-1] += float(loss) * len(targets)
            scheduler.step_update(num_updates=update)
        sums[graph] = totals
    assert sums[True] == pytest.approx(sums[False], rel=1e-3), sums
