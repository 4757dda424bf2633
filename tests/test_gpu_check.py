"""scripts/gpu_check.sh --smoke: the GPU check's whole path on a CPU (tiny sizes, Triton interpreter), with families
made to fail on purpose; and the target table checked against the tiers' rows (no timings anywhere)."""

from __future__ import annotations

import fnmatch
import importlib
import json
import os
import subprocess
import sys

import torch

from tests.helpers import DEVICE, ROOT, cpu_only_env, load_script

# the op names of each tier-2 family's rows, and the dtype its targets read
OP_ROWS = {
    "rational": ("group_rational", "bfloat16"),
    "norm_rational": ("layer_norm_group_rational", "bfloat16"),
    "gelu_grn": ("gelu_grn", "bfloat16"),
    "batch_norm_add": ("batch_norm_add", "bfloat16"),
    "batch_norm_se": ("batch_norm_se", "bfloat16"),
    "mlp": ("mlp", "bfloat16"),
    "host_probe": ("host_probe", "float32"),
    "dwconv": ("dwconv2d", "bfloat16"),
    "inception": ("inception_dwconv2d", "bfloat16"),
    "ssm": ("s4d_kernel", "float32"),
    "fftconv": ("fftconv", "bfloat16"),
    "neighborhood": ("neighborhood_attention", "bfloat16"),
}


