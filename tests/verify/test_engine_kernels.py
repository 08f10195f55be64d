"""mlaverify.kernels (Triton; interpreter on CPU) passes a small deterministic set of cases."""
from __future__ import annotations

from mlaverify.verify.cases import Case
from mlaverify.verify.runner import generate_cases, run_check

KERNEL_CASES = [
    Case(op="sparse_decode", model="v32", b=2, s_q=2, h_q=16, s_kv=90, topk=64, page_block_size=61,
         topk_length="mixed", sink="mixed", invalid="some", nan_fill="all", scales="float32", values="mixed",
         noncontiguous=True, seed=11),
    Case(op="sparse_decode", model="model1", b=2, s_q=1, h_q=8, s_kv=40, topk=16, page_block_size=64,
         extra_s_kv=30, extra_topk=8, extra_page_block_size=2, extra_topk_length="partial", sink="pos_inf",
         invalid="batch", nan_fill="all", seed=12),
    Case(op="sparse_prefill", model="v32", s_q=3, h_q=8, s_kv=50, topk=64, topk_length="partial", sink="finite",
         invalid="some", nan_fill="all", noncontiguous=True, seed=13),
    Case(op="dense_decode", model="model1", b=3, s_q=2, h_q=4, h_kv=2, s_kv=5, page_block_size=2, causal=True,
         seqlens="zero", dtype="fp16", nan_fill="all", seed=14),
    Case(op="mha_prefill", model="d192", b=2, s_q=6, s_kv=9, h_q=2, causal=True, seqlens="varlen",
         backward=True, seed=15),
    Case(op="mha_prefill", model="d128", b=2, s_q=7, s_kv=9, h_q=2, causal=True, window_left=2, window_right=0,
         backward=True, seed=16),
    Case(op="mha_prefill", model="d192", b=1, s_q=5, s_kv=8, h_q=2, window_left=1, window_right=3, seed=17),
]


def test_kernels_pass_a_small_derandomized_set():
    cases = KERNEL_CASES + generate_cases(max_examples=1, seed=0, corners=False)
    report = run_check("mlaverify.kernels", cases=cases, device="cpu")
    failures = [f"{c.id}: {c.reason}" for c in report.cases if c.status != "pass"]
    assert not failures, "\n".join(failures)
    assert report.summary["pass"] == len(cases)
