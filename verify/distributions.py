"""Value distributions of the engine's inputs, and why they are what they are.

The tolerance table (operations.md, `tolerances.DEFAULT_TOLERANCES`) is FlashMLA's, and FlashMLA
set it against its own test data. A tolerance means something only on the distribution it was
calibrated on: with unit-scale values everywhere, a legitimate kernel that rounds the softmax
weights P to bf16 before P @ V (exactly what FlashMLA does) exceeds it (worst abs error 0.48 was
seen), so the engine would report bugs that are not there. Every op therefore draws its base values
as FlashMLA's test generator for that op does (its tests/lib.py decode and prefill generators,
test_flash_mla_dense_decoding.py, test_fmha_sm100.py), `BASE_VALUES` holding the standard
deviation, the clamp bound and the half-width of a per-tensor uniform offset:
- sparse decode: q = randn clamped to [-1, 1]; keys (before quantization) randn * 0.1 clamped to [-1, 1];
- sparse prefill: q, kv = randn * 0.1 plus a per-tensor offset uniform in [-0.05, 0.05), clamped to [-10, 10];
- dense decode: q, k = randn * 0.1 clamped to [-1, 1];
- dense MHA prefill: q, k, v and the output gradient randn * 0.1.
FlashMLA's own softmax scales (`flashmla_softmax_scale`) are among the explicit scales the
strategies draw, next to the API default and a few others. The stress distributions of sparse
decode (per-tile outliers, all-zero tiles, values near the fp8 limit, exact float32 scales) are
layered on top of the base keys and stay inside FlashMLA's clamp range [-1, 1], so they stress the
quantizer's scale choice (the ratio of a tile's outliers to its bulk, fp8 codes near 448) without
leaving the magnitudes the tolerances were set for.

Production-like distributions (`PRODUCTION_DISTRIBUTIONS`, below the FlashMLA base): FlashMLA's data
gives almost flat attention (largest softmax weight at most ~1.06x uniform, logit spread 0.01-0.03),
on which bugs in max tracking or rescaling barely move the output, and which charges FP8 quantization
almost nothing. Real models attend sharply, spread logits over tens of units and carry outlier
channels in K. Each distribution is a key kind (`make_keys`) and a query kind (`make_queries`); the
queries are built from the keys each query attends to, so any op can draw them (sparse decode keys
before quantization with per-query index lists, sparse prefill, dense decode, MHA q/k/v).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

# (op, tensor) -> (std, clamp bound or None, half-width of a per-tensor uniform offset): FlashMLA's generators.
BASE_VALUES: dict[tuple[str, str], tuple[float, float | None, float]] = {
    ("sparse_decode", "q"): (1.0, 1.0, 0.0), ("sparse_decode", "k"): (0.1, 1.0, 0.0),
    ("sparse_prefill", "q"): (0.1, 10.0, 0.05), ("sparse_prefill", "kv"): (0.1, 10.0, 0.05),
    ("dense_decode", "q"): (0.1, 1.0, 0.0), ("dense_decode", "k"): (0.1, 1.0, 0.0),
    ("mha_prefill", "q"): (0.1, None, 0.0), ("mha_prefill", "k"): (0.1, None, 0.0),
    ("mha_prefill", "v"): (0.1, None, 0.0), ("mha_prefill", "dout"): (0.1, None, 0.0),
}
STRESS_BOUND = 1.0  # stress values of sparse decode keys stay in [-1, 1], FlashMLA's clamp range


def flashmla_softmax_scale(op: str, d_qk: int) -> float:
    """The explicit softmax scale FlashMLA's own tests use for an op (one of the drawn explicit scales)."""
    if op in ("sparse_decode", "dense_decode"):
        return d_qk ** -0.55
    if op == "sparse_prefill":
        return 0.5
    if op == "mha_prefill":
        return (d_qk + 100) ** -0.5
    raise ValueError(f"op: expected one of sparse_decode, sparse_prefill, dense_decode, mha_prefill, got {op!r}")


