"""Sparse FP8 decode kernel (mlaverify.kernels) against the unrounded reference.

On CPU the kernels run in Triton's interpreter, so shapes stay small. Every case poisons each
cache slot that no considered entry points at with NaN bytes (and V32 caches carry NaN padding
between page blocks), and hands the kernel non-contiguous q and indices.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
import torch

from mlaverify.kernels import _options, _runtime, flash_mla_with_kvcache, get_mla_metadata
from mlaverify.kernels._targets import INTERPRETER
from mlaverify.kernels.sparse_decode import choose_config, sparse_decode
from mlaverify.reference import ModelType, quantize_kv_cache, sparse_decode_reference
from tests.kernels.judge import assert_within_budget
from mlaverify.verify.compare import bits_equal
from tests.reference.builders import poison_unreferenced


@dataclasses.dataclass(frozen=True)
class ListSpec:
    """One index list and the cache it points into."""

    topk: int
    page_block: int
    num_blocks: int
    lengths: str = "full"  # "full": no length tensor; "mixed": lengths cycle through 0, partial, topk


@dataclasses.dataclass(frozen=True)
class Case:
    model: ModelType
    h_q: int
    main: ListSpec
    extra: ListSpec | None = None
    b: int = 3
    s_q: int = 2
    sink: bool = False  # finite, -inf and +inf sinks mixed over the heads
    invalid_rows: bool = False  # some (batch, query) rows hold only -1
    rounding: str = "ue8m0"  # V32 only: "none" stores exact, non-power-of-two float32 scales
    num_splits: int | None = None  # None: the kernel's own choice
    seed: int = 0

    @property
    def id(self) -> str:
        parts = [self.model.value, f"h{self.h_q}", f"topk{self.main.topk}", f"pbs{self.main.page_block}"]
        if self.main.lengths != "full":
            parts.append("len")
        if self.extra is not None:
            parts.append(f"extra{self.extra.topk}-pbs{self.extra.page_block}")
            if self.extra.lengths != "full":
                parts.append("xlen")
        parts += ["sink"] * self.sink + ["invalidrows"] * self.invalid_rows
        if self.rounding != "ue8m0":
            parts.append(f"scales-{self.rounding}")
        parts.append("splits-auto" if self.num_splits is None else f"splits{self.num_splits}")
        return "-".join(parts)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _cache(model: ModelType, spec: ListSpec, rounding: str, g: torch.Generator) -> torch.Tensor:
    """FP8 cache; V32 gets one NaN-filled spare token between page blocks (stride(0) > B * 656)."""
    k = torch.randn(spec.num_blocks, spec.page_block, 1, model.d_qk, generator=g).bfloat16()
    cache = quantize_kv_cache(k, model, scale_rounding=rounding)
    if model is not ModelType.V32:
        return cache
    stride0 = (spec.page_block + 1) * 656
    padded = torch.full((spec.num_blocks, stride0), 0xFF, dtype=torch.uint8)
    padded[:, : spec.page_block * 656] = cache.view(torch.uint8).reshape(spec.num_blocks, -1)
    view = padded.as_strided((spec.num_blocks, spec.page_block, 1, 656), (stride0, 656, 656, 1))
    return view.view(torch.float8_e4m3fn)


def _lengths(spec: ListSpec, b: int) -> torch.Tensor | None:
    if spec.lengths == "full":
        return None
    cycle = [0, max(1, spec.topk // 2), spec.topk]
    return torch.tensor([cycle[i % 3] for i in range(b)], dtype=torch.int32)


def _indices(case: Case, spec: ListSpec, g: torch.Generator) -> torch.Tensor:
    """[b, s_q, topk] positions with ~20% -1, as a non-contiguous view (last dim contiguous).

    Position 0 is never used, so it is always NaN-poisoned: a kernel that parks masked entries
    on slot 0 and forgets to mask their loads shows up.
    """
    positions = spec.num_blocks * spec.page_block
    idx = torch.randint(1, max(2, positions), (case.b, case.s_q, spec.topk), generator=g, dtype=torch.int32)
    idx = torch.where(torch.rand(idx.shape, generator=g) < 0.2, -1, idx).to(torch.int32)
    if case.invalid_rows:
        idx[0, -1] = -1
        idx[-1, 0] = -1
    storage = torch.full((case.s_q, case.b, spec.topk + 3), -7, dtype=torch.int32)
    view = storage.transpose(0, 1)[:, :, : spec.topk]  # strides (topk + 3, b * (topk + 3), 1)
    view.copy_(idx)
    return view


def _considered(indices: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Positions of the entries the op considers, -1 for the rest."""
    if lengths is None:
        return indices
    slots = torch.arange(indices.shape[-1]).view(1, 1, -1)
    return torch.where(slots < lengths.view(-1, 1, 1), indices, -1)


