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

from mlaverify.verify.cases import Case


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    full: tuple[Case, ...]      # production size, for GPUs
    cpu: tuple[Case, ...]       # same structure, small enough for the interpreter


_DECODE_BATCHES = {"v32": (2, 64, 74, 128), "model1": (2, 64, 74, 128, 148, 256)}


def _decode(name: str, model: str, h_q: int, main: tuple[int, int, int], extra: tuple[int, int, int] | None,
            extra_len: bool, cpu_main: tuple[int, int, int], cpu_extra: tuple[int, int, int] | None) -> Preset:
    def make(b: int, m: tuple[int, int, int], x: tuple[int, int, int] | None) -> Case:
        kw = dict(op="sparse_decode", model=model, b=b, s_q=2, h_q=h_q, s_kv=m[0], topk=m[1], page_block_size=m[2],
                  seed=0)
        if x is not None:
            kw.update(extra_s_kv=x[0], extra_topk=x[1], extra_page_block_size=x[2],
                      extra_topk_length="partial" if extra_len else "none")
        return Case(**kw)

    full = tuple(make(b, main, extra) for b in _DECODE_BATCHES[model])
    desc = f"sparse decode {model} h_q={h_q} s_k/topk/page block {main}" + (f", extra {extra}" if extra else "")
    return Preset(name, desc, full, (make(2, cpu_main, cpu_extra),))


def _prefill(name: str, model: str, h_q: int, topk: int, s_kv: tuple[int, ...], cpu: tuple[int, int, int]) -> Preset:
    full = tuple(Case(op="sparse_prefill", model=model, s_q=4096, h_q=h_q, s_kv=s, topk=topk, sink="finite")
                 for s in s_kv)
    s_q, cpu_topk, cpu_kv = cpu
    small = Case(op="sparse_prefill", model=model, s_q=s_q, h_q=h_q, s_kv=cpu_kv, topk=cpu_topk, sink="finite")
    return Preset(name, f"sparse prefill {model} h_q={h_q} topk={topk}", full, (small,))


def _dense() -> Preset:
    full = tuple(Case(op="dense_decode", model="v32", b=128, s_q=s_q, h_q=128, s_kv=s_k, page_block_size=64,
                      causal=causal, seqlens="varlen")
                 for s_q in (1, 2) for s_k in (4096, 8192, 16384, 32768) for causal in (False, True))
    cpu = tuple(Case(op="dense_decode", model="v32", b=2, s_q=s_q, h_q=128, s_kv=160, page_block_size=64,
                     causal=causal, seqlens="varlen") for s_q in (1, 2) for causal in (False, True))
    return Preset("dense-v32", "dense decode b=128 h_q=128 h_kv=1 d=576", full, cpu)


PRESETS: dict[str, Preset] = {p.name: p for p in (
    _decode("v32", "v32", 128, (32768, 2048, 64), None, False, (640, 256, 64), None),
    _decode("model1-config1", "model1", 64, (16384, 128, 256), (16384, 512, 64), False,
            (512, 128, 256), (600, 128, 64)),
    _decode("model1-config2", "model1", 128, (16384, 128, 256), (16384, 1024, 64), False,
            (512, 128, 256), (600, 256, 64)),
    _decode("model1-config3", "model1", 64, (16384, 128, 256), (16384, 1024, 2), True,
            (512, 128, 256), (600, 256, 2)),
    _decode("model1-config4", "model1", 128, (16384, 128, 256), (16384, 1024, 2), True,
            (512, 128, 256), (600, 256, 2)),
    _prefill("prefill-v32", "v32", 128, 2048, (8192, 32768, 131072), (4, 256, 600)),
    _prefill("prefill-model1-config1", "model1", 64, 512, (8192, 32768, 65536), (4, 128, 600)),
    _prefill("prefill-model1-config2", "model1", 128, 1024, (8192, 32768, 65536), (4, 256, 600)),
    _dense(),
)}


def preset_cases(name: str, size: str = "full", seed: int = 0) -> list[Case]:
    """The cases of a preset, at `size` "full" or "cpu", with `seed`."""
    if name not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {name!r}")
    if size not in ("full", "cpu"):
        raise ValueError(f"size: expected 'full' or 'cpu', got {size!r}")
    cases = PRESETS[name].full if size == "full" else PRESETS[name].cpu
    return [c.replace(seed=seed) for c in cases]
