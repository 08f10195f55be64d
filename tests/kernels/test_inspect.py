"""Static sm_90 resource checks of the kernels at production shapes (no GPU needed).

The kernels are compiled for sm_90 with Triton's bundled ptxas by ``mlaverify.kernels.inspect``
(in a child process, ~1.5 min on 2 cores with a cold Triton cache); the budgets are
``mlaverify.kernels._resource_budgets``. The full sweep (every batch size, all presets) is
marked ``slow``.
"""

from __future__ import annotations

import json

import pytest
import torch

from mlaverify.kernels import _inspect_compile, _options, dense_decode, inspect, mha_prefill, sparse_decode
from mlaverify.kernels import sparse_prefill
from mlaverify.kernels._resource_budgets import SM90_BUDGETS, SM90_BUDGETS_HI_LO, SPARSE_DECODE_BN64_BUDGET
from mlaverify.kernels._targets import INTERPRETER, TARGETS
from mlaverify.reference import configs

# The fewest presets that compile every kernel in each of its variants: V32 and MODEL1 sparse decode
# (config4: extra cache with extra_topk_length, h_q 128), both prefill widths, every dense record
# (few and many rows, causal), MHA forward and backward. Two batch sizes each: split and one-split.
CI_PRESETS = ("v32", "model1-config4", "prefill-v32", "prefill-model1-config1", "dense-v32", "mha")


@pytest.fixture(scope="module")
def sm90():
    return inspect.collect("sm_90", presets=CI_PRESETS, full=False)


def _rows(report):
    return [r for r in report["rows"] if "unsupported" not in r]


def test_every_kernel_compiles_for_sm90(sm90):
    assert not [r for r in sm90["rows"] if "unsupported" in r]
    assert {r["kernel"] for r in sm90["rows"]} == set(SM90_BUDGETS)  # every kernel covered, and budgeted


def test_shared_memory_fits_the_sm90_limit(sm90):
    over = [(r["case"], r["kernel"], r["shared_bytes"]) for r in _rows(sm90) if r["shared_bytes"] > 232448]
    assert not over, f"over sm_90's 232,448 B per block: {over}"


def test_spills_mma_kind_and_tensor_work_within_budget(sm90):
    problems = []
    for r in _rows(sm90):
        budget = SM90_BUDGETS[r["kernel"]]
        where = f"{r['case']} {r['kernel']}"
        if r["spill_bytes"] > budget.max_spill_bytes:
            problems.append(f"{where}: {r['spill_bytes']} B spill > budget {budget.max_spill_bytes}")
        main = r["main_loop"]
        kind = None if main is None else main["kind"]
        if (kind or None) not in (budget.mma or (None,)):
            problems.append(f"{where}: main-loop MMA {kind!r}, budget allows {budget.mma}")
        if budget.max_ratio is not None and (r["tensor_work_ratio"] is None or r["tensor_work_ratio"] > budget.max_ratio):
            problems.append(f"{where}: issued/counted {r['tensor_work_ratio']} > budget {budget.max_ratio}")
    assert not problems, "\n".join(problems)


def _by_kernel(report) -> dict:
    by_kernel = {}
    for r in _rows(report):
        by_kernel.setdefault(r["kernel"], []).append(r)
    return by_kernel


def test_recorded_shared_memory_matches_the_build(sm90):
    """The smem_sm90 numbers that choose tiles for smaller targets are those of the sm_90 build."""
    by_kernel = _by_kernel(sm90)
    prefill = max(r["shared_bytes"] for r in by_kernel["sparse_prefill"])
    assert prefill == sparse_prefill.launch_tiles(128, TARGETS["sm_90"]).smem_sm90
    assert prefill == sparse_prefill.ONE_ROUNDING_TILES[0].smem_sm90
    split = {r["case"]: r for r in by_kernel["dense_decode.split"]}
    assert split["dense-compute-bound"]["shared_bytes"] == dense_decode.ONE_ROUNDING_TILES.smem_sm90
    assert split["dense-memory-bound"]["shared_bytes"] == dense_decode.KEYS_FIRST_TILES.smem_sm90
    decode = [r for r in by_kernel["sparse_decode.split"] if r["constexprs"]["BLOCK_N"] == 32]
    assert decode and max(r["shared_bytes"] for r in decode) == sparse_decode.SMEM_SM90_ONE_ROUNDING_BN32
    for kind, kernel in (("fwd", "mha_prefill.fwd"), ("dkdv", "mha_prefill.bwd_dkdv"), ("dq", "mha_prefill.bwd_dq")):
        assert by_kernel[kernel][0]["shared_bytes"] == mha_prefill._GPU_TILES[kind].smem_sm90