def base_values(g, op: str, name: str, *shape: int) -> torch.Tensor:
    """float32 values of tensor `name` of `op` drawn like FlashMLA's test generator (see BASE_VALUES)."""
    std, bound, offset = BASE_VALUES[(op, name)]
    values = torch.randn(*shape, generator=g) * std
    if offset:
        values += (float(torch.rand((), generator=g)) * 2.0 - 1.0) * offset
    return values.clamp_(-bound, bound) if bound is not None else values


def _rand(g, *shape) -> torch.Tensor:
    return torch.rand(*shape, generator=g)


def stress_values(g, nope: torch.Tensor, tile: int, mode: str) -> torch.Tensor:
    """Apply a stress distribution (cases.VALUE_MODES) to the base keys nope [T, d_nope] (tiles of `tile`)."""
    t_count = nope.shape[0]
    tiles = nope.view(t_count, -1, tile)  # [T, n_tiles, tile]
    kinds = {"outliers": 1, "zero_tiles": 2, "near_max": 3}
    mixed = torch.randint(0, 4, (t_count,), generator=g) if mode == "mixed" else None
    kind = mixed if mixed is not None else torch.full((t_count,), kinds.get(mode, 0))
    # outliers: the bulk of the token a tenth of the base, one or two elements per tile at 0.5..1 x STRESS_BOUND
    # (~30-100x the bulk), so each tile's scale is set by its outliers and the bulk quantizes coarsely
    outlier = (kind == 1).view(-1, 1, 1)
    spikes = (_rand(g, *tiles.shape) < 1.5 / tile) & outlier
    sign = torch.where(tiles < 0, -1.0, 1.0)
    tiles = torch.where(outlier, tiles * 0.1, tiles)
    tiles = torch.where(spikes, sign * STRESS_BOUND * (0.5 + 0.5 * _rand(g, *tiles.shape)), tiles)
    # zero tiles: about half the tiles of a token are all zero
    zero = (_rand(g, t_count, tiles.shape[1], 1) < 0.5) & (kind == 2).view(-1, 1, 1)
    tiles = torch.where(zero, torch.zeros_like(tiles), tiles)
    # near max: every element within 10% of the tile's amax (2^-6 .. 1 x STRESS_BOUND), so fp8 codes sit near 448
    amax = STRESS_BOUND * torch.exp2(_rand(g, t_count, tiles.shape[1], 1) * 6.0 - 6.0)
    sign = torch.where(_rand(g, *tiles.shape) < 0.5, -1.0, 1.0)
    near = sign * amax * (0.9 + 0.1 * _rand(g, *tiles.shape))
    tiles = torch.where((kind == 3).view(-1, 1, 1), near, tiles)
    return tiles.reshape(t_count, -1)


# ---- production-like distributions ---------------------------------------------------------------
KEY_KINDS = ("flashmla", "outlier_channels", "rope_scaled", "near_duplicate")
QUERY_KINDS = ("flashmla", "peaked", "wide_logits")


@dataclass(frozen=True)
class KeyParams:
    """Parameters of `make_keys`; every kind starts from the FlashMLA-like base (std, clamp)."""

    std: float = 0.1                    # FlashMLA's sparse decode keys: randn * 0.1 ...
    clamp: float | None = 1.0           # ... clamped to [-1, 1] (sparse prefill uses 10.0)
    outlier_channels: int = 4           # "a few" NoPE channels carry the outliers (4 of 448/512, ~1%)
    outlier_ratio: float | None = None  # channel std / bulk std; None: drawn log-uniform in outlier_range
    outlier_range: tuple[float, float] = (10.0, 100.0)  # 10-100x, as reported for real KV caches
    rope_ratio: float | None = None     # RoPE std / NoPE std; None: drawn log-uniform in rope_range
    rope_range: tuple[float, float] = (0.1, 10.0)  # k_pe skips the latent RMSNorm, so its scale is its own
    duplicate_fraction: float = 0.5     # share of tokens that are a near copy of an earlier token
    duplicate_noise: float = 1e-2       # relative size of the perturbation of a copy (cosine ~ 0.9999)


