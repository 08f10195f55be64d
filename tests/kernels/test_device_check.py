"""device_check: refuses without CUDA, and plans every production preset case plus the benchmark rows."""

from __future__ import annotations

import os

import pytest
import torch

from mlaverify.kernels import device_check
from mlaverify.verify.presets import PRESETS, preset_cases


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_refuses_without_cuda_with_exit_2(tmp_path, capsys):
    assert device_check.main(["--out", str(tmp_path / "dc")]) == device_check.EXIT_REFUSED
    err = capsys.readouterr().err
    assert "device_check: refused: needs a CUDA device" in err
    assert not (tmp_path / "dc").exists()  # nothing written, nothing started


def test_dry_run_lists_every_full_size_preset_case_and_the_benchmark_ops(capsys):
    assert device_check.main(["--dry-run"]) == device_check.EXIT_OK
    steps = [line.strip() for line in capsys.readouterr().out.splitlines()[1:]]
    expected = {f"check {name} {case.id}" for name in PRESETS for case in preset_cases(name, "full")}
    assert {s for s in steps if s.startswith("check ")} == expected
    # every op once as built by default, sparse decode once more with 64-entry steps (fewer instructions, spills)
    assert [s for s in steps if s.startswith("benchmark ")] == [
        "benchmark sparse_decode", "benchmark sparse_decode MLAVERIFY_SPARSE_DECODE_BLOCK_N=64",
        *(f"benchmark {op}" for op in device_check.BENCH_OPS[1:])]
    # one case of every preset runs before the benchmark, the other cases after it
    first_bench = steps.index("benchmark sparse_decode")
    assert {s.split()[1] for s in steps[:first_bench]} == set(PRESETS)
    assert len(steps[:first_bench]) == len(PRESETS)


def test_plan_honours_presets_ops_and_skip():
    plan = device_check.make_plan(["v32"], ["dense_decode"], False, 60)
    assert plan.steps()[1] == "benchmark dense_decode" and len(plan.steps()) == len(preset_cases("v32", "full")) + 1
    assert not [s for s in device_check.make_plan(["v32"], None, True, 60).steps() if s.startswith("benchmark")]


@pytest.mark.parametrize("argv, message", [
    (["--presets", "nope", "--dry-run"], "--presets: expected names among"),
    (["--ops", "nope", "--dry-run"], "--ops: expected names among"),
    (["--budget-s", "0", "--dry-run"], "--budget-s: expected a positive number"),
])
def test_bad_arguments_are_refused_by_name(argv, message, capsys):
    assert device_check.main(argv) == device_check.EXIT_REFUSED
    assert message in capsys.readouterr().err


def test_benchmark_variants_run_under_their_setting_and_restore_it(monkeypatch):
    """Each benchmark run sees its own environment setting (read when the launch is planned) and leaves
    the process's environment as it found it; the rows say which variant they measured."""
    from mlaverify.kernels import _options, benchmark

    seen = []

    def fake_run_benchmark(ops, impls, quick):
        seen.append((tuple(ops), _options.sparse_decode_block_n()))
        return {"rows": [{"op": ops[0], "impl": "triton", "status": "ok"}]}

    monkeypatch.setattr(benchmark, "run_benchmark", fake_run_benchmark)
    monkeypatch.delenv(_options.SPARSE_DECODE_BLOCK_N_ENV, raising=False)
    plan = device_check.make_plan(["v32"], ["sparse_decode", "dense_decode"], False, 60)
    rows, skipped = device_check._run_benchmark(plan, deadline=float("inf"), log=lambda _: None)
    assert seen == [(("sparse_decode",), None), (("sparse_decode",), 64), (("dense_decode",), None)]
    assert [r["variant"] for r in rows] == ["default", "MLAVERIFY_SPARSE_DECODE_BLOCK_N=64", "default"]
    assert not skipped and _options.SPARSE_DECODE_BLOCK_N_ENV not in os.environ
    rows, skipped = device_check._run_benchmark(plan, deadline=0.0, log=lambda _: None)  # past the budget
    assert not rows and skipped == ["sparse_decode", "sparse_decode MLAVERIFY_SPARSE_DECODE_BLOCK_N=64", "dense_decode"]