def test_default_build_uses_wgmma_in_every_big_main_loop(sm90):
    """One rounding of P frees the registers and shared memory for 64-row wgmma tiles; where a program owns
    fewer than 64 rows the products are transposed so that 64 of something else fills wgmma's M (dense
    decode at 16 query rows: the keys; MHA dk/dv at 32 keys: the dims and the query rows). No mma.sync."""
    kinds = {(r["case"], r["kernel"]): r["main_loop"]["kind"] for r in _rows(sm90) if r["main_loop"] is not None}
    assert kinds and all(kind == "wgmma" for kind in kinds.values()), kinds


@pytest.fixture(scope="module")
def sm90_hi_lo():
    """The builds with P as hi + lo bf16 terms (MLAVERIFY_P_SPLIT=1), for the kernels whose tiles change."""
    return inspect.collect("sm_90", presets=("v32", "prefill-v32", "prefill-model1-config1", "dense-v32", "mha"),
                           full=False, env={_options.P_SPLIT_ENV: "1"})


def test_hi_lo_option_builds_within_its_budgets(sm90_hi_lo, sm90):
    problems = []
    for r in _rows(sm90_hi_lo):
        budget = SM90_BUDGETS_HI_LO[r["kernel"]]
        main = r["main_loop"]
        kind = None if main is None else main["kind"]
        if not r["shared_ok"] or r["spill_bytes"] > budget.max_spill_bytes or kind not in (budget.mma or (None,)):
            problems.append(f"{r['case']} {r['kernel']}: smem {r['shared_bytes']}, spill {r['spill_bytes']}, {kind}")
        if budget.max_ratio is not None and not (r["tensor_work_ratio"] or 99) <= budget.max_ratio:
            problems.append(f"{r['case']} {r['kernel']}: ratio {r['tensor_work_ratio']} > {budget.max_ratio}")
    assert not problems, "\n".join(problems)
    by_kernel = _by_kernel(sm90_hi_lo)
    assert max(r["shared_bytes"] for r in by_kernel["sparse_prefill"]) == sparse_prefill.COMPILED_TILES[0].smem_sm90
    split = {r["case"]: r for r in by_kernel["dense_decode.split"]}
    assert split["dense-compute-bound"]["shared_bytes"] == dense_decode.COMPILED_TILES.smem_sm90
    assert max(r["shared_bytes"] for r in by_kernel["sparse_decode.split"]) == sparse_decode.SMEM_SM90[64]
    # hi + lo issues more tensor-core work per counted FLOP than the default build, kernel by kernel
    default = {(r["case"], r["kernel"]): r["tensor_work_ratio"] for r in _rows(sm90) if r["tensor_work_ratio"]}
    for r in _rows(sm90_hi_lo):
        if (r["case"], r["kernel"]) in default:
            assert r["tensor_work_ratio"] > default[(r["case"], r["kernel"])], r["case"]


def test_estimates_follow_the_build(sm90):
    """One estimate per case, from the build's numbers: positive, below the peak, bound named."""
    from mlaverify.kernels import _estimate

    est = {e["case"]: e for e in sm90["estimates"]}
    assert set(est) == {r["case"] for r in sm90["rows"]}
    peak = TARGETS["sm_90"].tensor_tflops * _estimate.TENSOR_EFFICIENCY
    for e in est.values():
        assert 0 < e["tflops"] <= peak and e["time_us"] > 0
        assert e["bound"] in ("memory", "issue", "shared memory") or "tensor" in e["bound"] or "dequant" in e["bound"], e
    assert est["dense-memory-bound"]["bound"] == "memory"
    # sparse prefill's QK is m64n16k16 per warpgroup (32 keys split in two): Q re-read from shared memory
    # for every 16 keys, 300 KB per iteration against 4.5 MFLOPs, more time than its tensor work
    assert est["prefill-v32"]["bound"] == "shared memory"
    assert "dequant" in est["v32 b=128"]["bound"]
    assert est["v32 b=128"]["target"] == {"metric": "tflops", "value": 200.0}
    assert est["v32 b=128"]["spills"] == any(r["spill_bytes"] for r in sm90["rows"] if r["case"] == "v32 b=128")
    text = inspect.format_table(sm90)
    assert "estimate on H200 SXM" in text and "| v32 b=128 |" in text.split("estimate on")[1]


