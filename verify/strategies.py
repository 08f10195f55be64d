"""Hypothesis strategies that draw `Case`s (parameters and a seed, never tensor elements).

    case_strategy("sparse_decode", "model1", scale="cpu")   # a SearchStrategy[Case]
    draw_cases(case_strategy(op, model), max_examples=20, seed=0)   # deterministic list of Cases
    PROFILES["ci"]                                            # hypothesis settings profiles

Strategies per op: `sparse_decode_cases`, `sparse_prefill_cases`, `dense_decode_cases`,
`mha_prefill_cases`, each `@st.composite` taking (model, scale). `scale` bounds the shapes:
"cpu" keeps every case small enough for the Triton interpreter, "gpu" reaches production-like
sizes (top-k 2048, thousands of tokens).

Settings profiles (one place; also registered with hypothesis as "mlaverify-<name>"):
- "ci": deterministic (derandomize, no example database), 6 examples per op and model.
- "dev": 25 examples, random but without a database (reproduce with the printed seed).
- "thorough": 200 examples.
Explicit softmax scales include the one FlashMLA's own tests use for the op
(`distributions.flashmla_softmax_scale`); mha cases carry a sliding window a third of the time
(each bound unbounded, 0, small or beyond the longest sequence; causal ones right bound -1 or 0).
`corner_cases(op, model)` lists a few hand-picked small cases combining the hardest features;
`runner.generate_cases` runs them before the drawn ones. The strategies draw FlashMLA's flat data
(`Case.dist` "flashmla"); `production_cases` adds the production-like distributions on top.
`draw_cases` runs the strategy under a given profile with `hypothesis.seed(seed)` and collects
the drawn cases (generate phase only), so the same (profile, seed, max_examples) always yields
the same list.
"""
from __future__ import annotations

from typing import Callable

import hypothesis
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

from mlaverify.verify.cases import (DIST_MODES, HEAD_DIMS, INVALID_MODES, MODELS, NAN_FILL_MODES, SINK_MODES,
                                    TOPK_LENGTH_MODES, VALUE_MODES, Case)
from mlaverify.verify.distributions import flashmla_softmax_scale

_COMMON = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck), print_blob=False)
PROFILES: dict[str, settings] = {
    "ci": settings(max_examples=6, derandomize=True, **_COMMON),
    "dev": settings(max_examples=25, **_COMMON),
    "thorough": settings(max_examples=200, **_COMMON),
}
for _name, _profile in PROFILES.items():
    settings.register_profile(f"mlaverify-{_name}", _profile)

SEEDS = st.integers(0, 2**31 - 1)
HQ_SPARSE = {"cpu": (64, 128, 1, 8, 16, 32), "gpu": (64, 128, 8, 16, 32)}
TOPKS = {"cpu": (1, 7, 64, 100, 128, 576), "gpu": (1, 7, 64, 100, 128, 576, 1024, 2048)}
PAGE_BLOCKS = (1, 2, 61, 64, 69, 256, 576)
EXPLICIT_SCALES = (0.0625, 0.1, 0.03125, 0.2)
LIMITS = {  # scale -> (max batch, max tokens behind a cache, max prefill queries)
    "cpu": (2, 700, 6),
    "gpu": (16, 4096, 256),
}


def _check_scale(scale: str) -> None:
    if scale not in LIMITS:
        raise ValueError(f"scale: expected one of {sorted(LIMITS)}, got {scale!r}")


def _softmax_scale(draw, op: str, model: str) -> float | None:
    """None (the API default), a few fixed scales, or the one FlashMLA's own tests use for the op."""
    ours = float(f"{flashmla_softmax_scale(op, HEAD_DIMS[(op, model)][0]):.4g}")  # 4 digits: a readable id
    return draw(st.one_of(st.none(), st.sampled_from(EXPLICIT_SCALES + (ours,))))


def _window(draw, causal: bool, longest: int) -> dict:
    """A sliding window for a third of the mha cases: each bound -1 (unbounded), 0, small (1..4) or at
    least the longest sequence; with causal the right bound is -1 or 0 (the diagonal)."""
    if draw(st.integers(0, 2)) != 0:
        return {}
    bound = st.one_of(st.just(-1), st.just(0), st.integers(1, 4), st.integers(longest, longest + 8))
    right = draw(st.sampled_from((-1, 0)) if causal else bound)
    return {"window_left": draw(bound), "window_right": right}