@dataclass(frozen=True)
class QueryParams:
    """Parameters of `make_queries`."""

    std: float = 1.0                    # flashmla queries: FlashMLA's sparse decode q = randn ...
    clamp: float | None = 1.0           # ... clamped to [-1, 1]
    top1_range: tuple[float, float] = (0.1, 0.99)  # peaked: target top-1 softmax weight, uniform per query and head
    sources: tuple[int, int] = (1, 3)   # peaked: a query is built from 1..3 of the keys it attends to
    noise: float = 0.3                  # peaked: relative random component, so a query is no exact key mix
    spread_range: tuple[float, float] = (5.0, 50.0)  # wide_logits: max - min logit, log-uniform per query and head
    max_spread: float = 100.0           # peaked: the query norm never makes the logit spread exceed this
    # (peaked and wide_logits: nor any |logit|); and a query's norm stays <= max_norm. Without both, a row
    # with one attended key or tied keys (spread ~0) got norms ~1e20: inf in fp16, lse ~1e12
    max_norm: float = 1e4               # fp16 holds 65504; 1e4 still reaches a spread of 50 on FlashMLA's keys
    chunk_bytes: int = 64 * 2**20       # working set of one chunk of query rows (results do not depend on it)


def _log_uniform(g, lo: float, hi: float, *shape: int) -> torch.Tensor:
    return torch.exp(math.log(lo) + torch.rand(*shape, generator=g, dtype=torch.float64) * math.log(hi / lo))


def _check_kind(kind: str, kinds: tuple[str, ...], name: str) -> None:
    if kind not in kinds:
        raise ValueError(f"{name}: expected one of {', '.join(kinds)}, got {kind!r}")


def make_keys(g, kind: str, n_tokens: int, d_nope: int, d_rope: int, params: KeyParams = KeyParams()
              ) -> torch.Tensor:
    """float32 keys [n_tokens, d_nope + d_rope] of a key kind, all draws from generator g.

    - flashmla: randn * std clamped to [-clamp, clamp] (FlashMLA's own key generator).
    - outlier_channels: the base, with `outlier_channels` NoPE channels (chosen once per call, the same
      for every token) multiplied by the outlier ratio: their std is ratio x the bulk's, unclamped.
      Real KV caches show such fixed channels; per-tile FP8 scales exist for them, and they set the
      scale of their whole tile, so the bulk of that tile quantizes coarsely.
    - rope_scaled: the base with the RoPE dims at rope_ratio x the NoPE std (the RoPE part is kept in
      bf16 by both FP8 formats, so its share of the logit sets how much the quantized NoPE part matters).
    - near_duplicate: the base, where each token after the first is with probability
      duplicate_fraction an earlier token plus a duplicate_noise relative perturbation (repeated
      tokens, templates): ties at the top of the softmax, and copies the quantizer may map together.
    """
    _check_kind(kind, KEY_KINDS, "kind")
    if n_tokens < 0 or d_nope < 0 or d_rope < 0:
        raise ValueError(f"n_tokens, d_nope, d_rope: expected >= 0, got {n_tokens}, {d_nope}, {d_rope}")
    keys = torch.randn(n_tokens, d_nope + d_rope, generator=g) * params.std
    if params.clamp is not None:
        keys.clamp_(-params.clamp, params.clamp)
    if kind == "outlier_channels":
        if not 0 < params.outlier_channels <= d_nope:
            raise ValueError(f"outlier_channels: expected 1..d_nope={d_nope}, got {params.outlier_channels}")
        channels = torch.randperm(d_nope, generator=g)[:params.outlier_channels]
        ratio = params.outlier_ratio if params.outlier_ratio is not None else float(
            _log_uniform(g, *params.outlier_range, 1))
        keys[:, channels] *= ratio
    elif kind == "rope_scaled":
        ratio = params.rope_ratio if params.rope_ratio is not None else float(_log_uniform(g, *params.rope_range, 1))
        keys[:, d_nope:] *= ratio
    elif kind == "near_duplicate" and n_tokens > 1:
        copy = torch.rand(n_tokens, generator=g) < params.duplicate_fraction
        copy[0] = False
        # each copied token takes an earlier token as its source: floor(u * i) in [0, i)
        source = (torch.rand(n_tokens, generator=g) * torch.arange(n_tokens)).long()
        noise = torch.randn(n_tokens, d_nope + d_rope, generator=g) * params.std * params.duplicate_noise
        for i in copy.nonzero().view(-1).tolist():  # in order, so a copy of a copy is a copy too
            keys[i] = keys[source[i]] + noise[i]
    return keys


