"""The benchmark's FLOP / byte formulas, its configs (from reference.configs), bookkeeping, and a CPU smoke run."""

from __future__ import annotations

import csv
import dataclasses
import json

import pytest
import torch

from mlaverify.kernels import _bench_formulas as F
from mlaverify.kernels import mha_benchmark
from mlaverify.kernels._bench_cases import (PRODUCTION, build_inputs, from_dense_decode, from_sparse_decode,
                                            from_sparse_prefill, scaled_down)
from mlaverify.kernels._bench_timing import kernel_spans
from mlaverify.kernels.benchmark import IMPLS, OPS, main, select_configs
from mlaverify.reference import configs
from mlaverify.reference.validation import check_sparse_decode_inputs


def test_sparse_decode_flops_v32_production():
    # 2 * h_q * (b * s_q * topk) * (d_qk + d_v) = 2 * 128 * 524288 * 1088
    assert F.sparse_decode_flops(h_q=128, attended=128 * 2 * 2048, d_qk=576) == 146_028_888_064


@pytest.mark.parametrize("d_qk, expected", [(576, 1152 + 10 * 656 + 1024), (512, 1024 + 10 * 576 + 1024)],
                         ids=["v32-656-bytes", "model1-576-bytes"])
def test_sparse_decode_bytes_counts_q_unique_tokens_and_out(d_qk, expected):
    assert F.sparse_decode_bytes(b=1, s_q=1, h_q=1, d_qk=d_qk, unique_positions=10) == expected


def test_sparse_prefill_formulas():
    assert F.sparse_prefill_flops(attended=4096 * 2048, h_q=128, d_qk=576) == 2_336_462_209_024
    # 3 valid rows of 512 bf16 + q and out of 1 query x 2 heads x (512 + 512) bf16
    assert F.sparse_prefill_bytes(valid_indices=3, s_q=1, h_q=2, d_qk=512) == 3 * 1024 + 4096


def test_dense_decode_formulas():
    assert F.dense_decode_flops(b=1, s_q=1, h_q=1, d=576, s_k_mean=10) == 2 * 576 * 10 + 2 * 10 * 512
    # b * (q + kv + out) = 2 * (16*576*2 + 100*576*2 + 16*512*2)
    assert F.dense_decode_bytes(b=2, s_q=1, h_q=16, h_kv=1, d=576, s_k_mean=100) == 300_032


def test_rates():
    assert F.tflops(1e12, 1000.0) == pytest.approx(1.0)
    assert F.gb_per_s(3e9, 1.0) == pytest.approx(3e3)


def test_kernel_spans_group_matching_kernels_per_call():
    events = [("_dense_decode_split_kernel", 0, 5), ("elementwise", 5, 6), ("_dense_decode_combine_kernel", 7, 9),
              ("_dense_decode_split_kernel", 20, 24), ("_dense_decode_combine_kernel", 25, 26)]
    keep = lambda name: name.startswith("_dense_decode")  # noqa: E731
    assert kernel_spans(events, 2, keep) == [9, 6]
    assert kernel_spans(events, 3, keep) == []  # 4 kernels cannot split into 3 equal calls


def test_model1_inputs_count_extra_topk_length():
    cfg = scaled_down(next(c for c in PRODUCTION if c.name == "model1-config3"))
    inputs = build_inputs(cfg, torch.device("cpu"), seed=1)
    a = inputs.args
    check_sparse_decode_inputs(a["q"], a["k_cache"], a["indices"], None, None, a["extra_k_cache"],
                               a["extra_indices_in_kvcache"], a["extra_topk_length"])
    attended = cfg.b * cfg.s_q * cfg.topk + cfg.s_q * int(a["extra_topk_length"].sum())
    assert inputs.flops == F.sparse_decode_flops(cfg.h_q, attended, cfg.d_qk)
    # every main-list position is distinct within a query token: at least topk unique per sequence
    assert inputs.n_bytes >= F.sparse_decode_bytes(cfg.b, cfg.s_q, cfg.h_q, cfg.d_qk, cfg.b * cfg.topk)


def _bench(name):
    return next(c for c in PRODUCTION if c.name == name)


ISSUE_TARGETS = [  # issue 3's benchmark shapes and H200 targets, which the config table + adapter must give
    ("v32", dict(b=128, s_q=2, h_q=128, d_qk=576, topk=2048), ("tflops", 200.0)),
    ("model1-config4", dict(b=128, s_q=2, h_q=128, d_qk=512, extra_page_block_size=2, extra_topk_length=True),
     ("tflops", 150.0)),
    ("prefill-v32", dict(s_q=4096, s_k=32768, topk=2048, h_q=128, d_qk=576, sink=True), ("tflops", 300.0)),
    ("dense-compute-bound", dict(b=128, s_q=2, h_q=128, s_k=8192, d_qk=576), ("tflops", 300.0)),
    ("dense-memory-bound", dict(b=128, s_q=1, h_q=16, s_k=8192, d_qk=576), ("gb_per_s", 3000.0)),
]