def _seq_for_topk(draw, topk: int, max_tokens: int) -> int:
    """A sequence length: usually >= topk, sometimes shorter (topk larger than the sequence)."""
    if topk > 1 and draw(st.integers(0, 3)) == 0:
        return draw(st.integers(1, topk - 1))
    return draw(st.integers(topk, max(topk, min(max_tokens, topk + 200))))


@st.composite
def sparse_decode_cases(draw, model: str, scale: str = "cpu") -> Case:
    _check_scale(scale)
    max_b, max_tokens, _ = LIMITS[scale]
    topk = draw(st.sampled_from(TOPKS[scale]))
    has_extra = draw(st.booleans()) if model == "model1" else draw(st.integers(0, 3)) == 0
    extra = {}
    if has_extra:
        extra_topk = draw(st.sampled_from(TOPKS[scale]))
        extra = dict(extra_topk=extra_topk, extra_s_kv=_seq_for_topk(draw, extra_topk, max_tokens),
                     extra_page_block_size=draw(st.sampled_from(PAGE_BLOCKS)),
                     extra_topk_length=draw(st.sampled_from(TOPK_LENGTH_MODES)))
    return Case(
        op="sparse_decode", model=model, seed=draw(SEEDS),
        b=draw(st.integers(1, max_b)), s_q=draw(st.integers(1, 4)), h_q=draw(st.sampled_from(HQ_SPARSE[scale])),
        s_kv=_seq_for_topk(draw, topk, max_tokens), topk=topk, page_block_size=draw(st.sampled_from(PAGE_BLOCKS)),
        topk_length=draw(st.sampled_from(TOPK_LENGTH_MODES)), sink=draw(st.sampled_from(SINK_MODES)),
        invalid=draw(st.sampled_from(INVALID_MODES)), nan_fill=draw(st.sampled_from(NAN_FILL_MODES)),
        softmax_scale=_softmax_scale(draw, "sparse_decode", model), noncontiguous=draw(st.booleans()),
        scales=draw(st.sampled_from(("ue8m0", "float32"))) if model == "v32" else "ue8m0",
        values=draw(st.sampled_from(VALUE_MODES)), **extra,
    )


@st.composite
def sparse_prefill_cases(draw, model: str, scale: str = "cpu") -> Case:
    _check_scale(scale)
    _, max_tokens, max_q = LIMITS[scale]
    topk = draw(st.sampled_from(TOPKS[scale]))
    return Case(
        op="sparse_prefill", model=model, seed=draw(SEEDS), s_q=draw(st.integers(1, max_q)),
        h_q=draw(st.sampled_from(HQ_SPARSE[scale])), s_kv=_seq_for_topk(draw, topk, max_tokens), topk=topk,
        topk_length=draw(st.sampled_from(TOPK_LENGTH_MODES)), sink=draw(st.sampled_from(SINK_MODES)),
        invalid=draw(st.sampled_from(("none", "some", "rows", "all"))),
        nan_fill=draw(st.sampled_from(NAN_FILL_MODES)), softmax_scale=_softmax_scale(draw, "sparse_prefill", model),
        noncontiguous=draw(st.booleans()),
    )


@st.composite
def dense_decode_cases(draw, model: str, scale: str = "cpu") -> Case:
    _check_scale(scale)
    max_b, max_tokens, _ = LIMITS[scale]
    h_q = draw(st.sampled_from((1, 3, 8, 16, 64, 128)))
    h_kv = draw(st.sampled_from([k for k in (1, 2, 3, 8) if h_q % k == 0]))
    s_q = draw(st.integers(1, 4))
    short = draw(st.integers(0, 2)) == 0  # short sequences: with causal, early queries see nothing
    s_kv = draw(st.integers(1, 4)) if short else draw(st.sampled_from((20, 140, draw(st.integers(5, max_tokens)))))
    return Case(
        op="dense_decode", model=model, seed=draw(SEEDS), b=draw(st.integers(1, max_b + 1)), s_q=s_q, h_q=h_q,
        h_kv=h_kv, s_kv=s_kv, page_block_size=draw(st.sampled_from((1, 2, 16, 61, 64, 69, 256))),
        causal=draw(st.booleans()), seqlens=draw(st.sampled_from(("full", "varlen", "zero"))),
        dtype=draw(st.sampled_from(("bf16", "fp16"))), nan_fill=draw(st.sampled_from(("none", "all"))),
        softmax_scale=_softmax_scale(draw, "dense_decode", model), noncontiguous=draw(st.booleans()),
    )