def test_smoke_runs_every_tier_and_reports_failing_families(tmp_path):
    """One --smoke run through the wrapper: a row for every family of every tier, rows from the families that ran,
    the README table, the target lines last; four families fail in the four ways the check must survive."""
    check = load_script("gpu_check")
    out = tmp_path / "out"
    injected = {
        "tests:fftconv": ("raise", "failed"),  # its pytest process fails; the other files' tests still run
        "ops:ssm": ("raise", "failed"),  # an exception in the worker; the next family runs in the same worker
        "models:unireplknet": ("crash", "crashed"),  # the worker dies; a fresh one takes the remaining families
        "models:s4d": ("hang", "timeout"),  # stopped by its budget (2 s here)
    }
    cmd = ["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--smoke", "--out", str(out)]
    for key, (mode, _) in injected.items():
        cmd += ["--inject-failure", f"{key}:{mode}"]
    cmd += ["--family-budget", "models:s4d=2"]
    check.freeze_baseline("issue19", root=tmp_path / "baseline")  # "today's" kernels: timed beside this checkout's
    cmd += ["--baseline-dir", str(tmp_path / "baseline")]
    # the CPU smoke run (interpreter rows) also on a machine with a GPU
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=cpu_only_env(PYTHON=sys.executable))
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # 1: some family did not run cleanly

    files = list(out.glob("*.json"))
    assert len(files) == 1
    data = json.loads(files[0].read_text())
    assert data["check"]["mode"] == "smoke" and data["check"]["finished"]
    assert {tier: data["check"]["tiers"][tier]["status"] for tier in (*check.TIERS, "readme")} == dict.fromkeys(
        (*check.TIERS, "readme"), "ok"
    )
    families = {f"{f['tier']}:{f['family']}": f for f in data["check"]["families"]}
    assert set(families) == {f"{tier}:{f.name}" for tier in check.TIERS for f in check.FAMILIES[tier]}
    for key, family in families.items():
        expected = injected.get(key, (None, "ok"))[1]
        assert family["status"] == expected, (key, family)
    assert "injected failure" in families["ops:ssm"]["error"]
    assert "exited with 70" in families["models:unireplknet"]["error"]
    for key, family in families.items():
        if key.startswith("tests:") and key not in injected:
            assert family["tests"]["passed"] >= 1 and family["tests"]["failed"] == 0

    # rows of every family that ran, none of those that failed before measuring
    ops = {r["op"] for r in data["ops"]}
    assert ops == {OP_ROWS[f.name][0] for f in check.OP_FAMILIES if f"ops:{f.name}" not in injected}
    impls = {"reference", "triton", "triton-unfused", "triton@issue19", "vit", "torch", "triton-launch", "fast-launch"}
    impls |= {"modules"}  # gelu_grn's nn.GELU + GRN, batch_norm_add's BN + scale + add, batch_norm_se's BN + SE
    benchmark = load_script("benchmark")
    sweep = benchmark.MIXER_GRID_SWEEP  # the mixer's grid settings, under the interpreter too when asked for
    assert {r["impl"] for r in data["ops"]} == impls | set(sweep)
    swept = {(r["op"], r["impl"], r["pass_"]) for r in data["ops"] if r["impl"] in sweep}
    assert swept == {("inception_dwconv2d", n, p) for n in sweep for p in benchmark.grid_sweep_passes(n)}
    assert all(r["note"] == "interpreter" for r in data["ops"] if r["impl"] in sweep)
    assert {r["op"] for r in data["ops"] if r["impl"] == "vit"} == {"mlp"}
    assert {r["op"] for r in data["ops"] if r["impl"] == "torch"} == {"host_probe"}
    assert {r["op"] for r in data["ops"] if r["impl"] == "triton-unfused"} == {"layer_norm_group_rational"}
    with_baseline = {r["op"] for r in data["ops"] if r["impl"] == "triton@issue19"}
    assert with_baseline == {"dwconv2d", "inception_dwconv2d"}  # the families that list it
    groups = {r["group"] for r in data["models"]}
    assert groups == {f.name for f in check.MODEL_FAMILIES if f"models:{f.name}" not in injected}
    assert {(r["model"], r["backend"]) for r in data["models"] if r["group"] == "kat"} == {
        ("kat_t", "triton"),  # the Triton backend through the interpreter
        ("vit_tiny_patch16_224", "timm"),
    }
    assert all(r["ms"] > 0 for r in data["ops"] + data["models"])

    # before the ops and models workers timed anything, the warm-up ran each of their Triton units once
    warm = data["check"]["warm"]
    assert set(warm) == {"ops", "models"}
    assert warm["ops"]["units"] == sum(len(f.smoke) for f in check.OP_FAMILIES)
    warmed_models = [(f.name, e.model) for f in check.MODEL_FAMILIES for e in f.entries if check.warms(f, e, True)]
    assert warmed_models == [("kat", "kat_t"), ("kat-compile", "kat_t"), ("kat-compile", "vit_tiny_patch16_224")]
    assert warm["models"]["units"] == len(warmed_models)
    assert all(tier["warmed"] == tier["units"] and not tier["failed"] for tier in warm.values()), warm
    assert "[ops] warm-up: 1 processes over ssm, " in proc.stdout

    # the target lines come last, one per target, in the table's order
    lines = proc.stdout.strip().splitlines()[-len(check.TARGETS) :]
    assert [line.split()[1] for line in lines] == [t.name for t in check.TARGETS]
    by_name = dict(zip((t.name for t in check.TARGETS), lines, strict=True))
    assert "not measured (ops:ssm failed)" in by_name["s4d_kernel_vs_reference"]
    assert "not measured (models:unireplknet crashed)" in by_name["unireplknet_t_train_triton_vs_torch"]
    assert "smoke run: not a measurement" in by_name["kat_t_train_vs_vit_tiny"]
    assert [e["name"] for e in data["check"]["targets"]] == [t.name for t in check.TARGETS]

    table = (out / "README.md").read_text()
    assert f"File: `results/{files[0].name}`" in table and "| kat_t | triton | train | 2 | 32 |" in table
    assert "## NVIDIA H100 80GB HBM3" in table  # the committed results come along
    assert (out / "gpu-check.log").read_text().strip().splitlines()[-1] == lines[-1]