def test_estimate_model_scales_with_work_and_waves():
    from mlaverify.kernels import _estimate

    target = TARGETS["sm_90"]
    row = {"case": "c", "op": "x", "main_loop": {"kind": "wgmma"}, "tensor_work_ratio": 1.0, "waves": 4.0,
           "constexprs": {}, "spill_bytes": 0}
    work = {"flops": 1e12, "bytes": 1.0, "scores": 0, "h_q": 1}
    t1, bound = _estimate.launch_time(row, work, target)
    assert bound == "tensor" and t1 == pytest.approx(1e12 / (target.tensor_tflops * 1e12 * _estimate.TENSOR_EFFICIENCY))
    t2, _ = _estimate.launch_time({**row, "tensor_work_ratio": 2.0}, work, target)
    assert t2 == pytest.approx(2 * t1)  # twice the issued work, twice the time
    t3, _ = _estimate.launch_time({**row, "waves": 3.5}, work, target)
    assert t3 == pytest.approx(t1 * 4 / 3.5)  # half a wave idle
    t4, _ = _estimate.launch_time({**row, "main_loop": {"kind": "mma.sync"}}, work, target)
    assert t4 == pytest.approx(t1 / _estimate.MMA_SYNC_FRACTION_SM90)
    t5, bound = _estimate.launch_time(row, {**work, "bytes": 1e12}, target)
    assert bound == "memory" and t5 > t1
    # instruction issue: iterations (counted FLOPs / counted per iteration) x SASS per iteration x warps,
    # at 4 per SM per clock; it binds when it exceeds the tensor time
    sm_clocks = target.sm_count * target.clock_ghz * 1e9
    looped = {**row, "counted_flops": 1e6, "num_warps": 8, "loop_spill": {"instructions": 1000}}
    issue = 1e12 / 1e6 * 1000 * 8 / (_estimate.SCHEDULERS_PER_SM * sm_clocks) * 4 / 4.0
    t6, bound = _estimate.launch_time(looped, work, target)
    assert (bound, t6) == ("issue", pytest.approx(max(issue, t1))) and issue > t1
    t7, bound = _estimate.launch_time({**looped, "loop_spill": {"instructions": 10}}, work, target)
    assert bound == "tensor" and t7 == pytest.approx(t1)
    # shared memory: iterations x bytes per iteration at 128 B per SM per clock; binds above the tensor time
    per_iteration = 3e6  # bytes: 1e6 iterations of it take ~89 ms on 132 SMs at 1.98 GHz
    shared = 1e12 / 1e6 * per_iteration / (_estimate.SHARED_BYTES_PER_SM_PER_CLOCK * sm_clocks) * 4 / 4.0
    smem_row = {**row, "counted_flops": 1e6, "main_loop": {"kind": "wgmma", "shared_bytes": per_iteration}}
    t8, bound = _estimate.launch_time(smem_row, work, target)
    assert (bound, t8) == ("shared memory", pytest.approx(shared)) and shared > t1
    t9, bound = _estimate.launch_time({**smem_row, "main_loop": {"kind": "wgmma", "shared_bytes": 1000}}, work, target)
    assert bound == "tensor" and t9 == pytest.approx(t1)


