"""Benchmark the Triton kernels on the production configurations of configs-and-performance.md.

    python -m mlaverify.kernels.benchmark [--ops sparse_decode,sparse_prefill,dense_decode,mha_prefill]
                                          [--impls triton,flash_mla,reference] [--batch B]
                                          [--out DIR] [--quick]

The configurations come from mlaverify.reference.configs (adapted in _bench_cases). For each it
prints the median time, TFLOPS and GB/s (the spec's formulas, counted from the actual inputs) of
our Triton kernels, side by side with ``flash_mla`` when it is importable and with the reference,
and writes the table as ``benchmark.json`` and ``benchmark.csv`` in DIR. With compiled Triton
(CUDA) the inputs rotate over sets larger than L2 and TFLOPS / GB/s use the kernel span from the
profiler when it was measured (else the call time). In Triton's interpreter (no CUDA) it runs
scaled-down shapes, and the numbers mean nothing beyond "it runs". The mha_prefill rows (forward
and backward of the Triton dense MHA prefill) come from mlaverify.kernels.mha_benchmark, which
times the Triton kernels only (no GB/s). Exit status: 0, or 1 when a Triton row failed, or 2 for
bad arguments.
"""

from __future__ import annotations

from mlaverify.kernels import _runtime  # first: it selects compiled vs interpreted mode

import argparse
import csv
import dataclasses
import importlib
import json
import os
import tempfile
from pathlib import Path
from typing import Sequence

import torch

from mlaverify.kernels import _bench_formulas as F
from mlaverify.kernels._bench_cases import (CONFIG_OPS, PRODUCTION, BenchConfig, build_inputs, make_call,
                                            scaled_down)
from mlaverify.kernels._bench_timing import rotation_sets, time_cpu, time_cuda

SCHEMA_VERSION = 1
MHA_OP = "mha_prefill"  # rows from mha_benchmark.mha_benchmark_rows, not from a BenchConfig
OPS = (*CONFIG_OPS, MHA_OP)
IMPLS = ("triton", "flash_mla", "reference")
CPU_NOTE = ("Triton interpreter on CPU with scaled-down shapes: absolute numbers mean nothing "
            "(they time numpy emulation, not a GPU); the run only shows that every path works.")
COLUMNS = ("op", "config", "impl", "status", "call_ms", "kernel_ms", "tflops", "gb_per_s", "timed", "target",
           "meets_target", "flops", "bytes", "input_sets", "shape")


def _triton_kernel(name: str) -> bool:
    return name.startswith(("_sparse_decode", "_dense_decode", "_sparse_prefill"))


def _flash_mla_kernel(name: str) -> bool:
    return "flash" in name.lower() or "mla" in name.lower()


KERNEL_FILTERS = {"triton": _triton_kernel, "flash_mla": _flash_mla_kernel, "reference": None}


def load_impls(names: Sequence[str], compiled: bool) -> dict[str, tuple[object | None, str]]:
    """name -> (module with FlashMLA's API, or None; why it is unavailable)."""
    found: dict[str, tuple[object | None, str]] = {}
    for name in names:
        if name == "flash_mla" and not compiled:
            found[name] = (None, "unavailable: flash_mla runs on CUDA only")
            continue
        module = {"triton": "mlaverify.kernels", "flash_mla": "flash_mla", "reference": "mlaverify.reference"}[name]
        try:
            found[name] = (importlib.import_module(module), "")
        except ImportError as exc:
            found[name] = (None, f"unavailable: import {module} failed ({exc})")
    return found


def select_configs(ops: Sequence[str], quick: bool, compiled: bool, batch: int | None) -> list[BenchConfig]:
    configs = [c for c in PRODUCTION if c.op in ops]
    if batch is not None:
        configs = [dataclasses.replace(c, b=batch) if c.op != "sparse_prefill" else c for c in configs]
    if quick:  # the first configuration of each op
        configs = [c for i, c in enumerate(configs) if all(p.op != c.op for p in configs[:i])]
    return configs if compiled else [scaled_down(c) for c in configs]