def test_every_target_is_measured_by_the_tiers_rows():
    """Rows for every case and implementation the op families run (at full size, on a GPU) and every model row
    the model families produce: each target then has a ratio. Catches targets that name cases, impls or models the
    tiers do not run."""
    check = load_script("gpu_check")
    benchmark = load_script("benchmark")
    rows = []
    for family in check.OP_FAMILIES:
        op, dtype = OP_ROWS[family.name]
        names = benchmark.case_names(family.name, False, torch.device("cuda"))
        cases = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in family.cases)]
        assert cases, family
        impls = (*family.impls, *(f"triton@{tag}" for tag in family.baselines))
        if "grid-sweep" in impls:  # the implementation that asks for the rows of every swept setting
            impls = (*(i for i in impls if i != "grid-sweep"), *benchmark.MIXER_GRID_SWEEP)
        for case in cases:
            for impl in impls:
                for pass_ in ("fwd", "fwd+bwd"):
                    host_us = 50.0 if impl == "triton" else None
                    rows.append(
                        dict(
                            op=op, case=case, dtype=dtype, pass_=pass_, impl=impl, ms=2.0, graph_ms=1.0, host_us=host_us
                        )
                    )
    models = [
        dict(group=f.name, model=e.model, backend=e.backend, mode=mode, images_per_s=100.0)
        for f in check.MODEL_FAMILIES
        for e in f.entries
        for mode in f.modes
    ]
    results = dict(ops=rows, models=models, check=dict(mode="gpu", families=[]))
    for entry in check.evaluate_targets(results):
        assert entry["ratio"] is not None, entry
        assert entry["status"] in ("met", "not met", "reported")
        assert check.target_line(entry).startswith(f"target {entry['name']} (#{entry['issue']}): ")
    families = {f"{tier}:{f.name}" for tier in check.TIERS for f in check.FAMILIES[tier]}
    assert all(t.family in families for t in check.TARGETS)


def test_target_ratios_take_the_worst_case_and_name_what_is_missing():
    """Ratios use the device time, take the worst case, and refuse to judge when a named case is missing."""
    check = load_script("gpu_check")

    def row(case, impl, ms, pass_="fwd+bwd", graph_ms=None):
        return dict(op="dwconv2d", case=case, dtype="bfloat16", pass_=pass_, impl=impl, ms=ms, graph_ms=graph_ms)

    ratio = check.op_speedup("dwconv2d", ("*xK3", "*xK7"), ("fwd+bwd",), "reference")
    rows = [row("AxK3", "reference", 4.0), row("AxK3", "triton", 9.0, graph_ms=2.0), row("AxK7", "reference", 3.0)]
    rows.append(row("AxK7", "triton", 2.0))
    value, detail = ratio(dict(ops=rows))
    assert value == 1.5 and "worst of 2: AxK7 fwd+bwd" == detail  # device time (graph replays) where there is one
    try:
        ratio(dict(ops=rows[:3]))
    except check.NotMeasured as missing:
        assert "*xK7" in str(missing)
    else:
        raise AssertionError("a target with a missing case must not be measured")

    target = check.Target("t", 0, "ops:dwconv", "", ratio, 2.0)
    failed = dict(ops=rows[:3], check=dict(families=[dict(tier="ops", family="dwconv", status="timeout")]))
    (entry,) = check.evaluate_targets(dict(failed, models=[]), (target,))
    assert entry["status"] == "not measured" and entry["detail"] == "ops:dwconv timeout"
    (entry,) = check.evaluate_targets(dict(ops=rows, models=[], check=dict(mode="gpu")), (target,))
    assert entry["status"] == "not met" and check.target_line(entry).startswith("target t (#0): 1.50x, target >= 2x")

    long_rows = [
        dict(
            op="neighborhood_attention", case="B1xL1000xH8xD64xK101", pass_="fwd", impl="triton", ms=1.0, graph_ms=None
        ),
        dict(
            op="neighborhood_attention",
            case="B1xL1000xH8xD64xK101",
            pass_="fwd",
            impl="sdpa-dense",
            ms=5.0,
            graph_ms=None,
        ),
    ]
    value, _ = check.na_long_flop_fraction(dict(ops=long_rows))
    assert abs(value - 101 / 1000 * 5) < 1e-12