@st.composite
def mha_prefill_cases(draw, model: str, scale: str = "cpu") -> Case:
    _check_scale(scale)
    max_b, max_tokens, _ = LIMITS[scale]
    longest = 32 if scale == "cpu" else 1024
    h_q = draw(st.sampled_from((1, 2, 4, 8)))
    s_q, s_kv, causal = draw(st.integers(1, longest)), draw(st.integers(1, longest)), draw(st.booleans())
    return Case(
        op="mha_prefill", model=model, seed=draw(SEEDS), b=draw(st.integers(1, max_b + 1)),
        s_q=s_q, s_kv=s_kv, h_q=h_q, h_kv=draw(st.sampled_from([k for k in (1, 2, 4) if h_q % k == 0])),
        causal=causal, **_window(draw, causal, max(s_q, s_kv)), seqlens=draw(st.sampled_from(("full", "varlen"))),
        dtype=draw(st.sampled_from(("bf16", "fp16"))), backward=draw(st.booleans()),
        softmax_scale=_softmax_scale(draw, "mha_prefill", model), noncontiguous=draw(st.booleans()),
    )


STRATEGIES: dict[str, Callable[..., st.SearchStrategy[Case]]] = {
    "sparse_decode": sparse_decode_cases,
    "sparse_prefill": sparse_prefill_cases,
    "dense_decode": dense_decode_cases,
    "mha_prefill": mha_prefill_cases,
}


def case_strategy(op: str, model: str, scale: str = "cpu") -> st.SearchStrategy[Case]:
    if op not in STRATEGIES:
        raise ValueError(f"op: expected one of {list(STRATEGIES)}, got {op!r}")
    if model not in MODELS[op]:
        raise ValueError(f"model: expected one of {list(MODELS[op])} for {op}, got {model!r}")
    _check_scale(scale)
    return STRATEGIES[op](model, scale)


def profile_settings(profile: str) -> settings:
    if profile not in PROFILES:
        raise ValueError(f"profile: expected one of {list(PROFILES)}, got {profile!r}")
    return PROFILES[profile]


def draw_cases(strategy: st.SearchStrategy[Case], max_examples: int | None = None, seed: int = 0,
               profile: str = "ci") -> list[Case]:
    """Distinct cases drawn by hypothesis under `profile` (max_examples overrides its count).

    Deterministic for a given (strategy, max_examples, seed, profile): generation is seeded with
    `seed` (hypothesis.seed), runs the generate phase only and never reads a database.
    """
    base = profile_settings(profile)
    n = base.max_examples if max_examples is None else max_examples
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"max_examples: expected an int >= 1, got {max_examples!r}")
    drawn: list[Case] = []
    run_settings = settings(base, max_examples=n, phases=(Phase.generate,), derandomize=False)

    @run_settings
    @hypothesis.seed(seed)
    @hypothesis.given(strategy)
    def collect(case: Case) -> None:
        drawn.append(case)

    collect()
    unique: dict[str, Case] = {}
    for case in drawn:
        unique.setdefault(case.id, case)
    return list(unique.values())


def _corners_sparse_decode(model: str) -> list[Case]:
    v32 = model == "v32"
    base = dict(op="sparse_decode", model=model)
    return [
        Case(**base, seed=1, b=2, s_q=2, h_q=64, s_kv=200, topk=128, page_block_size=64, topk_length="partial",
             sink="mixed", invalid="some", nan_fill="all", values="mixed", noncontiguous=True,
             scales="float32" if v32 else "ue8m0"),
        Case(**base, seed=2, b=2, s_q=1, h_q=128, s_kv=50, topk=100, page_block_size=61, extra_s_kv=70,
             extra_topk=64, extra_page_block_size=2, topk_length="mixed", extra_topk_length="partial",
             sink="pos_inf", invalid="batch", nan_fill="all", softmax_scale=0.0625),
        Case(**base, seed=3, b=3, s_q=4, h_q=8, s_kv=5, topk=7, page_block_size=1, extra_s_kv=30, extra_topk=7,
             extra_page_block_size=69, extra_topk_length="mixed", invalid="rows", nan_fill="unused",
             values="zero_tiles", sink="finite", scales="float32" if v32 else "ue8m0"),
        Case(**base, seed=4, b=2, s_q=1, h_q=16, s_kv=600, topk=576, page_block_size=256, topk_length="full",
             sink="neg_inf", invalid="all", values="near_max", scales="float32" if v32 else "ue8m0"),
    ]


