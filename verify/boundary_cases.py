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

from mlaverify.verify.cases import Case
from mlaverify.verify.kernel_tiles import around, kernel_tiles, sparse_decode_splits

__all__ = ["BOUNDARY_CLASSES", "PAGE_BLOCKS", "GQA_GROUPS", "boundary_cases", "case_class", "extra_cases"]

# page block sizes of the issue: odd, one off a power of two, FlashMLA's 64 and the MODEL1 sizes
PAGE_BLOCKS = (1, 2, 61, 63, 64, 65, 69, 128, 256, 576)
# non-power-of-two GQA groups (h_q, h_kv) per model: groups 3, 5, 6, 7 with h_kv 2, 3, 8, few heads (cost)
GQA_GROUPS = {"v32": ((6, 2), (15, 3)), "model1": ((24, 8), (21, 3)),
              "d192": ((21, 3), (12, 2)), "d128": ((10, 2), (24, 8))}

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


def _empty_last_split(lo: int, hi: int) -> int:
    """A length in [lo, hi] whose splits (rounded to whole tiles by the kernel) leave the last one empty."""
    for n in range(lo, hi + 1):
        count, chunk = sparse_decode_splits(n)
        if count > 1 and chunk * (count - 1) >= n:
            return n
    raise RuntimeError(f"boundary cases: no length in [{lo}, {hi}] leaves the last sparse decode split empty")


