"""zoo.training.step.TrainStep: the compiled step (torch.compile, fullgraph) follows the eager one for a reduced
model of every family, and the CUDA-graph step refuses what it cannot capture (it is checked against the eager
step where a GPU is at hand)."""

from __future__ import annotations

import pytest
import timm
import torch

import zoo  # noqa: F401  (registers the zoo's models with timm)
from zoo.training.step import TrainStep

# A reduced member of each family and its input ([B, C, H, W]; the sequence models read pixel sequences), without
# dropout: torch.compile draws its dropout masks from another generator than eager mode does.
FAMILIES = {
    "kat_t": (dict(embed_dim=32, depth=2, num_heads=2, img_size=16, patch_size=4), (3, 16)),
    "inceptionnext_a": (dict(depths=[1, 1, 1, 1], dims=[16, 32, 64, 128]), (3, 32)),
    "unireplknet_a": (dict(depths=[1, 1, 1, 1], dims=[16, 32, 48, 64]), (3, 32)),
    "nat_m": (dict(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4]), (3, 32)),
    "dinat_m": (dict(embed_dim=16, depths=[2, 2, 1, 1], num_heads=[1, 2, 2, 4]), (3, 32)),
    "s4d_t": (dict(d_model=32, n_layers=2, d_state=16, in_chans=1, dropout=0.0), (1, 8)),
    "longconv_t": (dict(d_model=32, n_layers=2, in_chans=1, l_max=64, dropout=0.0, kernel_dropout=0.0), (1, 8)),
}
STEPS = 3


def _losses(name: str, mode: str, steps: int = STEPS, device: str = "cpu", **optimizer_kwargs) -> list[float]:
    kwargs, (channels, side) = FAMILIES[name]
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, **kwargs).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, **optimizer_kwargs)
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(4, channels, side, side, generator=generator).to(device)
    targets = torch.randint(0, 10, (4,), generator=generator).to(device)
    step = TrainStep(model, optimizer, mode=mode)
    return [float(step(inputs, targets)) for _ in range(steps)]


@pytest.mark.parametrize("name", sorted(FAMILIES))
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