@pytest.mark.parametrize("name, shape, target", [pytest.param(*t, id=t[0]) for t in ISSUE_TARGETS])
def test_production_rows_match_the_issue_targets(name, shape, target):
    cfg = _bench(name)
    assert {k: getattr(cfg, k) for k in shape} == shape and cfg.target == target


def test_production_rows_are_the_reference_config_records():
    names = [c.name for c in PRODUCTION]
    assert names == ([r.name for r in configs.SPARSE_DECODE] + ["prefill-" + r.name for r in configs.SPARSE_PREFILL]
                     + ["dense-compute-bound", "dense-memory-bound"])
    for rec in configs.SPARSE_DECODE:
        cfg = _bench(rec.name)
        assert (cfg.h_q, cfg.s_k, cfg.topk, cfg.page_block_size, cfg.extra_s_k, cfg.extra_topk,
                cfg.extra_page_block_size, cfg.extra_topk_length, cfg.d_qk) == (
            rec.h_q, rec.s_k, rec.topk, rec.page_block_size, rec.extra_s_k, rec.extra_topk,
            rec.extra_page_block_size, rec.extra_topk_length, rec.model.d_qk)
    dense = configs.find(configs.DENSE_DECODE, "memory-bound")
    assert from_dense_decode(dense) == _bench("dense-memory-bound")


def test_adapter_follows_the_record_and_rejects_shapes_outside_it():
    rec = dataclasses.replace(configs.find(configs.SPARSE_DECODE, "v32"), h_q=8, topk=96, batch_sizes=(3,))
    cfg = from_sparse_decode(rec, b=3)
    assert (cfg.b, cfg.h_q, cfg.topk, cfg.target) == (3, 8, 96, ("tflops", 200.0))
    with pytest.raises(ValueError, match="b: expected one of"):
        from_sparse_decode(rec)  # the benchmark batch 128 is not among the record's batch sizes
    prefill = dataclasses.replace(configs.find(configs.SPARSE_PREFILL, "model1-config1"), s_kv_range=(64, 1024))
    assert from_sparse_prefill(prefill, s_kv=1024).s_k == 1024
    with pytest.raises(ValueError, match=r"s_kv: expected a value in .* \[64, 1024\], got 32768"):
        from_sparse_prefill(prefill)


def test_select_configs():
    quick = select_configs(["sparse_decode", "dense_decode"], quick=True, compiled=True, batch=64)
    assert [c.name for c in quick] == ["v32", "dense-compute-bound"] and all(c.b == 64 for c in quick)
    tiny = select_configs(["sparse_prefill"], quick=False, compiled=False, batch=None)
    assert len(tiny) == 3 and all(c.name.endswith("-cpu-tiny") and c.target is None for c in tiny)
    assert select_configs(["mha_prefill"], quick=True, compiled=True, batch=None) == []


def test_cpu_smoke_run_of_every_op_writes_json_and_csv(tmp_path, capsys):
    assert main(["--quick", "--out", str(tmp_path)]) == 0  # default: every op, every implementation
    printed = capsys.readouterr().out
    assert "mean nothing" in printed
    report = json.loads((tmp_path / "benchmark.json").read_text())
    assert report["schema_version"] == 1 and report["scaled_down"] is True
    rows = report["rows"]
    assert {(r["op"], r["impl"]) for r in rows} == {(op, impl) for op in OPS for impl in IMPLS}
    assert [r["config"] for r in rows if r["impl"] == "triton"] == [
        "v32-cpu-tiny", "prefill-v32-cpu-tiny", "dense-compute-bound-cpu-tiny", "mha-fwd-cpu-tiny", "mha-bwd-cpu-tiny"]
    for r in rows:
        if r["impl"] == "flash_mla":
            assert r["status"].startswith(("unavailable", "not measured")), r
        elif r["op"] == "mha_prefill" and r["impl"] == "reference":
            assert r["status"].startswith("not measured"), r
        elif r["op"] == "mha_prefill":  # timed by mha_benchmark: FLOPs only, no byte count
            assert r["status"] == "ok" and r["call_ms"] > 0 and r["tflops"] > 0 and r["gb_per_s"] is None, r
            assert "d_qk=192" in r["shape"]
        else:
            assert r["status"] == "ok" and r["call_ms"] > 0 and r["tflops"] > 0 and r["gb_per_s"] > 0, r
    with open(tmp_path / "benchmark.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == len(rows)


def test_mha_failure_is_a_failed_triton_row(tmp_path, monkeypatch):
    def broken(device, quick):
        raise RuntimeError("no kernel")

    monkeypatch.setattr(mha_benchmark, "mha_benchmark_rows", broken)
    assert main(["--ops", "mha_prefill", "--impls", "triton,reference", "--out", str(tmp_path)]) == 1
    rows = json.loads((tmp_path / "benchmark.json").read_text())["rows"]
    assert [(r["impl"], r["status"]) for r in rows] == [
        ("triton", "error: RuntimeError: no kernel"),
        ("reference", "not measured: the mha benchmark times the Triton kernels only")]


def test_bad_arguments_exit_2(tmp_path):
    assert main(["--ops", "sparse_decode,nope", "--out", str(tmp_path)]) == 2
    assert main(["--batch", "0", "--out", str(tmp_path)]) == 2
