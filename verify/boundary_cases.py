"""Explicit cases at and around every kernel tile, split and page boundary (issue 11).

    boundary_cases("sparse_decode", "model1")   # list[Case], deterministic
    BOUNDARY_CLASSES                             # class name -> what it reaches

The drawn `ci` cases keep lengths small on CPU, so loops never leave their first tile. These
cases are small where cost grows (b, h_q) and long where the corner lives (one list of 1025+
entries, one 130-300 token MHA sequence, one dense decode row of 1025-2100 keys). Lengths come
from `kernel_tiles` (the kernels' own launch configs): tile - 1, tile, tile + 1, several tiles
plus a tail, the split size's edges, a length whose last split is empty. Every case carries a
`boundary class` (`case_class(case)`) for reports. v32 and model1 get different seeds and
page-block assignments, so the two models never run identical draws.
"""
from __future__ import annotations

import math

from mlaverify.verify.cases import Case
from mlaverify.verify.kernel_tiles import around, kernel_tiles

__all__ = ["BOUNDARY_CLASSES", "PAGE_BLOCKS", "GQA_GROUPS", "boundary_cases", "case_class"]

# page block sizes of the issue: odd, one off a power of two, FlashMLA's 64 and the MODEL1 sizes
PAGE_BLOCKS = (1, 2, 61, 63, 64, 65, 69, 128, 256, 576)
# non-power-of-two GQA groups (h_q, h_kv): groups 3, 5, 6, 7 with h_kv 2, 3, 8
GQA_GROUPS = ((6, 2), (15, 3), (48, 8), (21, 3), (10, 2), (24, 8))

BOUNDARY_CLASSES = {
    "tile": "list / key length at tile - 1, tile, tile + 1 and several tiles plus a tail",
    "split": "lengths at the split size's edges and a long row whose last split is empty",
    "page": "page block sizes 1 .. 576 with several pages and a partial one read",
    "head_tile2": "more query heads than one head tile, finite sink, valid entries",
    "topk_tail": "top-k > 64 with a partial last tile under topk_length",
    "q_head_stride": "q a transposed view: head stride != d_qk",
    "duplicates": "repeated positions inside one index list",
    "gqa_nonpow2": "GQA groups 3, 5, 6, 7 with h_kv 2, 3, 8",
    "mha_multitile": "causal MHA sequences of 130-300 tokens (several query and key tiles)",
    "mha_empty": "empty and length-1 MHA sequences, q and k separately",
    "window_one_sided": "one-sided sliding windows that restrict (right-only non-causal, s_q > 1)",
}
_CLASS_OF: dict[str, str] = {}


def case_class(case: Case) -> str | None:
    """The boundary class a boundary case was made for (None for other cases)."""
    return _CLASS_OF.get(case.id)


def _add(out: list[Case], cls: str, case: Case) -> None:
    _CLASS_OF.setdefault(case.id, cls)
    out.append(case)


def _model_seed(model: str, i: int) -> int:
    return 1100 + 100 * ("v32", "model1", "d192", "d128").index(model) + i  # models draw independently


def _rotate(seq, model: str) -> tuple:
    k = 3 if model in ("model1", "d128") else 0
    return tuple(seq[k:]) + tuple(seq[:k])


def _empty_last_split(split: int, tile: int, lo: int, hi: int, splits: int) -> int:
    """A length in [lo, hi] whose chunks (rounded to tiles) leave the last of `splits` splits empty."""
    for n in range(lo, hi + 1):
        count = min(splits, math.ceil(n / split))
        chunk = math.ceil(math.ceil(n / count) / tile) * tile
        if chunk * (count - 1) >= n:
            return n
    return lo