# Argument names of each index list: (cache, indices, lengths), and the Case field describing it.
_LISTS = [(("k_cache", "indices", "topk_length"), "main"),
          (("extra_k_cache", "extra_indices", "extra_topk_length"), "extra")]


def build(case: Case) -> dict:
    """Keyword arguments of sparse_decode / sparse_decode_reference for `case`."""
    g = _gen(case.seed)
    d_qk = case.model.d_qk
    q_storage = torch.randn(case.s_q, case.b, case.h_q + 1, d_qk, generator=g).bfloat16()
    q = q_storage.transpose(0, 1)[:, :, : case.h_q]  # non-contiguous outside the last dim
    args = {"q": q}
    for names, spec in _LISTS:
        spec = getattr(case, spec)
        if spec is None:
            continue
        cache = _cache(case.model, spec, case.rounding, g)
        indices = _indices(case, spec, g)
        lengths = _lengths(spec, case.b)
        poison_unreferenced(cache, _considered(indices, lengths), case.model)
        args.update(zip(names, (cache, indices, lengths)))
    if case.sink:
        sink = torch.randn(case.h_q, generator=g) * 2.0
        sink[0::3] = float("inf")
        sink[1::3] = float("-inf")
        args["attn_sink"] = sink
    return args


def assert_matches_reference(args: dict, num_splits=None) -> tuple[torch.Tensor, torch.Tensor]:
    out, lse = sparse_decode(**args, num_splits=num_splits)
    assert_close_to_reference(args, out, lse)
    return out, lse


def assert_close_to_reference(args: dict, out, lse) -> None:
    """Within the calibrated budget of the reference (`judge`), against the reference with P rounded to bf16."""
    ref_out, ref_lse = sparse_decode_reference(**args)
    emu_out, emu_lse = sparse_decode_reference(**args, p_dtype=torch.bfloat16)
    b, s_q, h_q, _ = args["q"].shape
    assert_within_budget("sparse_decode", "out", out, ref_out, emu_out.bfloat16(), expected_dtype=torch.bfloat16)
    assert_within_budget("sparse_decode", "lse", lse, ref_lse, emu_lse, expected_shape=(b, h_q, s_q))


