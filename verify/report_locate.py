"""The worst element of a failing output, in words a kernel developer reads: ``b=0 q=1 h=49 d=388``.

`named_index` names each coordinate of an output's index from the op's output layout (no tensors
needed). `element_detail` adds what `mlaverify replay` prints for the element (the FP8 quant tile,
the top-k slot, cache position and page block that dominate it: `replay_locate.locate`), by
regenerating the case's inputs from its seed on the CPU; it is skipped for cases too large to
regenerate quickly, where the replay command gives the same line.
"""
from __future__ import annotations

import functools

from mlaverify.verify.cases import Case

__all__ = ["DIM_NAMES", "named_index", "element_detail", "MAX_LOCATE_ELEMENTS"]

# op -> output -> the name of each dimension of that output (ops.py's `expected` shapes).
_DECODE = {"out": ("b", "q", "h", "d"), "lse": ("b", "h", "q")}
DIM_NAMES: dict[str, dict[str, tuple[str, ...]]] = {
    "sparse_decode": _DECODE,
    "dense_decode": _DECODE,
    "sparse_prefill": {"out": ("q", "h", "d"), "max_logits": ("q", "h"), "lse": ("q", "h")},
    "mha_prefill": {"out": ("tok", "h", "d"), "lse": ("tok", "h"), "dq": ("tok", "h", "d"),
                    "dk": ("key", "h_kv", "d"), "dv": ("key", "h_kv", "d")},
}
# Largest case (elements of its biggest cache / key tensor) whose inputs the report regenerates to decode
# the worst element: about 0.1 s on one CPU core. Larger ones (production presets) say "see replay".
MAX_LOCATE_ELEMENTS = 1 << 24


def named_index(op: str, output: str, index: tuple[int, ...] | None) -> str:
    """"b=0 q=1 h=49 d=388"; plain "[0, 1, 49, 388]" when the layout is unknown or does not fit."""
    if index is None:
        return "-"
    names = DIM_NAMES.get(op, {}).get(output)
    if names is None or len(names) != len(index):
        return "[" + ", ".join(map(str, index)) + "]"
    return " ".join(f"{n}={i}" for n, i in zip(names, index))


def _case_elements(case: Case) -> int:
    tokens = case.b * (case.s_kv + case.extra_s_kv) + case.s_q * case.b * case.h_q
    return tokens * max(case.d_qk, 1) * max(case.h_kv, 1)


@functools.lru_cache(maxsize=256)
def element_detail(case: Case, output: str, index: tuple[int, ...]) -> str | None:
    """`replay_locate.locate`'s line for the element, or None when the case is too large to regenerate.
    Cached: the HTML, Markdown and JUnit renderers ask for the same elements."""
    if _case_elements(case) > MAX_LOCATE_ELEMENTS:
        return None
    from mlaverify.verify.materialize import materialize   # torch: imported only when a report decodes
    from mlaverify.verify.replay_locate import locate

    try:
        inputs = materialize(case, "cpu")
    except Exception as exc:  # the table already holds the verdict; this is extra detail
        return f"(inputs not regenerated: {type(exc).__name__}: {exc})"
    return locate(inputs, output, index)
