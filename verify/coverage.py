"""Coverage that counts: a boundary feature is covered by a case only where it was observable (issue 11).

    observed_features(case, inputs)      # frozenset of REQUIRED[case.op] features this case could fail on
    summary = coverage_summary(results)  # {"op/model": {"features": {f: {"run", "observed", ...}}, "unobserved": [...]}}
    unobserved(summary)                  # ["sparse_decode/v32: page576", ...]  (--require-coverage fails on these)

The reports render ``settings["coverage"]`` (`report_common.coverage_view`): observed / run per
feature and op/model, the unobserved features listed, and the verdict NOT COVERED when required.

Everything is computed from the `Case` and its materialized inputs (which entries are valid and
considered, which heads have a sink that leaves the output visible, which keys each query sees),
never from an implementation's outputs. A feature is observed when (a) the output it feeds is not
forced to zero or empty: some considered, valid entry reaches some query row through a head whose
sink is not +inf, and (b) the feature's own part of the computation reaches that output:
- list lengths ``len:T-1 / len:T / len:T+1`` (T each list tile of the op's kernels, from
  `kernel_tiles`): a row whose considered length is that, with a valid entry in its last tile;
  ``len:tail`` a considered length > 2T, not a multiple of T, with a valid entry in the partial tile;
  ``split`` a considered length past the split size with valid entries in more than one split;
  ``long`` a valid entry at list slot >= 1024 (dense decode: a sequence longer than 1024 keys).
- ``page<B>`` (decode ops, each size of `boundary_cases.PAGE_BLOCKS`): entries read from two or more
  pages of that size, and for B > 64 an entry at offset >= 64 inside its page.
- ``head_tile2``: a head at index >= the largest head tile with a finite sink or none, in a row
  with a valid entry; ``topk_tail``: a row whose topk_length cuts a list longer than 64 inside a
  tile, with a valid entry in that partial tile.
- ``q_head_stride``: q's head stride differs from d_qk, in a case with a visible output;
  ``duplicates``: a position repeated among a row's considered valid entries.
- ``gqa_nonpow2``: h_kv > 1 and a group that is not a power of two, with some key read.
- mha: ``multitile`` a query and its key sequence both longer than the largest query tile;
  ``empty_q`` / ``empty_k`` a zero-length side next to non-empty sequences; ``len1_q`` / ``len1_k``
  a length-1 side whose other side is longer; ``window_right_only`` / ``window_left_only`` a
  non-causal one-sided window that hides a key some query would otherwise see.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable

import torch

from mlaverify.verify.boundary_cases import PAGE_BLOCKS
from mlaverify.verify.cases import Case
from mlaverify.verify.kernel_tiles import kernel_tiles

__all__ = ["required_features", "observed_features", "coverage_summary", "unobserved", "attach_coverage", "print_coverage"]

_LONG = 1024  # list slots / keys past 16 splits of 64: the CPU draws never reach it


def _len_features(tiles: tuple[int, ...]) -> list[str]:
    return [f"len:{t}{d}" for t in tiles for d in ("-1", "", "+1")] + [f"len:{t}tail" for t in tiles]


def required_features(op: str) -> tuple[str, ...]:
    t = kernel_tiles()[op]
    if op == "sparse_decode":
        return tuple(_len_features(t.list_tiles) + ["split", "long", "head_tile2", "topk_tail", "q_head_stride",
                                                    "duplicates", "extra"] + [f"page{b}" for b in PAGE_BLOCKS])
    if op == "sparse_prefill":
        return tuple(_len_features(t.list_tiles) + ["head_tile2", "topk_tail", "q_head_stride", "duplicates"])
    if op == "dense_decode":
        return tuple(_len_features(t.list_tiles) + ["split", "long", "gqa_nonpow2", "q_head_stride"]
                     + [f"page{b}" for b in PAGE_BLOCKS])
    return tuple(_len_features(t.list_tiles) + ["multitile", "empty_q", "empty_k", "len1_q", "len1_k",
                                                "gqa_nonpow2", "window_right_only", "window_left_only"])





def _length_hits(lengths: list[int], last_valid: list[int], tiles) -> set[str]:
    """Features of considered lengths L whose last valid slot is last_valid (-1: none)."""
    out = set()
    for n, last in zip(lengths, last_valid):
        if last < 0:
            continue
        for t in tiles:
            tile_start = (n - 1) // t * t
            if last < tile_start:
                continue
            for d, label in ((-1, "-1"), (0, ""), (1, "+1")):
                if n == t + d:
                    out.add(f"len:{t}{label}")
            if n > 2 * t and n % t:
                out.add(f"len:{t}tail")
    return out


def _sparse_rows(idx: torch.Tensor, valid: torch.Tensor, lengths: torch.Tensor | None, rows_per_len: int):
    """Per row: (considered length, considered valid mask)."""
    rows, topk = idx.shape
    if lengths is None:
        n = torch.full((rows,), topk, dtype=torch.long)
    else:
        n = lengths.long().repeat_interleave(rows_per_len)
    considered = torch.arange(topk)[None, :] < n[:, None]
    return n, valid & considered


def _visible_heads(sink: torch.Tensor | None, h_q: int) -> torch.Tensor:
    if sink is None:
        return torch.ones(h_q, dtype=torch.bool)
    return ~torch.isposinf(sink.float())


def _list_features(case: Case, idx, use, n, heads, tiles, split: int) -> set[str]:
    """Shared sparse features of one index list: idx [rows, topk], use = considered & valid."""
    f: set[str] = set()
    if not bool(heads.any()) or not bool(use.any()):
        return f
    slots = torch.arange(idx.shape[1])
    last = torch.where(use, slots[None, :], -1).max(-1).values
    f |= _length_hits(n.tolist(), last.tolist(), tiles)
    if split and bool(((n > split) & (last >= split)).any()):
        f.add("split")
    if idx.shape[1] > _LONG and bool(use[:, _LONG:].any()):
        f.add("long")
    t = max(tiles)
    cut = (n < idx.shape[1]) & (idx.shape[1] > 64) & (n > 64) & (n % t != 0)
    tail = use & (slots[None, :] >= (n // t * t)[:, None])
    if bool((cut & tail.any(-1)).any()):
        f.add("topk_tail")
    for r in range(idx.shape[0]):
        vals = idx[r][use[r]]
        if vals.numel() != vals.unique().numel():
            f.add("duplicates")
            break
    return f


def _page_features(idx: torch.Tensor, use: torch.Tensor, block: int) -> set[str]:
    pos = idx[use].long()
    if pos.numel() == 0 or block not in PAGE_BLOCKS:
        return set()
    pages = (pos // block).unique().numel()
    beyond = block <= 64 or bool(((pos % block) >= 64).any())
    return {f"page{block}"} if pages >= 2 and beyond else set()


def _common(case: Case, q: torch.Tensor, heads: torch.Tensor, any_use: bool, head_tiles) -> set[str]:
    f = set()
    if not any_use or not bool(heads.any()):
        return f
    if q.stride(-2) != q.shape[-1]:
        f.add("q_head_stride")
    big = max(head_tiles) if head_tiles else 0
    if big and case.h_q > big and bool(heads[big:].any()):
        f.add("head_tile2")
    return f


def _sparse_decode(case: Case, t: dict) -> set[str]:
    tiles = kernel_tiles()["sparse_decode"]
    heads = _visible_heads(t["attn_sink"], case.h_q)
    f: set[str] = set()
    any_use = False
    for key, cache, length in (("indices", "k_cache", "topk_length"),
                               ("extra_indices", "extra_k_cache", "extra_topk_length")):
        if t[key] is None:
            continue
        idx = t[key].reshape(-1, t[key].shape[-1]).long()
        n, use = _sparse_rows(idx, idx >= 0, t[length], case.s_q)
        any_use |= bool(use.any())
        f |= _list_features(case, idx, use, n, heads, tiles.list_tiles, tiles.split)
        if bool(heads.any()):
            f |= _page_features(idx, use, t[cache].shape[1])
        if key == "extra_indices" and bool(use.any()) and bool(heads.any()):
            f.add("extra")
    return f | _common(case, t["q"], heads, any_use, tiles.head_tiles)


def _sparse_prefill(case: Case, t: dict) -> set[str]:
    tiles = kernel_tiles()["sparse_prefill"]
    heads = _visible_heads(t["attn_sink"], case.h_q)
    idx = t["indices"].reshape(case.s_q, -1).long()
    n, use = _sparse_rows(idx, (idx >= 0) & (idx < case.s_kv), t["topk_length"], 1)
    f = _list_features(case, idx, use, n, heads, tiles.list_tiles, 0)
    return f | _common(case, t["q"], heads, bool(use.any()), tiles.head_tiles)


def _dense_decode(case: Case, t: dict) -> set[str]:
    tiles = kernel_tiles()["dense_decode"]
    lens = t["cache_seqlens"].long().tolist()
    f = _length_hits(lens, [n - 1 for n in lens], tiles.list_tiles)
    if any(n > tiles.split for n in lens):
        f.add("split")
    if any(n > _LONG for n in lens):
        f.add("long")
    block = t["k_cache"].shape[1]
    if block in PAGE_BLOCKS and any(n > block and (block <= 64 or n % block != 0 or n >= 2 * block) for n in lens):
        f.add(f"page{block}")
    group = case.h_q // case.h_kv
    if any(lens):
        if case.h_kv > 1 and group & (group - 1):
            f.add("gqa_nonpow2")
        if t["q"].stride(-2) != t["q"].shape[-1]:
            f.add("q_head_stride")
    return f


def _sees(case: Case, lq: int, lk: int) -> list[tuple[int, int]]:
    """(lo, hi) key range each query row of one sequence sees, hi exclusive (bottom-right aligned)."""
    out = []
    left, right = case.window_size
    for j in range(lq):
        diag = lk - lq + j
        hi = lk if not case.causal and right < 0 else min(lk, diag + (0 if case.causal and right < 0 else right) + 1)
        lo = 0 if left < 0 else max(0, diag - left)
        out.append((lo, max(lo, hi)))
    return out


def _mha_prefill(case: Case, t: dict) -> set[str]:
    tiles = kernel_tiles()["mha_prefill"]
    cq, ck = t["cu_seqlens_q"].tolist(), t["cu_seqlens_k"].tolist()
    lq = [cq[i + 1] - cq[i] for i in range(len(cq) - 1)]
    lk = [ck[i + 1] - ck[i] for i in range(len(ck) - 1)]
    f: set[str] = set()
    seen_any = False
    for a, b in zip(lq, lk):
        rows = _sees(case, a, b)
        seen = [r for r in rows if r[1] > r[0]]
        if not seen:
            continue
        seen_any = True
        f |= _length_hits([b], [max(r[1] for r in seen) - 1], tiles.list_tiles)
        big = max(tiles.query_tiles)
        if a > big and b > big:
            f.add("multitile")
        if a == 1 and b > 1:
            f.add("len1_q")
        if b == 1 and a > 1:
            f.add("len1_k")
        left, right = case.window_size
        if not case.causal and left < 0 <= right and any(r[1] < b for r in seen):
            f.add("window_right_only")
        if not case.causal and right < 0 <= left and any(r[0] > 0 for r in seen):
            f.add("window_left_only")
    if seen_any:
        if any(a == 0 and any(lq[i + 1:]) for i, a in enumerate(lq)):  # an empty q sequence before others
            f.add("empty_q")
        if any(b == 0 and a > 0 for a, b in zip(lq, lk)):
            f.add("empty_k")
        group = case.h_q // case.h_kv
        if case.h_kv > 1 and group & (group - 1):
            f.add("gqa_nonpow2")
    return f


_BY_OP = {"sparse_decode": _sparse_decode, "sparse_prefill": _sparse_prefill, "dense_decode": _dense_decode,
          "mha_prefill": _mha_prefill}


def observed_features(case: Case, inputs=None) -> frozenset[str]:
    """The required features of case.op that this case makes observable (materializes when inputs is None)."""
    if inputs is None:
        from mlaverify.verify.materialize import materialize

        inputs = materialize(case, "cpu")
    tensors = {k: (None if v is None else v.cpu()) for k, v in inputs.tensors.items()}
    return frozenset(_BY_OP[case.op](case, tensors) & set(required_features(case.op)))


def coverage_summary(results: Iterable) -> dict:
    """Per "op/model": for each required feature, cases run, cases where it was observed, and skipped
    cases where it would have been (the implementation does not claim them: reported, not "unobserved")."""
    cols: dict[str, str] = {}
    counts: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0, 0, 0]))
    for r in results:
        case = r.case
        col = f"{case.op}/{case.model}"
        cols.setdefault(col, case.op)
        obs = observed_features(case)
        for feature in required_features(case.op):
            cell = counts[col][feature]
            if r.status == "skip":
                cell[2] += feature in obs
            else:
                cell[0] += 1
                cell[1] += feature in obs
                cell[3] += feature in obs and r.status == "pass"
    out = {}
    for col, op in cols.items():
        feats = {f: {"run": c[0], "observed": c[1], "observed_passed": c[3], "skipped_observable": c[2]}
                 for f, c in ((f, counts[col][f]) for f in required_features(op))}
        out[col] = {"features": feats,
                    "unobserved": [f for f, c in feats.items() if c["observed"] == 0 and c["skipped_observable"] == 0],
                    "not_claimed": [f for f, c in feats.items() if c["observed"] == 0 and c["skipped_observable"] > 0]}
    return out


def unobserved(summary: dict) -> list[str]:
    return [f"{col}: {f}" for col, v in sorted(summary.items()) for f in v["unobserved"]]


def attach_coverage(report, args, profile: str, presets: bool) -> None:
    """Put the coverage summary and whether it is required into ``report.settings["coverage"]``."""
    required = getattr(args, "require_coverage", None)
    if required is None:
        required = profile == "ci" and not presets and getattr(args, "shard", None) is None
    summary = coverage_summary(report.cases)
    report.settings["coverage"] = {"required": bool(required), "columns": summary, "unobserved": unobserved(summary)}


def print_coverage(report, out) -> None:
    """Print the features no case made observable, and the failure when coverage was required."""
    cov = report.settings.get("coverage") or {}
    missing = cov.get("unobserved") or []
    if missing:
        print(f"coverage: {len(missing)} boundary features never observed: " + ", ".join(missing), file=out)
    if report.coverage_missing:
        print("coverage: FAIL (--require-coverage): NOT COVERED", file=out)