def _sparse_decode(model: str) -> list[Case]:
    t = kernel_tiles()["sparse_decode"]
    out: list[Case] = []
    base = dict(op="sparse_decode", model=model)
    lengths = sorted({n for tile in t.list_tiles for n in around(tile)} | {t.split - 1, t.split, t.split + 1})
    pbs = _rotate(PAGE_BLOCKS, model)
    for i, n in enumerate(lengths):  # one list of exactly n considered entries, over several pages
        pb = pbs[i % len(pbs)]
        _add(out, "tile", Case(**base, seed=_model_seed(model, i), b=1, s_q=1, h_q=2, s_kv=max(n + 40, 3 * pb + pb // 2),
                               topk=n, page_block_size=pb, topk_length="full" if i % 2 else "none", sink="finite"))
    long = _empty_last_split(t.split, max(t.list_tiles), 8 * t.split + 1, 2100, 8)
    for j, (n, pb) in enumerate(((8 * t.split + 1, pbs[-1]), (long, 576))):
        _add(out, "split", Case(**base, seed=_model_seed(model, 20 + j), b=1, s_q=1, h_q=1, s_kv=n + 300, topk=n,
                                page_block_size=pb))
    for j, pb in enumerate(pbs[:6]):  # the remaining page sizes, with an extra cache of another size
        xpb = pbs[(j + 5) % len(pbs)]
        _add(out, "page", Case(**base, seed=_model_seed(model, 30 + j), b=1, s_q=1, h_q=2, s_kv=3 * pb + pb // 2 + 1,
                               topk=96, page_block_size=pb, extra_s_kv=2 * xpb + 5, extra_topk=40,
                               extra_page_block_size=xpb, extra_topk_length="full"))
    _add(out, "head_tile2", Case(**base, seed=_model_seed(model, 40), b=1, s_q=1, h_q=128, s_kv=300, topk=100,
                                 page_block_size=64, sink="finite", topk_length="full"))
    _add(out, "topk_tail", Case(**base, seed=_model_seed(model, 41), b=2, s_q=1, h_q=2, s_kv=400, topk=200,
                                page_block_size=pbs[1], topk_length="partial", extra_s_kv=300, extra_topk=100,
                                extra_page_block_size=pbs[2], extra_topk_length="partial", sink="finite"))
    _add(out, "q_head_stride", Case(**base, seed=_model_seed(model, 42), b=1, s_q=3, h_q=16, s_kv=100, topk=48,
                                    page_block_size=64, q_transposed=True))
    _add(out, "duplicates", Case(**base, seed=_model_seed(model, 43), b=1, s_q=2, h_q=2, s_kv=100, topk=40,
                                 page_block_size=pbs[3], extra_s_kv=60, extra_topk=20, extra_page_block_size=2,
                                 duplicates=True))
    return out


def _sparse_prefill(model: str) -> list[Case]:
    t = kernel_tiles()["sparse_prefill"]
    out: list[Case] = []
    base = dict(op="sparse_prefill", model=model)
    lengths = sorted({n for tile in t.list_tiles for n in around(tile)})
    for i, n in enumerate(lengths + [600 + 7 * (model == "model1"), 700]):  # past the CPU draws' 576
        _add(out, "tile" if n <= 576 else "split", Case(**base, seed=_model_seed(model, i), s_q=2 if n < 600 else 1,
                                                      h_q=2, s_kv=n + 30, topk=n,
                                                      topk_length="full" if i % 2 else "none", sink="finite"))
    for j, h in enumerate(sorted({2 * tile for tile in t.head_tiles} | {max(t.head_tiles) + 16})):
        _add(out, "head_tile2", Case(**base, seed=_model_seed(model, 40 + j), s_q=1, h_q=h, s_kv=200, topk=100,
                                     sink="finite", topk_length="full"))
    _add(out, "topk_tail", Case(**base, seed=_model_seed(model, 45), s_q=4, h_q=2, s_kv=400, topk=200,
                                topk_length="partial", sink="finite"))
    _add(out, "q_head_stride", Case(**base, seed=_model_seed(model, 46), s_q=3, h_q=16, s_kv=100, topk=48,
                                    q_transposed=True))
    _add(out, "duplicates", Case(**base, seed=_model_seed(model, 47), s_q=2, h_q=2, s_kv=100, topk=40,
                                 duplicates=True))
    return out


def _dense_decode(model: str) -> list[Case]:
    t = kernel_tiles()["dense_decode"]
    out: list[Case] = []
    base = dict(op="dense_decode", model=model)
    lengths = sorted({n for tile in t.list_tiles for n in around(tile)} | {t.split - 1, t.split, t.split + 1})
    pbs = _rotate(PAGE_BLOCKS, model)
    for i, n in enumerate(lengths):
        _add(out, "tile", Case(**base, seed=_model_seed(model, i), b=1, s_q=1, h_q=2, s_kv=n,
                               page_block_size=pbs[i % len(pbs)]))
    for j, n in enumerate((4 * t.split + 1, 2100 - 37 * (model == "model1"))):  # one long row
        _add(out, "split", Case(**base, seed=_model_seed(model, 20 + j), b=1, s_q=1, h_q=1, s_kv=n,
                                page_block_size=(576, 128)[j]))
    for j, pb in enumerate(pbs[:5]):
        _add(out, "page", Case(**base, seed=_model_seed(model, 30 + j), b=2, s_q=1, h_q=2, s_kv=3 * pb + pb // 2 + 1,
                               page_block_size=pb, seqlens="varlen" if j % 2 else "full"))
    for j, (h_q, h_kv) in enumerate(GQA_GROUPS[:4] if model == "v32" else GQA_GROUPS[2:]):
        _add(out, "gqa_nonpow2", Case(**base, seed=_model_seed(model, 40 + j), b=1, s_q=2 + j % 2, h_q=h_q, h_kv=h_kv,
                                      s_kv=80 + 13 * j, page_block_size=64, causal=bool(j % 2)))
    for j, rows in enumerate(sorted(t.query_tiles)):  # row tiles: s_q * group just past a tile
        _add(out, "tile", Case(**base, seed=_model_seed(model, 50 + j), b=1, s_q=rows // 8 + 1, h_q=8, s_kv=90,
                               page_block_size=64, causal=True))
    _add(out, "q_head_stride", Case(**base, seed=_model_seed(model, 60), b=1, s_q=3, h_q=8, h_kv=2, s_kv=100,
                                    page_block_size=64, q_transposed=True))
    return out


def _mha_prefill(model: str) -> list[Case]:
    t = kernel_tiles()["mha_prefill"]
    out: list[Case] = []
    base = dict(op="mha_prefill", model=model)
    small = min(t.list_tiles)
    pairs = [(a, b) for a, b in zip(around(small), reversed(around(min(t.query_tiles))))]
    for i, (sq, sk) in enumerate(pairs):
        _add(out, "tile", Case(**base, seed=_model_seed(model, i), b=1, s_q=sq, s_kv=sk, h_q=2, causal=bool(i % 2),
                               backward=i < 2))
    for j, n in enumerate(sorted({max(t.query_tiles) + 2, 257 + 30 * (model == "d128")})):
        _add(out, "mha_multitile", Case(**base, seed=_model_seed(model, 20 + j), b=1, s_q=n, s_kv=n + 13 * j, h_q=1,
                                        causal=True, backward=j == 0))
    _add(out, "mha_multitile", Case(**base, seed=_model_seed(model, 22), b=1, s_q=150, s_kv=170, h_q=1,
                                    causal=False))
    for j, mode in enumerate(("zero_q", "zero_k")):
        _add(out, "mha_empty", Case(**base, seed=_model_seed(model, 30 + j), b=3, s_q=20, s_kv=24, h_q=2,
                                    seqlens=mode, causal=bool(j), backward=True))
    for j, (sq, sk) in enumerate(((1, 40), (40, 1))):
        _add(out, "mha_empty", Case(**base, seed=_model_seed(model, 32 + j), b=2, s_q=sq, s_kv=sk, h_q=2,
                                    causal=bool(j), backward=True))
    for j, (h_q, h_kv) in enumerate(GQA_GROUPS[2:] if model == "d192" else GQA_GROUPS[:4]):
        _add(out, "gqa_nonpow2", Case(**base, seed=_model_seed(model, 40 + j), b=2, s_q=20, s_kv=26, h_q=h_q, h_kv=h_kv,
                                      causal=bool(j % 2), backward=j < 2))
    for j, (left, right, sq, sk) in enumerate(((-1, 2, 40, 40), (-1, 0, 30, 44), (3, -1, 36, 30))):
        _add(out, "window_one_sided", Case(**base, seed=_model_seed(model, 50 + j), b=1, s_q=sq, s_kv=sk, h_q=2,
                                           window_left=left, window_right=right, backward=j == 0))
    return out


_BUILD = {"sparse_decode": _sparse_decode, "sparse_prefill": _sparse_prefill, "dense_decode": _dense_decode,
          "mha_prefill": _mha_prefill}


def boundary_cases(op: str, model: str) -> list[Case]:
    """The boundary cases of one op and model (duplicates dropped, order fixed)."""
    if op not in _BUILD:
        raise ValueError(f"op: expected one of {list(_BUILD)}, got {op!r}")
    cases = _BUILD[op](model)
    return list({c.id: c for c in cases}.values())