def test_best_of_a_sweep_takes_each_cases_fastest_setting():
    """``op_best_of``: per case the fastest of "triton" and the swept settings (device time), the worst case's
    ratio, every case's winner named; a case without the base's rows or without swept rows is not measured."""
    check = load_script("gpu_check")

    def row(case, impl, ms):
        return dict(op="mix", case=case, dtype="bfloat16", pass_="fwd+bwd", impl=impl, ms=ms, graph_ms=None)

    rows = [row("S1", "old", 6.0), row("S1", "triton", 4.0), row("S1", "grid-a", 2.0), row("S1", "other", 1.0)]
    rows += [row("S2", "old", 3.0), row("S2", "triton", 2.0), row("S2", "grid-a", 2.5)]
    value, detail = check.op_best_of("mix", ("S*",), "fwd+bwd", "old", "grid-")(dict(ops=rows))
    assert value == 1.5 and detail == "worst: S2; fastest: S1 grid-a, S2 triton"  # S1: 6 / 2 = 3 ("other" not swept)
    for missing_row in (0, 2):  # S1 without the base's row, without its only swept row
        try:
            check.op_best_of("mix", ("S*",), "fwd+bwd", "old", "grid-")(
                dict(ops=rows[:missing_row] + rows[1 + missing_row :])
            )
        except check.NotMeasured as missing:
            assert "S1" in str(missing)
        else:
            raise AssertionError(f"S1 without row {missing_row} must not be measured")


def test_test_outcomes_are_read_from_plain_and_xdist_output():
    """Tier 1 reads outcomes from the verbose lines, so a pytest process killed at its budget still counts."""
    check = load_script("gpu_check")
    text = "\n".join(
        [
            "tests/kernels/test_ssm.py::test_a[zoh] PASSED                    [ 50%]",
            "[gw1] [ 75%] FAILED tests/kernels/test_ssm.py::test_b[x-1] ",
            "[gw0] [100%] SKIPPED tests/kernels/test_ssm.py::test_c ",
            "FAILED tests/kernels/test_ssm.py::test_b[x-1] - AssertionError: boom",
        ]
    )
    assert check.parse_outcomes(text) == {
        "tests/kernels/test_ssm.py::test_a[zoh]": "PASSED",
        "tests/kernels/test_ssm.py::test_b[x-1]": "FAILED",
        "tests/kernels/test_ssm.py::test_c": "SKIPPED",
    }


def test_a_frozen_baseline_runs_beside_this_checkouts_kernels(tmp_path):
    """--freeze-baseline copies zoo/kernels; loading renames the package and its registered ops, so the copy's
    Triton op runs beside this checkout's (here through the interpreter) and agrees with it."""
    check = load_script("gpu_check")
    folder = check.freeze_baseline("selftest", root=tmp_path)
    kernels = ROOT / "zoo" / "kernels"
    assert (folder / "dwconv" / "ops.py").read_text() == (kernels / "dwconv" / "ops.py").read_text()
    assert (folder / "rational.py").read_text() == (kernels / "rational.py").read_text()
    assert json.loads((folder / "frozen.json").read_text())["rev"] == "working tree"
    package = check.load_baseline("selftest", root=tmp_path)
    assert package == "zoo_baseline_selftest" and check.load_baseline("absent", root=tmp_path) is None
    baseline = importlib.import_module(f"{package}.dwconv")
    from zoo.kernels import dwconv

    assert baseline.dwconv2d is not dwconv.dwconv2d
    assert hasattr(torch.ops.zoo_baseline_selftest, "dwconv2d")
    x = torch.randn(1, 4, 5, 5, device=DEVICE).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(4, 1, 3, 3, device=DEVICE), torch.randn(4, device=DEVICE)
    torch.testing.assert_close(baseline.dwconv2d(x, w, b, backend="triton"), dwconv.dwconv2d(x, w, b, backend="triton"))


