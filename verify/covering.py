"""Pairwise covering arrays over each op's features, turned into `Case`s (issue 11).

    rows = pairwise(FACTORS["sparse_decode"], seed=0)   # list of {factor: level}, every pair of levels meets
    covering_cases("sparse_decode", "v32")               # the rows of that model as Cases

Features one at a time hide each other (h_q 128 only with sink +inf, big pages only where nothing
is read); a covering array makes every pair of levels of two factors meet in some case. The
generator is a small greedy one (AETG-style: per row, a few candidates each seeded with an
uncovered pair and filled level by level with the choice that covers most new pairs; the best
candidate is kept), deterministic for a given seed: no library on PyPI we checked is kept well
enough to be worth a dependency for ~40 lines. The model is a factor like any other, so v32 and
model1 (d192 and d128) get different rows. Cases stay cheap on the Triton interpreter: b <= 2,
and the long levels (600-entry lists, 128 heads) meet the other factors once each, not in bulk.

`VALUE_FACTOR` is the value distribution of keys and queries (`Case.dist`, every level of
`DIST_MODES`: FlashMLA's flat data and the five production distributions): every op's array has
it as a factor, so each distribution meets each level of every other factor (peaked queries with
two head tiles, wide logits with a long list, near-duplicate keys across big pages, ...).
"""
from __future__ import annotations

import random
from itertools import combinations
from typing import Mapping, Sequence

from mlaverify.verify.cases import DIST_MODES, MODELS, Case

__all__ = ["FACTORS", "VALUE_FACTOR", "pairwise", "uncovered_pairs", "covering_cases"]

VALUE_FACTOR: tuple[str, tuple] | None = ("dist", DIST_MODES)  # (Case field, levels) of the value distribution

FACTORS: dict[str, dict[str, tuple]] = {  # two levels where two suffice: each row costs seconds on CPU
    "sparse_decode": {
        "model": MODELS["sparse_decode"], "heads": ("one_tile", "two_tiles"), "topk": ("short", "tiles", "long"),
        "page": ("small", "odd", "big"), "length": ("partial", "mixed"), "sink": ("finite", "mixed"),
        "invalid": ("none", "rows"), "extra": ("none", "other"), "layout": ("strided", "transposed"),
    },
    "sparse_prefill": {
        "model": MODELS["sparse_prefill"], "heads": ("one_tile", "two_tiles"), "topk": ("short", "tiles", "long"),
        "length": ("partial", "mixed"), "sink": ("finite", "mixed"), "invalid": ("none", "some"),
        "layout": ("strided", "transposed"), "dups": (False, True),
    },
    "dense_decode": {
        "model": MODELS["dense_decode"], "group": ("mqa", "pow2", "nonpow2"), "keys": ("short", "tiles", "long"),
        "page": ("small", "odd", "big"), "causal": (False, True), "seqlens": ("varlen", "zero"),
        "layout": ("strided", "transposed"), "dtype": ("bf16", "fp16"),
    },
    "mha_prefill": {
        "model": MODELS["mha_prefill"], "group": ("pow2", "nonpow2"), "length": ("short", "tiles", "multi"),
        "mask": ("causal", "right_only", "left_only"), "seqlens": ("varlen", "zero_q", "zero_k"),
        "backward": (False, True), "layout": ("contiguous", "strided"), "dtype": ("bf16", "fp16"),
    },
}


def _pairs(factors: Mapping[str, Sequence]) -> set:
    names = list(factors)
    return {((a, x), (b, y)) for a, b in combinations(names, 2) for x in factors[a] for y in factors[b]}


def _covers(row: Mapping, names: list[str]) -> set:
    return {((a, row[a]), (b, row[b])) for a, b in combinations(names, 2)}


def pairwise(factors: Mapping[str, Sequence], seed: int = 0, candidates: int = 20) -> list[dict]:
    """A greedy pairwise covering array: rows ({factor: level}) in which every pair of levels meets."""
    names = list(factors)
    rng = random.Random(seed)
    todo = _pairs(factors)
    rows: list[dict] = []
    while todo:
        best, best_gain = None, -1
        pool = sorted(todo, key=repr)
        for _ in range(candidates):
            (a, x), (b, y) = rng.choice(pool)
            row = {a: x, b: y}
            for name in rng.sample(names, len(names)):
                if name in row:
                    continue
                def gain(level):
                    trial = {**row, name: level}
                    return sum(((n, trial[n]), (name, level)) in todo or ((name, level), (n, trial[n])) in todo
                               for n in row)
                levels = list(factors[name])
                rng.shuffle(levels)
                row[name] = max(levels, key=gain)
            g = len(_covers(row, names) & todo)
            if g > best_gain:
                best, best_gain = row, g
        rows.append({n: best[n] for n in names})
        todo -= _covers(best, names)
    return rows