def _row(cfg: BenchConfig, impl: str, status: str, n_sets: int, inputs=None, timing=None) -> dict:
    row = dict.fromkeys(COLUMNS)
    row.update(op=cfg.op, config=cfg.name, impl=impl, status=status, shape=cfg.shape(), input_sets=n_sets)
    if cfg.target is not None:
        row["target"] = f"{cfg.target[0]} >= {cfg.target[1]:g}"
    if inputs is None or timing is None:
        return row
    ms = timing.kernel_ms if timing.kernel_ms is not None else timing.call_ms
    row.update(call_ms=timing.call_ms, kernel_ms=timing.kernel_ms, flops=inputs.flops, bytes=inputs.n_bytes,
               tflops=F.tflops(inputs.flops, ms), gb_per_s=F.gb_per_s(inputs.n_bytes, ms),
               timed="kernel span" if timing.kernel_ms is not None else "call")
    if cfg.target is not None:
        row["meets_target"] = row[cfg.target[0]] >= cfg.target[1]
    return row


def _mha_row(impl: str, config: str, status: str) -> dict:
    row = dict.fromkeys(COLUMNS)
    row.update(op=MHA_OP, config=config, impl=impl, status=status)
    return row


def mha_rows(device: torch.device, quick: bool, impls: Sequence[str]) -> list[dict]:
    """The mha_prefill rows (fwd, bwd) of mha_benchmark in this table's columns; Triton only."""
    suffix = "" if device.type == "cuda" else "-cpu-tiny"  # mha_benchmark scales down off CUDA too
    rows = [_mha_row(impl, "mha" + suffix, "not measured: the mha benchmark times the Triton kernels only")
            for impl in impls if impl != "triton"]
    if "triton" not in impls:
        return rows
    try:
        from mlaverify.kernels.mha_benchmark import mha_benchmark_rows

        measured = mha_benchmark_rows(device, quick)
    except Exception as exc:  # as for the other ops: report the failure, keep the other rows
        return [_mha_row("triton", "mha" + suffix, f"error: {type(exc).__name__}: {exc}"[:300])] + rows
    triton_rows = []
    for m in measured:  # dicts: direction, config, batch, seqlen, h_q, ..., time_ms, flops, tflops, target_tflops
        row = _mha_row("triton", f"mha-{m['direction']}{suffix}", "ok")
        row.update(call_ms=m["time_ms"], tflops=m["tflops"], flops=m["flops"], timed="call", input_sets=1,
                   shape=(f"{m['config']}: b={m['batch']} seqlen={m['seqlen']} h_q={m['h_q']} h_kv={m['h_kv']} "
                          f"d_qk={m['d_qk']} d_v={m['d_v']}" + (" causal" if m["causal"] else "")))
        if m["target_tflops"] is not None:
            row.update(target=f"tflops >= {m['target_tflops']:g}", meets_target=m["tflops"] >= m["target_tflops"])
        triton_rows.append(row)
    return triton_rows + rows


def run_benchmark(ops: Sequence[str], impls: Sequence[str], quick: bool, batch: int | None = None) -> dict:
    """Measure every selected configuration with every implementation; returns the report dict."""
    compiled = not _runtime.INTERPRETED and torch.cuda.is_available()
    device = torch.device("cuda" if compiled else "cpu")
    apis = load_impls(impls, compiled)
    rows = []
    for cfg in select_configs(ops, quick, compiled, batch):
        first = build_inputs(cfg, device, seed=0)
        n_sets = rotation_sets(first.n_bytes, first.alloc_bytes, device)
        sets = [first] + [build_inputs(cfg, device, seed=k) for k in range(1, n_sets)]
        for impl in impls:
            api, why = apis[impl]
            if api is None:
                rows.append(_row(cfg, impl, why, n_sets))
                continue
            try:
                calls = [make_call(api, cfg, s) for s in sets]
                timing = (time_cuda(calls, quick, KERNEL_FILTERS[impl]) if compiled
                          else time_cpu(calls, reps=1 if quick else 3))
                rows.append(_row(cfg, impl, "ok", n_sets, first, timing))
            except Exception as exc:  # one failing implementation must not hide the others' numbers
                rows.append(_row(cfg, impl, f"error: {type(exc).__name__}: {exc}"[:300], n_sets))
        del sets, first
        if compiled:
            torch.cuda.empty_cache()
    if MHA_OP in ops:
        rows += mha_rows(device, quick, impls)
    return {
        "schema_version": SCHEMA_VERSION,
        "device": torch.cuda.get_device_name(device) if compiled else "cpu",
        "mode": _runtime.mode(),
        "scaled_down": not compiled,
        "note": "" if compiled else CPU_NOTE,
        "rows": rows,
    }