def test_each_warm_up_unit_goes_to_one_process(tmp_path):
    check = load_script("gpu_check")
    assert check.claim(tmp_path, 0) and check.claim(tmp_path, 1)
    assert not check.claim(tmp_path, 0) and not check.claim(tmp_path, 1)


def test_op_cases_run_in_the_order_of_their_patterns():
    """A family's cases run in the order of its patterns (what matters most first), each once."""
    check = load_script("gpu_check")
    names = ["B64xC384x56x56xK3", "B64xC384x56x56xK7", "B64xC384x56x56xK13", "B64xC768x14x14xK13", "B64xC768x14x14xK3"]
    assert check.ordered_cases(names, ("*xK13", "*xK3", "*")) == [
        "B64xC384x56x56xK13",
        "B64xC768x14x14xK13",
        "B64xC384x56x56xK3",
        "B64xC768x14x14xK3",
        "B64xC384x56x56xK7",
    ]
    assert check.ordered_cases(names, ("*xK5",)) == []


def test_families_run_in_the_order_the_command_lists_them():
    """--families sets each tier's order (what the next GPU session needs most first); a pattern that selects
    several keeps the tier's order among them, and without --families the tier's order stays."""
    check = load_script("gpu_check")
    ops = [f.name for f in check.OP_FAMILIES]
    patterns = ["ops:inception", "tests:neighborhood", "dwconv", "ops:rational", "ops:*", "models:kat"]
    ordered = check.by_priority("ops", ops, patterns)
    assert ordered[:3] == ["inception", "dwconv", "rational"]
    assert ordered[3:] == [name for name in ops if name not in ("inception", "dwconv", "rational")]
    assert check.by_priority("tests", ["dwconv", "neighborhood"], patterns) == ["neighborhood", "dwconv"]
    assert check.by_priority("ops", ops, []) == ops
    # the worker and the warm-up take their families in the order of --only
    assert [f.name for f in check._families_in_order("ops", "inception,rational,unknown")] == ["inception", "rational"]


def test_the_modules_row_of_unireplknet_runs_with_every_fused_op_off(monkeypatch):
    """models:unireplknet's "triton-modules" row is built and timed with the switches of every fused op of
    zoo/layers/unireplknet.py at "0" (the names the layers read), and the environment is restored after it."""
    from types import SimpleNamespace

    from zoo.layers import unireplknet

    check = load_script("gpu_check")
    family = next(f for f in check.MODEL_FAMILIES if f.name == "unireplknet")
    entry = next(e for e in family.entries if e.backend == "triton-modules")
    switches = {unireplknet.GELU_GRN_ENV_VAR, unireplknet.BATCH_NORM_ADD_ENV_VAR, unireplknet.BATCH_NORM_SE_ENV_VAR}
    assert set(entry.env) == switches and set(entry.env.values()) == {"0"}
    seen = {}

    def bench_model(*args, **kwargs):
        seen.update({name: os.environ.get(name) for name in switches})
        return []

    monkeypatch.setenv(unireplknet.GELU_GRN_ENV_VAR, "1")
    monkeypatch.delenv(unireplknet.BATCH_NORM_SE_ENV_VAR, raising=False)
    sizes = SimpleNamespace(batch=2, img_size=32, seq_batch=2, seq_len=40)
    ctx = dict(bm=SimpleNamespace(bench_model=bench_model), sizes=sizes, smoke=False, dtype=None, device=None)
    check._model_rows(family, entry, ctx, ("train",))
    assert seen == dict.fromkeys(switches, "0")
    assert os.environ[unireplknet.GELU_GRN_ENV_VAR] == "1" and unireplknet.BATCH_NORM_SE_ENV_VAR not in os.environ