V32, M1 = ModelType.V32, ModelType.MODEL1
CASES = [
    Case(V32, 16, ListSpec(100, 64, 3, "mixed"), sink=True, num_splits=3),
    Case(V32, 64, ListSpec(7, 61, 2), rounding="none", num_splits=1),
    Case(V32, 1, ListSpec(1, 1, 9), b=2, num_splits=1),
    Case(V32, 3, ListSpec(100, 2, 40), sink=True, invalid_rows=True),
    Case(V32, 16, ListSpec(7, 2, 9), ListSpec(100, 64, 2, "mixed"), invalid_rows=True, rounding="none"),
    Case(M1, 16, ListSpec(100, 64, 3), ListSpec(40, 2, 30, "mixed"), sink=True, num_splits=3),
    Case(M1, 3, ListSpec(7, 61, 2, "mixed"), ListSpec(1, 64, 1), num_splits=1),
    Case(M1, 64, ListSpec(100, 1, 150, "mixed"), invalid_rows=True),
    Case(M1, 1, ListSpec(1, 2, 5), ListSpec(7, 61, 1, "mixed"), b=2, sink=True, num_splits=2),
    Case(V32, 65, ListSpec(7, 61, 1), b=2, s_q=1, sink=True, num_splits=2),  # two head tiles, one of 1 head
    Case(M1, 80, ListSpec(40, 2, 30, "mixed"), b=2, s_q=1, num_splits=1),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_matches_reference(case: Case):
    assert_matches_reference(build(case), case.num_splits)


# 64-entry steps (MLAVERIFY_SPARSE_DECODE_BLOCK_N=64, the sm_90 option the device check times beside the
# default 32) run in the interpreter too: both lists, sinks, invalid entries, splits.
BLOCK_N_64_CASES = [CASES[0], CASES[4], CASES[5], CASES[8]]


@pytest.mark.parametrize("case", BLOCK_N_64_CASES, ids=[c.id for c in BLOCK_N_64_CASES])
def test_64_entry_steps_match_reference(case: Case, monkeypatch):
    monkeypatch.setenv(_options.SPARSE_DECODE_BLOCK_N_ENV, "64")
    args = build(case)
    b, s_q, h_q, _ = args["q"].shape
    assert choose_config(b, s_q, h_q, args["indices"].shape[-1], INTERPRETER).block_n == 64
    assert_matches_reference(args, case.num_splits)


def test_rows_without_valid_entries_give_zero_and_inf():
    case = Case(M1, 3, ListSpec(7, 2, 8, "mixed"), ListSpec(5, 64, 1, "mixed"), sink=True, invalid_rows=True)
    args = build(case)
    args["extra_indices"][0, 0] = -1  # row (0, 0): main length 0 and no valid extra entry
    out, lse = assert_matches_reference(args, num_splits=2)
    assert bool((out[0, 0] == 0).all())
    assert bool(torch.isposinf(lse[0, :, 0]).all())


def test_splits_without_entries_write_nothing_and_the_combine_skips_them(monkeypatch):
    """A split whose share of both lists is empty (short topk_length) exits before loading the query: its
    partial slots keep what was there before (NaN here) and the combine does not read them."""
    import mlaverify.kernels.sparse_decode as sd

    seen = {}

    def poisoned_run_all(launches):
        split, combine = launches
        part_out, part_lse = combine.args[0], combine.args[1]  # the partial buffers the split kernel writes
        part_out.fill_(float("nan"))
        part_lse.fill_(float("nan"))
        seen.update(part_lse=part_lse, constexprs=split.constexprs)
        real_run_all(launches)

    real_run_all = sd.run_all
    monkeypatch.setattr(sd, "run_all", poisoned_run_all)
    case = Case(M1, 16, ListSpec(300, 64, 8, "mixed"), ListSpec(40, 2, 30, "mixed"), b=3, s_q=1, seed=11)
    args = build(case)
    out, lse = sparse_decode(**args, num_splits=4)
    assert_close_to_reference(args, out, lse)
    assert seen["constexprs"]["FINAL"] is False
    block_n = seen["constexprs"]["BLOCK_N"]
    lengths, x_lengths = args["topk_length"].tolist(), args["extra_topk_length"].tolist()
    written = ~torch.isnan(seen["part_lse"])  # [rows, splits, h_q]

    def has_share(n, split):  # the kernel's cut of n entries in 4 splits of whole BLOCK_N steps
        chunk = -(-(-(-n // 4)) // block_n) * block_n
        return min(split * chunk, n) < min(split * chunk + chunk, n)

    skipped = 0
    for i in range(case.b):
        for split in range(4):
            has = has_share(lengths[i], split) or has_share(x_lengths[i], split)
            assert bool(written[i, split].all()) == has and bool(written[i, split].any()) == has, (i, split)
            skipped += not has
    assert skipped > 0  # the case holds such splits


@pytest.mark.parametrize("num_splits", [1, 3], ids=["splits1", "splits3"])
def test_repeated_runs_are_bit_identical(num_splits):
    args = build(Case(V32, 16, ListSpec(100, 61, 3, "mixed"), sink=True, seed=3))
    first = sparse_decode(**args, num_splits=num_splits)
    second = sparse_decode(**args, num_splits=num_splits)
    assert bits_equal(first[0], second[0]) and bits_equal(first[1], second[1])


def test_batch_permutation_permutes_outputs_bit_for_bit():
    args = build(Case(M1, 16, ListSpec(40, 64, 2, "mixed"), ListSpec(30, 2, 20, "mixed"), b=4, seed=5))
    perm = torch.tensor([2, 0, 3, 1])
    permuted = dict(args)
    for name in ("q", "indices", "topk_length", "extra_indices", "extra_topk_length"):
        permuted[name] = args[name][perm]
    out, lse = sparse_decode(**args)
    p_out, p_lse = sparse_decode(**permuted)
    assert bits_equal(p_out, out[perm]) and bits_equal(p_lse, lse[perm])


def test_api_dispatches_to_the_kernel():
    args = build(Case(V32, 16, ListSpec(7, 2, 9), ListSpec(5, 61, 1, "mixed"), sink=True, seed=7))
    meta, _ = get_mla_metadata()
    out, lse = flash_mla_with_kvcache(
        args["q"], args["k_cache"], None, None, 512, meta, softmax_scale=0.05, is_fp8_kvcache=True,
        indices=args["indices"], attn_sink=args["attn_sink"], extra_k_cache=args["extra_k_cache"],
        extra_indices_in_kvcache=args["extra_indices"], extra_topk_length=args["extra_topk_length"],
    )
    direct = sparse_decode(**args, softmax_scale=0.05)
    assert bits_equal(out, direct[0]) and bits_equal(lse, direct[1])
    with pytest.raises(ValueError, match="tile_scheduler_metadata"):
        flash_mla_with_kvcache(
            args["q"][:1], args["k_cache"], None, None, 512, meta, is_fp8_kvcache=True, indices=args["indices"][:1]
        )


def _bad(args: dict, **changes) -> dict:
    return {**args, **changes}


BAD_INPUTS = [
    ("indices-int64", lambda a: _bad(a, indices=a["indices"].long()), TypeError, "indices"),
    ("topk_length-too-long", lambda a: _bad(a, topk_length=torch.full((3,), 8, dtype=torch.int32)), ValueError,
     "topk_length"),
    ("index-out-of-cache", lambda a: _bad(a, indices=torch.full_like(a["indices"], 10**6)), ValueError, "indices"),
    ("bytes-per-token", lambda a: _bad(a, k_cache=torch.zeros(2, 4, 1, 600, dtype=torch.uint8)), ValueError,
     "k_cache"),
    ("sink-shape", lambda a: _bad(a, attn_sink=torch.zeros(5)), ValueError, "attn_sink"),
    ("softmax_scale-str", lambda a: _bad(a, softmax_scale="0.1"), TypeError, "softmax_scale"),
    ("num_splits-zero", lambda a: _bad(a, num_splits=0), ValueError, "num_splits"),
]


@pytest.mark.parametrize("mutate, error, name", [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs_raise_naming_the_argument(mutate, error, name):
    args = build(Case(V32, 3, ListSpec(7, 2, 4)))
    with pytest.raises(error, match=name):
        sparse_decode(**mutate(args))


def test_api_rejects_sparse_mode_misuse():
    args = build(Case(M1, 3, ListSpec(7, 2, 4)))
    with pytest.raises(ValueError, match="causal"):
        flash_mla_with_kvcache(args["q"], args["k_cache"], None, None, 512, get_mla_metadata()[0], causal=True,
                               is_fp8_kvcache=True, indices=args["indices"])
    with pytest.raises(ValueError, match="num_splits"):
        flash_mla_with_kvcache(args["q"], args["k_cache"], None, None, 512, get_mla_metadata()[0], num_splits=4,
                               is_fp8_kvcache=True, indices=args["indices"])


def test_runtime_rejects_devices_the_mode_cannot_serve():
    assert _runtime.mode() == ("interpreted" if _runtime.INTERPRETED else "compiled")
    with pytest.raises(RuntimeError, match="q: tensor is on meta"):
        _runtime.require_device(torch.empty(1, device="meta"), "q")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only process arrangement")
def test_runtime_mode_is_chosen_before_kernels_are_built():
    """No CUDA: the package selects the interpreter itself, unless the user chose a mode."""
    probe = (
        "import torch, mlaverify.kernels as k, mlaverify.kernels._runtime as r\n"
        "print(r.mode())\n"
        "try:\n"
        "    r.require_device(torch.zeros(1), 'q'); print('served')\n"
        "except RuntimeError as e:\n"
        "    print(e)\n"
    )
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    auto = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert auto.stdout.split("\n")[:2] == ["interpreted", "served"], auto.stderr
    env["TRITON_INTERPRET"] = "0"
    forced = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    lines = forced.stdout.split("\n")
    assert lines[0] == "compiled", forced.stderr
    assert "q: tensor is on cpu" in lines[1] and "TRITON_INTERPRET=1" in lines[1]


def _production_args(model: ModelType, b: int, h_q: int, main: ListSpec, extra: ListSpec | None) -> dict:
    """Production-size inputs, drawn on the CPU from a seed and quantized on the GPU (no NaN
    poisoning: its per-slot loop is too slow at this size)."""
    case = Case(model, h_q, main, extra, b=b, s_q=2, sink=True, seed=11)
    g = _gen(case.seed)
    args = {"q": torch.randn(b, 2, h_q, model.d_qk, generator=g).bfloat16().cuda()}
    for names, spec in _LISTS:
        spec = getattr(case, spec)
        if spec is None:
            continue
        k = torch.randn(spec.num_blocks, spec.page_block, 1, model.d_qk, generator=g).bfloat16()
        cache = quantize_kv_cache(k.cuda(), model)
        lengths = _lengths(spec, b)
        args.update(zip(names, (cache, _indices(case, spec, g).cuda(), None if lengths is None else lengths.cuda())))
    args["attn_sink"] = torch.randn(h_q, generator=g).cuda()
    return args


GPU_CASES = [
    pytest.param(V32, 128, 128, ListSpec(2048, 64, 1024), None, id="v32-b128-h128-topk2048"),
    pytest.param(M1, 74, 64, ListSpec(128, 256, 64), ListSpec(512, 64, 256, "mixed"), id="model1-config1-b74"),
    pytest.param(M1, 64, 128, ListSpec(128, 256, 64), ListSpec(1024, 2, 8192, "mixed"), id="model1-config4-b64"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("model, b, h_q, main, extra", GPU_CASES)
def test_production_shapes_on_gpu(model, b, h_q, main, extra):
    args = _production_args(model, b, h_q, main, extra)
    out, lse = sparse_decode(**args)
    assert_close_to_reference(args, out, lse)
    again = sparse_decode(**args)
    assert bits_equal(out, again[0]) and bits_equal(lse, again[1])
