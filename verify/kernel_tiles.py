"""The tile and split sizes of `mlaverify.kernels`, read from the kernels' own launch-config code.

    tiles = kernel_tiles()
    tiles["sparse_decode"].list_tiles     # entries per loop step, every mode (interpreter and compiled)
                                          # and every step size the kernel accepts
    tiles["mha_prefill"].query_tiles      # query rows per tile

Boundary cases (`mlaverify.verify.boundary_cases`) put lengths at and around these numbers, so
the numbers are never restated here: each is taken from the kernel module (its constants or its
launch-config functions, for both the interpreter and the compiled mode, since a case list must
not depend on the machine that draws it). If a kernel module is redesigned and a name below
disappears, this module raises and names what it looked for.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass


@dataclass(frozen=True)
class OpTiles:
    """Sizes (union over the interpreter and compiled modes) one op's kernels iterate in."""

    list_tiles: tuple[int, ...]      # keys / index entries per loop step
    head_tiles: tuple[int, ...] = ()  # query heads per program (sparse ops)
    query_tiles: tuple[int, ...] = ()  # query rows per tile (dense decode rows, mha queries)
    split: int = 0                   # tokens / entries per split below which no more splits are made (smallest)
    split_sizes: tuple[int, ...] = ()  # that size in every mode (it grows with the list tile)
    max_splits: int = 0              # the most splits of one row (0: no cap known)


def _need(module, name: str):
    try:
        return getattr(module, name)
    except AttributeError:
        raise RuntimeError(f"mlaverify.kernels.{module.__name__.rsplit('.', 1)[-1]}: expected {name!r} "
                           "(issue 11 boundary cases read tile sizes from it)") from None


def _modes():
    """The interpreter and the compiled sm_90 target: a case list must not depend on the machine drawing it.

    Each is read with P as hi + lo and with one rounding (``MLAVERIFY_P_SPLIT``), which changes the
    compiled tiles: the case list does not depend on that switch either."""
    from mlaverify.kernels import _targets

    return (_need(_targets, "INTERPRETER"), _need(_targets, "TARGETS")["sm_90"])


@functools.lru_cache(maxsize=1)
def kernel_tiles() -> dict[str, OpTiles]:
    from mlaverify.kernels import dense_decode, mha_prefill, sparse_decode, sparse_prefill

    modes = _modes()
    splits = (True, False)
    sd_cfgs = [c for h in (1, 128) for t in modes for p in splits
               for c in _sparse_decode_configs(sparse_decode, h, t, p)]
    sd_block_n = tuple(sorted({c.block_n for c in sd_cfgs}))
    sd_splits = tuple(_need(sparse_decode, "MIN_STEPS_PER_SPLIT") * n for n in sd_block_n)
    sd = OpTiles(list_tiles=sd_block_n, head_tiles=tuple(sorted({c.block_h for c in sd_cfgs})),
                 split=min(sd_splits), split_sizes=sd_splits, max_splits=_need(sparse_decode, "MAX_SPLITS"))
    sp_cfgs = [_need(sparse_prefill, "launch_tiles")(h, t, p) for h in (1, 128) for t in modes for p in splits]
    sp = OpTiles(list_tiles=tuple(sorted({c.block_k for c in sp_cfgs})),
                 head_tiles=tuple(sorted({c.block_h for c in sp_cfgs})))
    dd_cfgs = [_need(dense_decode, "launch_tiles")(rows, t, p) for rows in (1, 128) for t in modes for p in splits]
    dd = OpTiles(list_tiles=tuple(sorted({c.block_n for c in dd_cfgs})),
                 query_tiles=tuple(sorted({c.block_m for c in dd_cfgs})),
                 split=_need(dense_decode, "MIN_SPLIT_TOKENS"), split_sizes=(_need(dense_decode, "MIN_SPLIT_TOKENS"),))
    mha = [_need(mha_prefill, "_INTERPRETER_TILES"), *_need(mha_prefill, "_GPU_TILES").values()]
    mh = OpTiles(list_tiles=tuple(sorted({t.block_n for t in mha})), query_tiles=tuple(sorted({t.block_m for t in mha})))
    return {"sparse_decode": sd, "sparse_prefill": sp, "dense_decode": dd, "mha_prefill": mh}


def _sparse_decode_configs(sparse_decode, h: int, target, split_p: bool) -> list:
    """The launch configs sparse decode can run for h heads: every step size it accepts there
    (``SPARSE_DECODE_BLOCK_NS``; a refused one is skipped), so MLAVERIFY_SPARSE_DECODE_BLOCK_N never
    changes the case list."""
    from mlaverify.kernels import _options

    out = []
    for n in _need(_options, "SPARSE_DECODE_BLOCK_NS"):
        try:
            out.append(_need(sparse_decode, "choose_config")(1, 1, h, 1, target, split_p=split_p, block_n=n))
        except ValueError:
            continue  # e.g. 64 entries on a tile without the shared memory for them
    return out


def sparse_decode_splits(topk: int) -> tuple[int, int]:
    """(num_splits, entries per split) the sparse decode kernel picks in the interpreter for one row of one head."""
    import math

    from mlaverify.kernels import sparse_decode

    cfg = _need(sparse_decode, "choose_config")(1, 1, 1, topk, _modes()[0])
    return cfg.num_splits, math.ceil(math.ceil(topk / cfg.num_splits) / cfg.block_n) * cfg.block_n


def around(tile: int) -> list[int]:
    """tile - 1, tile, tile + 1 and several tiles plus a tail (3 tiles and a half, plus one)."""
    return sorted({max(1, tile - 1), tile, tile + 1, 3 * tile + tile // 2 + 1})
