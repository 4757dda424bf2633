"""torchrun helpers: a real 2-process gloo group on CPU (broadcast, all-reduce, barrier, rank roles), the
single-process no-op path, and clear errors for a broken environment."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from zoo.training.distributed import (
    DistributedContext,
    all_reduce_sum,
    barrier,
    broadcast_object,
    cleanup,
    init_distributed,
)

REPO = Path(__file__).resolve().parents[2]
TORCHRUN_VARS = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "TORCHELASTIC_RUN_ID",
)

WORKER = textwrap.dedent("""
    import json, sys
    import torch
    import torch.distributed as dist
    from zoo.training.distributed import (all_reduce_sum, barrier, broadcast_object, cleanup, init_distributed)

    ctx = init_distributed("cpu")
    out = {"rank": ctx.rank, "local_rank": ctx.local_rank, "world_size": ctx.world_size,
           "device": str(ctx.device), "is_main": ctx.is_main, "enabled": ctx.enabled,
           "backend": dist.get_backend()}
    mine = {"seed": 1234, "rank": ctx.rank, "name": "run-a"} if ctx.rank == 0 else {"rank": ctx.rank}
    out["broadcast"] = broadcast_object(mine, ctx)
    out["sum_list"] = all_reduce_sum([1.0, float(ctx.rank), 0.1 * (ctx.rank + 1)], ctx)
    tensor = torch.tensor([[ctx.rank + 1, 2]], dtype=torch.int64)
    summed = all_reduce_sum(tensor, ctx)
    out["sum_tensor"] = summed.tolist()
    out["sum_tensor_dtype"] = str(summed.dtype)
    out["input_untouched"] = tensor.tolist() == [[ctx.rank + 1, 2]]
    barrier(ctx)
    cleanup(ctx)
    out["initialized_after_cleanup"] = dist.is_initialized()
    print("RESULT " + json.dumps(out), flush=True)
""")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["CUDA_VISIBLE_DEVICES"] = ""  # the test is about the gloo/CPU path
    return env


@pytest.fixture
def no_torchrun_env(monkeypatch):
    for name in TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    yield monkeypatch
    if dist.is_available() and dist.is_initialized():  # never leak a group into other tests
        dist.destroy_process_group()


def test_two_processes_on_cpu():
    world, port = 2, _free_port()
    procs = []
    for rank in range(world):
        env = _clean_env() | {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", WORKER],
                env=env,
                cwd=REPO,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
    results = {}
    try:
        for rank, proc in enumerate(procs):
            stdout, stderr = proc.communicate(timeout=60)
            assert proc.returncode == 0, f"rank {rank} failed:\n{stderr[-3000:]}"
            line = next(line for line in stdout.splitlines() if line.startswith("RESULT "))
            results[rank] = json.loads(line[len("RESULT ") :])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    for rank, out in results.items():
        assert out["rank"] == rank and out["local_rank"] == rank and out["world_size"] == 2
        assert out["enabled"] is True
        assert out["is_main"] is (rank == 0)
        assert out["device"] == "cpu" and out["backend"] == "gloo"
        assert out["broadcast"] == {"seed": 1234, "rank": 0, "name": "run-a"}
        assert out["sum_list"] == pytest.approx([2.0, 1.0, 0.30000000000000004], abs=1e-15)
        assert out["sum_tensor"] == [[3.0, 4.0]] and out["sum_tensor_dtype"] == "torch.float64"
        assert out["input_untouched"] is True
        assert out["initialized_after_cleanup"] is False


def test_single_process_is_a_no_op(no_torchrun_env):
    ctx = init_distributed("cpu")
    assert ctx == DistributedContext(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    assert ctx.is_main and not ctx.enabled
    assert not dist.is_initialized()

    obj = {"a": [1, 2]}
    assert broadcast_object(obj, ctx) is obj
    assert all_reduce_sum([1, 2.5], ctx) == [1.0, 2.5]
    tensor = torch.tensor([1.0, 2.0], dtype=torch.float64)
    assert torch.equal(all_reduce_sum(tensor, ctx), tensor)
    assert all_reduce_sum(torch.tensor([3], dtype=torch.int32), ctx).dtype == torch.float64
    barrier(ctx)
    cleanup(ctx)
    assert not dist.is_initialized()

    no_torchrun_env.setenv("WORLD_SIZE", "1")
    no_torchrun_env.setenv("RANK", "0")
    assert not init_distributed("cpu").enabled
    assert not dist.is_initialized()


def test_auto_device(no_torchrun_env):
    ctx = init_distributed("auto")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert ctx.device.type == expected and not ctx.enabled


@pytest.mark.parametrize("missing", ["MASTER_ADDR", "MASTER_PORT", "RANK"])
def test_incomplete_environment_is_a_clear_error(no_torchrun_env, missing):
    env = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    for name, value in env.items():
        if name != missing:
            no_torchrun_env.setenv(name, value)
    with pytest.raises(ValueError, match=missing):
        init_distributed("cpu")
    assert not dist.is_initialized()


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE"),
        ({"WORLD_SIZE": "0"}, "WORLD_SIZE"),
        ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}, "outside"),
        ({"WORLD_SIZE": "1", "RANK": "1"}, "RANK"),
    ],
)
def test_bad_environment(no_torchrun_env, env, match):
    for name, value in env.items():
        no_torchrun_env.setenv(name, value)
    with pytest.raises(ValueError, match=match):
        init_distributed("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_without_cuda_is_a_clear_error(no_torchrun_env):
    with pytest.raises(ValueError, match="CUDA is not available"):
        init_distributed("cuda")


def test_bad_device_name(no_torchrun_env):
    with pytest.raises(ValueError, match="device"):
        init_distributed("tpu-ish")


def test_all_reduce_sum_rejects_non_sequences(no_torchrun_env):
    ctx = init_distributed("cpu")
    with pytest.raises(TypeError):
        all_reduce_sum(3.0, ctx)  # type: ignore[arg-type]
