"""Named production configurations (configs-and-performance.md) as `Case`s.

    preset_cases("model1-config3")                 # full size (GPU), one case per batch size
    preset_cases("model1-config3", size="cpu")     # scaled down for the Triton interpreter
    PRESETS["v32"].op, PRESETS.keys()

Sparse decode: "v32", "model1-config1" .. "model1-config4" (s_q = 2, extra cache and
extra_topk_length as in the table). Sparse prefill: "prefill-v32",
"prefill-model1-config1", "prefill-model1-config2" (s_q 4096, sink on). Dense decode:
"dense-v32" (b 128, s_q 1 and 2, causal off and on). The CPU versions keep every structural
feature (h_q, page block sizes, extra cache, extra_topk_length, sink) and shrink the lengths.
"""
from __future__ import annotations

from dataclasses import dataclass

from mlaverify.reference import configs
from mlaverify.verify.cases import Case


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    full: tuple[Case, ...]      # production size, for GPUs
    cpu: tuple[Case, ...]       # same structure, small enough for the interpreter


# CPU sizes: (s_k, topk) of the main and the extra list. Page block sizes, h_q, the extra cache and
# extra_topk_length stay those of the production record, so the structure is the same.
_CPU_DECODE = {
    "v32": ((640, 256), None),
    "model1-config1": ((512, 128), (600, 128)),
    "model1-config2": ((512, 128), (600, 256)),
    "model1-config3": ((512, 128), (600, 256)),
    "model1-config4": ((512, 128), (600, 256)),
}
_CPU_PREFILL = {"v32": 256, "model1-config1": 128, "model1-config2": 256}  # topk on CPU (s_q 4, s_kv 600)


def _decode(cfg: configs.SparseDecodeConfig) -> Preset:
    def make(b: int, main: tuple[int, int], extra: tuple[int, int] | None) -> Case:
        kw = dict(op="sparse_decode", model=cfg.model.value, b=b, s_q=cfg.s_q, h_q=cfg.h_q, s_kv=main[0],
                  topk=main[1], page_block_size=cfg.page_block_size, seed=0)
        if extra is not None:
            kw.update(extra_s_kv=extra[0], extra_topk=extra[1], extra_page_block_size=cfg.extra_page_block_size,
                      extra_topk_length="partial" if cfg.extra_topk_length else "none")
        return Case(**kw)

    main, extra = (cfg.s_k, cfg.topk), ((cfg.extra_s_k, cfg.extra_topk) if cfg.extra_s_k else None)
    full = tuple(make(b, main, extra) for b in cfg.batch_sizes)
    cpu_main, cpu_extra = _CPU_DECODE[cfg.name]
    desc = (f"sparse decode {cfg.model.value} h_q={cfg.h_q} s_k/topk/page block "
            f"{(cfg.s_k, cfg.topk, cfg.page_block_size)}")
    if extra:
        desc += f", extra {(cfg.extra_s_k, cfg.extra_topk, cfg.extra_page_block_size)}"
    return Preset(cfg.name, desc, full, (make(2, cpu_main, cpu_extra),))


def _prefill(cfg: configs.SparsePrefillConfig) -> Preset:
    lo, hi = cfg.s_kv_range
    s_kv = sorted({lo, min(4 * lo, hi), hi})  # the range's ends and one point between
    sink = "finite" if cfg.attn_sink else "none"
    model = cfg.model.value
    full = tuple(Case(op="sparse_prefill", model=model, s_q=cfg.s_q, h_q=cfg.h_q, s_kv=s, topk=cfg.topk, sink=sink)
                 for s in s_kv)
    small = Case(op="sparse_prefill", model=model, s_q=4, h_q=cfg.h_q, s_kv=600, topk=_CPU_PREFILL[cfg.name],
                 sink=sink)
    return Preset(f"prefill-{cfg.name}", f"sparse prefill {model} h_q={cfg.h_q} topk={cfg.topk}", full, (small,))


def _dense(grid: configs.DenseDecodeGrid) -> Preset:
    def make(b: int, s_q: int, s_k: int, causal: bool) -> Case:
        return Case(op="dense_decode", model="v32" if grid.d == 576 else "model1", b=b, s_q=s_q, h_q=grid.h_q,
                    h_kv=grid.h_kv, s_kv=s_k, page_block_size=grid.page_block_size, causal=causal, seqlens="varlen")

    full = tuple(make(grid.b, s_q, s_k, c) for s_q in grid.s_q for s_k in grid.s_k for c in grid.causal)
    cpu = tuple(make(2, s_q, 160, c) for s_q in grid.s_q for c in grid.causal)
    desc = f"dense decode b={grid.b} h_q={grid.h_q} h_kv={grid.h_kv} d={grid.d}"
    return Preset("dense-v32", desc, full, cpu)


PRESETS: dict[str, Preset] = {p.name: p for p in (
    *(_decode(cfg) for cfg in configs.SPARSE_DECODE),
    *(_prefill(cfg) for cfg in configs.SPARSE_PREFILL),
    _dense(configs.DENSE_DECODE_GRID),
)}


def preset_cases(name: str, size: str = "full", seed: int = 0) -> list[Case]:
    """The cases of a preset, at `size` "full" or "cpu", with `seed`."""
    if name not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {name!r}")
    if size not in ("full", "cpu"):
        raise ValueError(f"size: expected 'full' or 'cpu', got {size!r}")
    cases = PRESETS[name].full if size == "full" else PRESETS[name].cpu
    return [c.replace(seed=seed) for c in cases]