def test_launch_parameters_come_from_the_wrappers(sm90):
    """inspect reports the block sizes, warps and grid of the kernels' own launch-config functions."""
    row = next(r for r in _rows(sm90) if r["kernel"] == "sparse_prefill" and r["case"] == "prefill-v32")
    tiles = sparse_prefill.launch_tiles(128, TARGETS["sm_90"])
    assert (row["num_warps"], row["num_stages"]) == (tiles.num_warps, tiles.num_stages)
    assert row["constexprs"]["BLOCK_H"] == tiles.block_h and row["grid"] == [4096 * (128 // tiles.block_h)]
    cfg = sparse_decode.choose_config(128, 2, 128, 2048, TARGETS["sm_90"])
    row = next(r for r in _rows(sm90) if r["kernel"] == "sparse_decode.split" and r["case"] == "v32 b=128")
    assert row["num_warps"] == cfg.num_warps and row["programs"] == 128 * 2 * (128 // cfg.block_h) * cfg.num_splits


@pytest.mark.parametrize("name", ["sm_86", "sm_89"])
def test_smaller_shared_memory_targets_get_fitting_tiles_or_a_clear_error(name):
    target = TARGETS[name]  # 99 KB per block
    for split_p in (True, False):
        tiles = sparse_prefill.launch_tiles(128, target, split_p)
        assert tiles.smem_sm90 <= target.smem_per_block and tiles.block_h == 32
        assert dense_decode.launch_tiles(256, target, split_p).smem_sm90 <= target.smem_per_block
    if target.capability >= sparse_decode.MIN_CAPABILITY:
        cfg = sparse_decode.choose_config(128, 2, 128, 2048, target)
        # keys dequantized in 128-dim chunks: 32 heads with two stages fit 99 KB (78,848 B), 64 do not
        assert (cfg.block_h, cfg.num_stages) == (32, 2)
        assert sparse_decode.SMEM_SM90[32] <= target.smem_per_block < sparse_decode.SMEM_SM90[64]
    else:
        with pytest.raises(ValueError, match="sm_86 is not supported: the FP8"):
            sparse_decode.choose_config(128, 2, 128, 2048, target)
    with pytest.raises(ValueError, match=r"mha prefill fwd: tiles 128x64 need 131072 bytes .* more than"):
        mha_prefill._tiles("fwd", target)


def test_a_target_with_too_little_shared_memory_is_refused_by_name():
    import dataclasses

    tiny = dataclasses.replace(TARGETS["sm_90"], name="sm_tiny", smem_per_block=16 * 1024)  # < 22,528 B
    for call in (lambda: sparse_prefill.launch_tiles(128, tiny), lambda: dense_decode.launch_tiles(256, tiny),
                 lambda: sparse_decode.choose_config(128, 2, 128, 2048, tiny)):
        with pytest.raises(ValueError, match="sm_tiny's 16384 bytes"):
            call()


def test_interpreter_plans_are_untouched_by_target_limits():
    assert sparse_prefill.launch_tiles(128, INTERPRETER).block_k == sparse_prefill.INTERPRETER_BLOCK_K
    assert sparse_decode.choose_config(2, 2, 16, 64, INTERPRETER).block_h == 16


def test_occupancy_and_waves_follow_the_limits():
    h200 = TARGETS["sm_90"]
    assert h200.blocks_per_sm(8, 255, 156288) == 1  # 8 warps x 256 regs x 32 = 65,536: the whole file
    assert h200.blocks_per_sm(4, 128, 60000) == 3  # shared memory: 3 x (60,000 + 1,024) <= 233,472
    assert h200.blocks_per_sm(4, 56, 256) == 9  # registers: 65,536 // (56 x 32 x 4) = 9
    assert h200.blocks_per_sm(8, 64, 240000) == 0  # over the per-block limit: does not fit


PTX = """
$L__BB0_1:
	mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%f1}, {%r1}, {%r2}, {%f1};
$L__BB0_2:
	wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%f2}, %rd1, %rd2;
	wgmma.mma_async.sync.aligned.m64n32k16.f32.bf16.bf16 {%f2}, %rd1, %rd2;
	bar.sync 0;
	cp.async.cg.shared.global [%r3], [%rd4], 16;
	st.shared.v4.b32 [%r5+1024], {%r6, %r7, %r8, %r9};
	ld.shared.b16 %rs1, [%r5];
	ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%r1, %r2, %r3, %r4}, [%r5];
	wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%f3}, {%r1, %r2, %r3, %r4}, %rd3, %p1, 1, 1, 1;
	@%p1 bra $L__BB0_2;
	mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%f1}, {%r1}, {%r2}, {%f1};
	@%p2 bra $L__BB0_1;
	ret;
"""


def test_ptx_loops_are_read_innermost_first():
    loops = _inspect_compile.innermost_loops(PTX, num_warps=8)
    assert len(loops) == 1  # the outer loop contains the inner one with MMAs: only the inner counts
    (loop,) = loops
    assert (loop.kind, loop.count, loop.shapes, loop.barriers, loop.async_copies) == (
        "wgmma", 3, {"m64n32k16": 2, "m64n64k16": 1}, 1, 1)
    assert loop.flops == (2 * (2 * 64 * 32 * 16) + 2 * 64 * 64 * 16) * 2  # three instructions, two warpgroups
    # shared-memory bytes per iteration, whole block (8 warps = 256 threads, 2 warpgroups)
    wgmma_both_from_shared = 2 * (64 * 16 + 32 * 16) * 2 * 2  # A (descriptor) and B, bf16, per warpgroup
    wgmma_a_in_registers = 64 * 16 * 2 * 2  # B only
    per_thread = 16 + 16 + 2  # cp.async 16 B, st.shared.v4.b32, ld.shared.b16
    ldmatrix = 4 * 8 * 8 * 2 * 8  # four 8x8 b16 matrices per warp
    assert loop.shared_bytes == wgmma_both_from_shared + wgmma_a_in_registers + per_thread * 256 + ldmatrix


SASS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   STL [R1], R2 ;
.L_x_0:
        /*0020*/                   LDL R4, [R1] ;
.L_x_1:
        /*0030*/                   HGMMA.64x32x16.F32.BF16 R24, gdesc[UR4], R24 ;
        /*0040*/                   LDL R5, [R1+0x4] ;
        /*0050*/                   STL [R1+0x8], R6 ;
        /*0060*/              @P0 BRA `(.L_x_1) ;
        /*0070*/              @P1 BRA `(.L_x_0) ;
        /*0080*/                   LDL R7, [R1+0x8] ;
        /*0090*/                   EXIT ;
"""


def test_sass_main_loop_spill_counts_the_innermost_mma_loop_only():
    spill = _inspect_compile.sass_main_loop_spill(SASS)
    # inner loop .L_x_1: one LDL and one STL; the prologue STL, the outer loop's LDL and the epilogue's are not counted
    assert (spill.loads, spill.stores, spill.instructions) == (1, 1, 4)
    assert _inspect_compile.sass_main_loop_spill(SASS.replace("HGMMA", "FFMA")) is None  # no MMA loop


def test_main_loops_have_no_local_memory_traffic(sm90):
    """No main loop of the default sm_90 builds loads or stores local memory (measured with `python -m
    mlaverify.kernels.inspect`): the spills of dense decode's 64-row tile (16-24 B), MHA dq (48 B), dk/dv
    (80 B) and sparse decode MODEL1 config2 (8 B) sit outside their loops."""
    problems = []
    for r in _rows(sm90):
        ls = r["loop_spill"]
        if r["main_loop"] is not None and ls is None:
            problems.append(f"{r['case']} {r['kernel']}: no SASS loop with MMAs found")
        elif ls and (ls["loads"] or ls["stores"]):
            problems.append(f"{r['case']} {r['kernel']}: {ls['loads']} LDL / {ls['stores']} STL per main-loop iteration")
    assert not problems, "\n".join(problems)


def test_64_entry_sparse_decode_steps_within_their_budget(sm90):
    """MLAVERIFY_SPARSE_DECODE_BLOCK_N=64: the sm_90 option the device check times beside the default. It fits
    (at the shared memory its launch config counts), is wgmma once per product and spills within its budget;
    per entry it issues fewer instructions and moves fewer shared-memory bytes than the default 32-entry
    step, which is why it is kept as an option (and the reason a measurement must choose between them)."""
    report = inspect.collect("sm_90", presets=("v32", "model1-config4"), full=False,
                             env={_options.SPARSE_DECODE_BLOCK_N_ENV: "64"})
    splits = [r for r in _rows(report) if r["kernel"] == "sparse_decode.split"]
    assert splits and all(r["constexprs"]["BLOCK_N"] == 64 for r in splits)
    budget = SPARSE_DECODE_BN64_BUDGET
    for r in splits:
        assert r["shared_ok"] and r["spill_bytes"] <= budget.max_spill_bytes, (r["case"], r["spill_bytes"])
        assert r["main_loop"]["kind"] in budget.mma and r["tensor_work_ratio"] <= budget.max_ratio
    assert max(r["shared_bytes"] for r in splits) == sparse_decode.SMEM_SM90_ONE_ROUNDING_BN64
    default = {r["case"]: r for r in _rows(sm90) if r["kernel"] == "sparse_decode.split"}
    for r in splits:  # per entry: fewer instructions and shared-memory bytes than two 32-entry steps
        d = default[r["case"]]
        assert r["loop_spill"]["instructions"] < 2 * d["loop_spill"]["instructions"]
        assert r["main_loop"]["shared_bytes"] < 2 * d["main_loop"]["shared_bytes"]


def test_cli_writes_json_and_refuses_unknown_presets(tmp_path, capsys):
    out = tmp_path / "r.json"
    assert inspect.main(["--preset", "prefill-model1-config1", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [r["kernel"] for r in report["rows"]] == ["sparse_prefill"]
    assert "prefill-model1-config1 | sparse_prefill" in capsys.readouterr().out
    assert inspect.main(["--preset", "nope"]) == 2
    assert "preset: expected names among" in capsys.readouterr().err


@pytest.mark.slow
def test_full_sweep_every_batch_size_within_budget():
    report = inspect.collect("sm_90", full=True)
    assert len({r["case"] for r in report["rows"]}) == (
        sum(len(r.batch_sizes) for r in configs.SPARSE_DECODE) + len(configs.SPARSE_PREFILL)
        + len(configs.DENSE_DECODE) + 2)
    for r in _rows(report):
        assert r["shared_ok"] and r["spill_bytes"] <= SM90_BUDGETS[r["kernel"]].max_spill_bytes, r


@pytest.mark.slow
def test_sm86_builds_of_the_fallback_tiles_fit():
    report = inspect.collect("sm_86", presets=("prefill-v32", "dense-v32"), full=False)
    assert all(r["shared_ok"] for r in _rows(report)) and _rows(report)


def test_mha_batch_rides_grid_axis_0_without_the_65535_cap():
    from mlaverify.kernels._inspect_cases import META
    from mlaverify.reference.mha_prefill import AttentionMask, MhaPrefillShapes

    batch = 70000  # more sequences than CUDA's 65,535 programs on grid axes 1 and 2
    shapes = MhaPrefillShapes(batch, batch, 2, 2, 192, 128, (1,) * batch, (1,) * batch)
    q = torch.empty(batch, 2, 192, dtype=torch.bfloat16, device=META)
    v = torch.empty(batch, 2, 128, dtype=torch.bfloat16, device=META)
    cu = torch.empty(batch + 1, dtype=torch.int32, device=META)
    launches, _ = mha_prefill.mha_forward_plan(q, q, v, cu, cu, shapes, 0.1, AttentionMask(None, 0), False,
                                               TARGETS["sm_90"])
    assert launches[0].grid == (batch, 2)
    lse = torch.empty(2, batch, dtype=torch.float32, device=META).T
    launches, _ = mha_prefill.mha_backward_plan(v, q, q, v, v, v, lse, cu, cu, shapes, 0.1, AttentionMask(None, 0),
                                                TARGETS["sm_90"])
    assert [launch.grid[0] for launch in launches[1:]] == [batch, batch]


def test_a_grid_past_cuda_limits_is_refused_before_launch():
    from mlaverify.kernels._launch import KernelLaunch

    with pytest.raises(ValueError, match="k: grid axis 1 needs 65536 programs, more than CUDA's limit of 65535"):
        KernelLaunch("k", None, (1, 65536), (), {})