def _valid_slots(keys: torch.Tensor, attended_rows: torch.Tensor) -> torch.Tensor:
    """[R, T] bool: slots of each row naming a key row; everything outside [0, n) is not attended."""
    return (attended_rows >= 0) & (attended_rows < keys.shape[0])


def _pick_sources(g, valid: torch.Tensor, n_heads: int, params: QueryParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (row, head) up to sources[1] slots among the row's valid ones, with weights (0 = unused)."""
    rows = valid.shape[0]
    lo, hi = params.sources
    count = valid.sum(-1)  # [R]
    u = torch.rand(rows, n_heads, hi, generator=g, dtype=torch.float64)
    k = (u * count.view(-1, 1, 1)).long()  # the k-th valid slot of the row, k in [0, count)
    used = torch.randint(lo, hi + 1, (rows, n_heads, 1), generator=g) > torch.arange(hi)
    weight = (0.5 + 0.5 * torch.rand(rows, n_heads, hi, generator=g, dtype=torch.float64)) * used
    # running rank of the valid slots (non-decreasing): the first slot reaching rank k is the k-th valid one
    ranks = valid.long().cumsum(-1) - 1  # [R, T]
    slot = torch.searchsorted(ranks.contiguous(), k.view(rows, -1).contiguous()).view(rows, n_heads, hi)
    slot = slot.clamp_max(max(valid.shape[1] - 1, 0))
    return slot, torch.where(count.view(-1, 1, 1) > 0, weight, 0.0)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-30)


def _alpha_cap(s: torch.Tensor, valid: torch.Tensor, params: "QueryParams") -> torch.Tensor:
    """[r, h] largest alpha with every |alpha * s| <= max_spread and alpha <= max_norm (s: logits of unit q)."""
    biggest = torch.where(valid, s.abs(), 0.0).amax(-1).clamp_min(1e-30)
    return (params.max_spread / biggest).clamp_max(params.max_norm)


def _scale_to_top1(s: torch.Tensor, valid: torch.Tensor, target: torch.Tensor, max_spread: float,
                   limit: torch.Tensor | None = None) -> torch.Tensor:
    """alpha [r, h] with top-1 softmax weight of alpha * s (masked by valid [r, 1, T]) ~ target.

    The top-1 weight 1 / sum exp(alpha (s_t - s_max)) grows monotonically with alpha from 1 / n, so a
    bisection on log(alpha) finds it; alpha is capped where the logit spread reaches max_spread
    (a target beyond reach, as with tied keys, gets the cap)."""
    s = torch.where(valid, s, float("-inf"))
    s_max = s.amax(-1, keepdim=True)
    gap = torch.where(valid, s_max - s, float("inf"))  # >= 0; -inf logits give +inf gaps
    spread = torch.where(valid, s_max - s, 0.0).amax(-1).clamp_min(1e-30)  # [r, h]
    lo_t = torch.full_like(spread, -40.0)
    hi_t = torch.zeros_like(spread)  # log2(alpha / cap)
    cap = max_spread / spread
    if limit is not None:
        cap = torch.minimum(cap, limit)
    for _ in range(48):
        mid = (lo_t + hi_t) / 2
        alpha = cap * torch.exp2(mid)
        top1 = torch.exp(-torch.logsumexp(-alpha.unsqueeze(-1) * gap, dim=-1))
        below = top1 < target
        lo_t, hi_t = torch.where(below, mid, lo_t), torch.where(below, hi_t, mid)
    return cap * torch.exp2((lo_t + hi_t) / 2)