def _corners_sparse_prefill(model: str) -> list[Case]:
    base = dict(op="sparse_prefill", model=model)
    return [
        Case(**base, seed=1, s_q=6, h_q=64, s_kv=100, topk=128, topk_length="mixed", sink="mixed", invalid="some",
             nan_fill="all", noncontiguous=True),
        Case(**base, seed=2, s_q=4, h_q=128, s_kv=300, topk=64, topk_length="partial", sink="finite",
             invalid="rows", nan_fill="unused", softmax_scale=0.1),
        Case(**base, seed=3, s_q=3, h_q=8, s_kv=20, topk=7, sink="pos_inf", invalid="all"),
    ]


def _corners_dense_decode(model: str) -> list[Case]:
    base = dict(op="dense_decode", model=model)
    return [
        Case(**base, seed=1, b=3, s_q=4, h_q=8, h_kv=2, s_kv=3, page_block_size=2, causal=True, seqlens="zero",
             dtype="fp16", nan_fill="all", noncontiguous=True),
        Case(**base, seed=2, b=2, s_q=2, h_q=128, s_kv=140, page_block_size=64, causal=True, seqlens="varlen",
             nan_fill="all"),
        Case(**base, seed=3, b=2, s_q=1, h_q=16, h_kv=8, s_kv=70, page_block_size=61, softmax_scale=0.1),
    ]


def _corners_mha_prefill(model: str) -> list[Case]:
    base = dict(op="mha_prefill", model=model)
    return [
        Case(**base, seed=1, b=3, s_q=20, s_kv=12, h_q=4, h_kv=2, causal=True, seqlens="varlen", backward=True),
        Case(**base, seed=2, b=2, s_q=9, s_kv=17, h_q=2, dtype="fp16", noncontiguous=True, backward=True,
             softmax_scale=0.1),
        # sliding windows: causal with a small left bound; two-sided with a right bound beyond the sequence
        Case(**base, seed=3, b=3, s_q=12, s_kv=20, h_q=4, h_kv=2, causal=True, seqlens="varlen", backward=True,
             window_left=3, window_right=0),
        Case(**base, seed=4, b=2, s_q=10, s_kv=7, h_q=2, backward=True, window_left=2, window_right=30),
    ]


_CORNERS = {"sparse_decode": _corners_sparse_decode, "sparse_prefill": _corners_sparse_prefill,
            "dense_decode": _corners_dense_decode, "mha_prefill": _corners_mha_prefill}


def corner_cases(op: str, model: str) -> list[Case]:
    """Hand-picked small cases that combine the hardest features of an op (run before the drawn ones)."""
    case_strategy(op, model)  # validates op and model
    return _CORNERS[op](model)


PRODUCTION_DISTS = DIST_MODES[1:]  # every distribution but FlashMLA's flat data (the strategies' own)


def production_cases(op: str, model: str, scale: str = "cpu", max_examples: int | None = None, seed: int = 0,
                     profile: str = "ci", corners: bool = True) -> list[Case]:
    """Cases of the production-like distributions (peaked, wide logits, outlier channels, RoPE scale,
    near duplicates) for one op and model, on top of the flat ones the strategies draw:
    - with `corners`, one corner case per distribution (the j-th distribution takes corner j modulo
      their count, with its own seed), so every profile, ci included, runs every distribution;
    - n // 8 drawn cases per distribution, n the profile's example count (ci's 6: none, so ci's drawn
      cases and the committed baseline stay as they were; dev 3, thorough 25), each distribution with
      its own hypothesis seed.
    """
    out: list[Case] = []
    if corners:
        base = corner_cases(op, model)
        out += [base[j % len(base)].replace(dist=d, seed=base[j % len(base)].seed + 100 * (j + 1))
                for j, d in enumerate(PRODUCTION_DISTS)]
    n = profile_settings(profile).max_examples if max_examples is None else max_examples
    if n // 8:
        for j, d in enumerate(PRODUCTION_DISTS):
            strategy = case_strategy(op, model, scale).map(lambda c, d=d: c.replace(dist=d))
            out += draw_cases(strategy, n // 8, seed + 1000 * (j + 1), profile)
    return out