def uncovered_pairs(factors: Mapping[str, Sequence], rows: Sequence[Mapping]) -> set:
    names = list(factors)
    left = _pairs(factors)
    for row in rows:
        left -= _covers(row, names)
    return left


# ---- rows -> cases ---------------------------------------------------------------------------
_PAGES = {"small": 2, "odd": 61, "big": 256}
_TOPK = {"short": 7, "tiles": 100, "long": 300}  # long: past the split size; the boundary cases go further
_LAYOUT = {"contiguous": {}, "strided": {"noncontiguous": True}, "transposed": {"q_transposed": True}}


def _sparse_decode(r: dict, seed: int) -> Case:
    topk = _TOPK[r["topk"]]
    h_q = 128 if r["heads"] == "two_tiles" else 8
    pb = _PAGES[r["page"]]
    extra = {}
    if r["extra"] != "none":
        xpb = pb if r["extra"] == "same" else {2: 69, 61: 576, 256: 1}[pb]
        extra = dict(extra_topk=40, extra_s_kv=3 * xpb + 30, extra_page_block_size=xpb, extra_topk_length="partial")
    return Case(op="sparse_decode", model=r["model"], seed=seed, b=1 if topk == 300 or h_q == 128 else 2, s_q=2,
                h_q=h_q, s_kv=max(topk + 50, 3 * pb + pb // 2 + 1), topk=topk, page_block_size=pb,
                topk_length=r["length"], sink=r["sink"], invalid=r["invalid"], **extra, **_LAYOUT[r["layout"]])


def _sparse_prefill(r: dict, seed: int) -> Case:
    topk = _TOPK[r["topk"]]
    return Case(op="sparse_prefill", model=r["model"], seed=seed, s_q=2 if topk == 300 else 3,
                h_q=128 if r["heads"] == "two_tiles" else 8, s_kv=topk + 40, topk=topk, topk_length=r["length"],
                sink=r["sink"], invalid=r["invalid"], duplicates=r["dups"], **_LAYOUT[r["layout"]])


def _dense_decode(r: dict, seed: int) -> Case:
    h_q, h_kv = {"mqa": (8, 1), "pow2": (8, 2), "nonpow2": (10, 2)}[r["group"]]
    keys = {"short": 33, "tiles": 140, "long": 520}[r["keys"]]
    return Case(op="dense_decode", model=r["model"], seed=seed, b=1 if keys > 500 else 2, s_q=2, h_q=h_q, h_kv=h_kv,
                s_kv=keys, page_block_size=_PAGES[r["page"]], causal=r["causal"], seqlens=r["seqlens"],
                dtype=r["dtype"], **_LAYOUT[r["layout"]])


def _mha_prefill(r: dict, seed: int) -> Case:
    h_q, h_kv = {"pow2": (4, 2), "nonpow2": (6, 2)}[r["group"]]
    n = {"short": 9, "tiles": 40, "multi": 140}[r["length"]]
    window = {"causal": (-1, -1), "right_only": (-1, 3), "left_only": (5, -1)}[r["mask"]]
    return Case(op="mha_prefill", model=r["model"], seed=seed, b=(1 if r["seqlens"] in ("full", "varlen") else 2) if n > 100 else 3, s_q=n, s_kv=n + 7, h_q=h_q,
                h_kv=h_kv, causal=r["mask"] == "causal", window_left=window[0], window_right=window[1],
                seqlens=r["seqlens"], backward=r["backward"], dtype=r["dtype"], **_LAYOUT[r["layout"]])


_BUILD = {"sparse_decode": _sparse_decode, "sparse_prefill": _sparse_prefill, "dense_decode": _dense_decode,
          "mha_prefill": _mha_prefill}


def _factors(op: str) -> dict[str, tuple]:
    f = dict(FACTORS[op])
    if VALUE_FACTOR is not None:
        f[VALUE_FACTOR[0]] = tuple(VALUE_FACTOR[1])
    return f


def covering_cases(op: str, model: str, seed: int = 0) -> list[Case]:
    """The covering array's rows of `model` for `op`, as Cases (seed 7000 + row number)."""
    if op not in _BUILD:
        raise ValueError(f"op: expected one of {list(_BUILD)}, got {op!r}")
    rows = pairwise(_factors(op), seed)
    out = []
    for i, row in enumerate(rows):
        if row["model"] != model:
            continue
        case = _BUILD[op](row, 7000 + i)
        if VALUE_FACTOR is not None:
            case = case.replace(**{VALUE_FACTOR[0]: row[VALUE_FACTOR[0]]})
        out.append(case)
    return out