def _sparse_decode(model: str) -> list[Case]:
    t = kernel_tiles()["sparse_decode"]
    out: list[Case] = []
    base = dict(op="sparse_decode", model=model)
    # one list of exactly n considered entries over several pages: tile edges, the split size's edges
    lengths = sorted({n for tile in t.list_tiles for n in around(tile)} | {s + 1 for s in t.split_sizes})
    pbs = _rotate(PAGE_BLOCKS, model)
    for i, n in enumerate(lengths):
        pb = pbs[i % len(pbs)]
        _add(out, "tile", Case(**base, seed=_model_seed(model, i), b=1, s_q=1, h_q=2, s_kv=max(n + 40, 3 * pb + pb // 2),
                               topk=n, page_block_size=pb, topk_length="full" if i % 2 else "none", sink="finite"))
    count, _ = sparse_decode_splits(2100)  # the most splits one short row gets on CPU
    edge = _empty_last_split(count * t.split + 1, 2100)  # past `count` minimal splits, the last one empty
    _add(out, "split", Case(**base, seed=_model_seed(model, 20), b=1, s_q=1, h_q=1, s_kv=edge + 300, topk=edge,
                            page_block_size=pbs[len(lengths) % len(pbs)]))
    rest = pbs[len(lengths) + 1:] or pbs[::3]  # page sizes no length case used (else a spread of them)
    for j in range(0, len(rest), 2):  # the remaining page sizes: main and extra cache, several pages each
        pb, xpb = rest[j], rest[(j + 1) % len(rest)]
        _add(out, "page", Case(**base, seed=_model_seed(model, 30 + j), b=1, s_q=1, h_q=2,
                               s_kv=max(3 * pb + pb // 2 + 1, 120), topk=96, page_block_size=pb,
                               extra_s_kv=max(2 * xpb + xpb // 2 + 1, 50), extra_topk=40, extra_page_block_size=xpb,
                               extra_topk_length="full"))
    _add(out, "head_tile2", Case(**base, seed=_model_seed(model, 40), b=1, s_q=2, h_q=128, s_kv=300, topk=100,
                                 page_block_size=64, sink="finite", topk_length="full", q_transposed=True))
    _add(out, "topk_tail", Case(**base, seed=_model_seed(model, 41), b=2, s_q=1, h_q=2, s_kv=400, topk=200,
                                page_block_size=pbs[1], topk_length="partial", extra_s_kv=300, extra_topk=100,
                                extra_page_block_size=pbs[2], extra_topk_length="partial", sink="finite",
                                duplicates=True))
    return out


def _edges(tiles: tuple[int, ...]) -> list[int]:
    """around() the largest tile, and each smaller tile's two neighbours."""
    big = max(tiles)
    return sorted(set(around(big)) | {n for t in tiles if t != big for n in (t - 1, t, t + 1)})


def _sparse_prefill(model: str) -> list[Case]:
    t = kernel_tiles()["sparse_prefill"]
    out: list[Case] = []
    base = dict(op="sparse_prefill", model=model)
    lengths = _edges(t.list_tiles)
    for i, n in enumerate(lengths):
        _add(out, "tile", Case(**base, seed=_model_seed(model, i), s_q=2, h_q=2, s_kv=n + 30, topk=n,
                               topk_length="full" if i % 2 else "none", sink="finite"))
    n = 600 + 7 * (model == "model1")  # past the CPU draws' 576, a partial last tile
    _add(out, "split", Case(**base, seed=_model_seed(model, 20), s_q=1, h_q=2, s_kv=n + 40, topk=n))
    heads = sorted({2 * tile for tile in t.head_tiles})  # the second head tile of each mode, partly filled
    for j, h in enumerate(heads):
        _add(out, "head_tile2", Case(**base, seed=_model_seed(model, 40 + j), s_q=2, h_q=h - 8 * (h > 64), s_kv=200,
                                     topk=100, sink="finite", topk_length="full", q_transposed=j == 0))
    _add(out, "topk_tail", Case(**base, seed=_model_seed(model, 45), s_q=4, h_q=2, s_kv=400, topk=200,
                                topk_length="partial", sink="finite", duplicates=True))
    return out


def _dense_decode(model: str) -> list[Case]:
    t = kernel_tiles()["dense_decode"]
    out: list[Case] = []
    base = dict(op="dense_decode", model=model)
    lengths = sorted(set(_edges(t.list_tiles)) | {t.split + 1})
    pbs = _rotate(PAGE_BLOCKS, model)
    used: set[int] = set()
    for i, n in enumerate(lengths):  # each length on a page size it spans twice and a bit, else 64
        pb = next((p for p in pbs[i:] + pbs[:i] if p not in used and n > 2 * p), 64)
        used.add(pb)
        _add(out, "tile", Case(**base, seed=_model_seed(model, i), b=1, s_q=1, h_q=2, s_kv=n, page_block_size=pb))
    n = 4 * t.split + 1 if model == "v32" else 5 * t.split + 17  # one long row, 1025-2100 keys
    pb = next(p for p in reversed(pbs) if p not in used)
    used.add(pb)
    _add(out, "split", Case(**base, seed=_model_seed(model, 20), b=1, s_q=1, h_q=1, s_kv=n, page_block_size=pb))
    for j, pb in enumerate(p for p in pbs if p not in used):
        _add(out, "page", Case(**base, seed=_model_seed(model, 30 + j), b=1, s_q=1, h_q=2,
                               s_kv=max(2 * pb + pb // 4 + 1, 100), page_block_size=pb))  # 2 pages and a partial
    groups = GQA_GROUPS[model]
    rows = min(t.query_tiles) + 2  # query rows per kv head (s_q * group) just past the smallest row tile
    for j, (h_q, h_kv) in enumerate(groups):
        s_q = -(-rows // (h_q // h_kv))
        _add(out, "gqa_nonpow2", Case(**base, seed=_model_seed(model, 40 + j), b=1, s_q=s_q, h_q=h_q, h_kv=h_kv,
                                      s_kv=80 + 13 * j, page_block_size=64, causal=j == 0, q_transposed=j == 1))
    return out


def _mha_prefill(model: str) -> list[Case]:
    t = kernel_tiles()["mha_prefill"]
    out: list[Case] = []
    base = dict(op="mha_prefill", model=model)
    small = min(t.list_tiles)
    pairs = [(a, b) for a, b in zip(around(small), reversed(around(min(t.query_tiles))))]
    for i, (sq, sk) in enumerate(pairs):
        _add(out, "tile", Case(**base, seed=_model_seed(model, i), b=1, s_q=sq, s_kv=sk, h_q=2, causal=bool(i % 2),
                               backward=i == 0))
    # the compiled key tiles' edges ride on the other classes' key lengths (each case costs seconds on CPU)
    k = [n for tile in sorted(t.list_tiles) if tile != small for n in (tile - 1, tile, tile + 1)]
    k += [k[-1]] * (6 - len(k))
    n = max(t.query_tiles) + 2 + 16 * (model == "d128")  # past the largest query tile, a partial last tile
    _add(out, "mha_multitile", Case(**base, seed=_model_seed(model, 20), b=1, s_q=n, s_kv=n + 5, h_q=1, causal=True,
                                    backward=True))
    _add(out, "mha_multitile", Case(**base, seed=_model_seed(model, 21), b=1, s_q=300 - 40 * (model == "d128"),
                                    s_kv=270, h_q=1, causal=model == "d192"))
    for j, mode in enumerate(("zero_q", "zero_k")):  # d192's zero_q seed: its empty q sequence is not the last
        _add(out, "mha_empty", Case(**base, seed=_model_seed(model, 30 + j) + 4 * (model == "d192" and j == 0), b=3,
                                    s_q=20, s_kv=24, h_q=2, seqlens=mode, causal=bool(j), backward=j == 1))
    for j, (sq, sk) in enumerate(((1, k[4]), (40, 1))):
        _add(out, "mha_empty", Case(**base, seed=_model_seed(model, 32 + j), b=2, s_q=sq, s_kv=sk, h_q=2,
                                    causal=bool(j)))
    for j, (h_q, h_kv) in enumerate(GQA_GROUPS[model]):
        _add(out, "gqa_nonpow2", Case(**base, seed=_model_seed(model, 40 + j), b=2, s_q=20, s_kv=k[2 * j], h_q=h_q,
                                      h_kv=h_kv, causal=bool(j % 2), backward=j == 0))
    for j, (left, right, sq, sk) in enumerate(((-1, 2, 40, k[1]), (-1, 0, 30, k[3]), (3, -1, 36, k[5]))):
        _add(out, "window_one_sided", Case(**base, seed=_model_seed(model, 50 + j), b=1, s_q=sq, s_kv=sk, h_q=2,
                                           window_left=left, window_right=right))
    return out


_BUILD = {"sparse_decode": _sparse_decode, "sparse_prefill": _sparse_prefill, "dense_decode": _dense_decode,
          "mha_prefill": _mha_prefill}


def boundary_cases(op: str, model: str) -> list[Case]:
    """The boundary cases of one op and model (duplicates dropped, order fixed)."""
    if op not in _BUILD:
        raise ValueError(f"op: expected one of {list(_BUILD)}, got {op!r}")
    cases = _BUILD[op](model)
    return list({c.id: c for c in cases}.values())


def extra_cases(op: str, model: str) -> list[Case]:
    """What every profile runs after an op's corner cases: the boundary cases, then the covering array."""
    from mlaverify.verify.covering import covering_cases

    return boundary_cases(op, model) + covering_cases(op, model)