def _fmt(value, width: int, spec: str) -> str:
    return ("-" if value is None else format(value, spec)).rjust(width)


def format_table(report: dict) -> str:
    head = f"{'config':<32} {'impl':<10} {'ms':>10} {'kernel ms':>10} {'TFLOPS':>8} {'GB/s':>8}  target / status"
    lines = [f"device: {report['device']} ({report['mode']} Triton)"]
    if report["note"]:
        lines.append(f"NOTE: {report['note']}")
    lines += [head, "-" * len(head)]
    for r in report["rows"]:
        verdict = r["status"]
        if r["status"] == "ok" and r["target"]:
            verdict = f"{r['target']}: {'met' if r['meets_target'] else 'NOT met'}"
        lines.append(f"{r['config']:<32} {r['impl']:<10} {_fmt(r['call_ms'], 10, '.3f')} "
                     f"{_fmt(r['kernel_ms'], 10, '.3f')} {_fmt(r['tflops'], 8, '.3g')} {_fmt(r['gb_per_s'], 8, '.4g')}  "
                     f"{verdict}")
    return "\n".join(lines)


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w", newline="") as f:
        f.write(text)
    os.replace(tmp, path)


def write_outputs(report: dict, out_dir: Path) -> tuple[Path, Path]:
    """benchmark.json (the whole report) and benchmark.csv (the rows), each written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out_dir / "benchmark.json", out_dir / "benchmark.csv"
    _write_atomic(json_path, json.dumps(report, indent=2) + "\n")
    with tempfile.SpooledTemporaryFile(mode="w+", newline="") as buf:
        writer = csv.DictWriter(buf, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(report["rows"])
        buf.seek(0)
        _write_atomic(csv_path, buf.read())
    return json_path, csv_path


def _names(text: str, allowed: Sequence[str], option: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"{option}: expected a comma-separated subset of {list(allowed)}, got {text!r}")
    return names


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlaverify.kernels.benchmark",
                                     description="Benchmark the Triton MLA kernels on the production configurations.")
    parser.add_argument("--ops", type=lambda s: _names(s, OPS, "--ops"), default=list(OPS),
                        help=f"comma-separated ops (default: all of {','.join(OPS)})")
    parser.add_argument("--impls", type=lambda s: _names(s, IMPLS, "--impls"), default=list(IMPLS),
                        help="comma-separated implementations (default: triton,flash_mla,reference)")
    parser.add_argument("--batch", type=int, default=None, help="override the decode batch size (default 128)")
    parser.add_argument("--out", type=Path, default=Path("benchmark-results"), help="directory for JSON and CSV")
    parser.add_argument("--quick", action="store_true", help="first configuration of each op, fewer repetitions")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return 0 if exc.code == 0 else 2
    if args.batch is not None and args.batch < 1:
        print(f"--batch: expected a positive integer, got {args.batch}")
        return 2
    report = run_benchmark(args.ops, args.impls, args.quick, args.batch)
    print(format_table(report))
    json_path, csv_path = write_outputs(report, args.out)
    print(f"wrote {json_path} and {csv_path}")
    failed = [r for r in report["rows"] if r["impl"] == "triton" and r["status"] != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