def make_queries(g, kind: str, keys: torch.Tensor, attended_rows: torch.Tensor, softmax_scale: float,
                 n_heads: int = 1, params: QueryParams = QueryParams()) -> torch.Tensor:
    """float32 queries [*attended_rows.shape[:-1], n_heads, d] for keys [n, d], all draws from g.

    attended_rows [..., T] (integer) names, per query, the key rows it attends to; entries outside
    [0, n) are not attended (pass the engine's invalid indices, or -1 for slots past topk_length or
    a sequence's length, as they are). softmax_scale is the scale the op applies to q . k.
    - flashmla: randn * std clamped (FlashMLA's queries); the keys only give the shape.
    - peaked: each (query, head) points at 1-3 of its attended keys plus a random component, with
      its norm set so that the top-1 softmax weight over its attended keys is a target drawn uniformly
      in top1_range (0.1-0.99): real heads attend sharply, and flat data hides max-tracking bugs.
      The weight is met to bisection accuracy, up to the max_spread cap (ties, as with near-duplicate
      keys, cap what one key can get) and rows with a single attended key (weight 1).
    - wide_logits: a random direction scaled so that the spread (max - min) of its logits over its
      attended keys is a target drawn log-uniformly in spread_range (5-50): real logits span tens of
      units, which exposes exp overflow, missed rescaling and scale folding. Rows with fewer than two
      distinct attended logits keep a unit-norm direction.
    Rows without any attended key get a flashmla query.

    Wiring per op: sparse decode: keys = the cache's tokens by position (before bf16 and quantization),
    attended_rows = the positions [b, s_q, topk] (-1 and slots past topk_length as -1; an extra cache:
    concatenate its keys after the main ones and offset its positions); sparse prefill: kv and indices
    [s_q, topk] as they are; dense decode: each query's sequence positions, -1 past cache_seqlens (and
    past the causal limit); MHA and GQA: one call per KV head with n_heads = h_q / h_kv, values from
    make_keys with d_rope = 0.
    """
    _check_kind(kind, QUERY_KINDS, "kind")
    if keys.dim() != 2:
        raise ValueError(f"keys: expected [n_tokens, d], got shape {list(keys.shape)}")
    if attended_rows.dim() < 1 or attended_rows.dtype.is_floating_point:
        raise ValueError(f"attended_rows: expected an integer tensor [..., T], got {attended_rows.dtype} "
                         f"{list(attended_rows.shape)}")
    if n_heads < 1:
        raise ValueError(f"n_heads: expected >= 1, got {n_heads}")
    lead, d = attended_rows.shape[:-1], keys.shape[1]
    idx = attended_rows.reshape(-1, attended_rows.shape[-1]).long()  # [R, T]
    rows = idx.shape[0]
    flat = torch.randn(rows, n_heads, d, generator=g) * params.std
    if params.clamp is not None:
        flat.clamp_(-params.clamp, params.clamp)
    if kind == "flashmla":
        return flat.view(*lead, n_heads, d)
    valid = _valid_slots(keys, idx)
    safe = torch.where(valid, idx, 0)
    if kind == "peaked":
        slot, weight = _pick_sources(g, valid, n_heads, params)
        direction = torch.randn(rows, n_heads, d, generator=g, dtype=torch.float64)
        target = params.top1_range[0] + torch.rand(rows, n_heads, generator=g, dtype=torch.float64) * (
            params.top1_range[1] - params.top1_range[0])
    else:
        direction = torch.randn(rows, n_heads, d, generator=g, dtype=torch.float64)
        target = _log_uniform(g, *params.spread_range, rows, n_heads)
    keys64 = keys.double()
    out = torch.empty(rows, n_heads, d, dtype=torch.float64)
    step = max(1, params.chunk_bytes // max(1, idx.shape[1] * (d + 4 * n_heads) * 8))
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        kk = keys64[safe[r0:r1]] if keys.shape[0] else keys64.new_zeros(r1 - r0, idx.shape[1], d)  # [r, T, d]
        v = valid[r0:r1].unsqueeze(1)  # [r, 1, T]
        if kind == "peaked":
            src = torch.gather(kk.unsqueeze(1).expand(-1, n_heads, -1, -1), 2,
                               slot[r0:r1].unsqueeze(-1).expand(-1, -1, -1, d))  # [r, h, sources, d]
            u = _unit(_unit((weight[r0:r1].unsqueeze(-1) * src).sum(2))
                      + params.noise * _unit(direction[r0:r1]))
            s = torch.einsum("rhd,rtd->rht", u, kk) * softmax_scale
            alpha = _scale_to_top1(s, v, target[r0:r1], params.max_spread, _alpha_cap(s, v, params))
        else:
            u = _unit(direction[r0:r1])
            s = torch.einsum("rhd,rtd->rht", u, kk) * softmax_scale
            hi = torch.where(v, s, float("-inf")).amax(-1)
            lo = torch.where(v, s, float("inf")).amin(-1)
            spread = hi - lo
            alpha = torch.where(spread > 1e-12, target[r0:r1] / spread.clamp_min(1e-12), 1.0)
            alpha = torch.minimum(alpha, _alpha_cap(s, v, params))
        out[r0:r1] = alpha.unsqueeze(-1) * u
    none = ~valid.any(-1)  # [R]
    out = torch.where(none.view(-1, 1, 1), flat.double(), out)
    return out.float().view(*lead, n_heads, d)


@dataclass(frozen=True)
class Distribution:
    """A named production-like distribution: a key kind and a query kind, and why it is there."""

    name: str
    keys: str
    queries: str
    reason: str
    key_params: KeyParams = field(default_factory=KeyParams)
    query_params: QueryParams = field(default_factory=QueryParams)

    def make_keys(self, g, n_tokens: int, d_nope: int, d_rope: int) -> torch.Tensor:
        return make_keys(g, self.keys, n_tokens, d_nope, d_rope, self.key_params)

    def make_queries(self, g, keys, attended_rows, softmax_scale: float, n_heads: int = 1) -> torch.Tensor:
        return make_queries(g, self.queries, keys, attended_rows, softmax_scale, n_heads, self.query_params)


PRODUCTION_DISTRIBUTIONS: dict[str, Distribution] = {d.name: d for d in (
    Distribution("flashmla", "flashmla", "flashmla",
                 "FlashMLA's own test data, on which the fixed tolerance table was calibrated (almost flat attention)"),
    Distribution("peaked", "flashmla", "peaked",
                 "real heads attend sharply: top-1 weight 0.1-0.99; flat data hides max-tracking and rescale bugs"),
    Distribution("wide_logits", "flashmla", "wide_logits",
                 "real logits spread over 5-50 units: exposes exp overflow, missed rescaling, scale folding"),
    Distribution("outlier_channels", "outlier_channels", "peaked",
                 "a few fixed K channels 10-100x the rest (real KV caches): what per-tile FP8 scales are for"),
    Distribution("rope_scaled", "rope_scaled", "peaked",
                 "the RoPE part has its own scale (k_pe skips the latent norm); it stays bf16 in both FP8 formats"),
    Distribution("near_duplicate", "near_duplicate", "peaked",
                 "repeated tokens give near-tied top logits and keys the quantizer may map to the same codes"),
)}
