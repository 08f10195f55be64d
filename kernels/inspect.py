"""Static resource report of the kernels, compiled for a GPU target on a machine without a GPU.

    python -m mlaverify.kernels.inspect [--target sm_90|sm_100|sm_80|sm_86|sm_89] [--preset NAME ...]
                                        [--all-batches] [--json FILE]

Every production configuration (``_inspect_cases``) is planned by the kernels' own host wrappers
(``*_plan``: block sizes, warps, stages and grid as a real launch would use them) and compiled
with Triton's bundled ptxas. Printed per kernel launch: grid, programs, resident blocks per SM
and waves on the target's SM count, warps/stages, registers, local (spill) bytes per thread,
the local loads/stores per iteration of the SASS main loop (what the spill costs each step),
shared memory against the target's per-block limit, the MMA kind and count per iteration of
the main loop (the innermost loop issuing the most tensor-core FLOPs), and the ratio of
tensor-core FLOPs issued to the FLOPs the spec counts for that iteration. Then, per case, a
roofline estimate of its time, TFLOPS and GB/s on the target and what binds it (``_estimate``),
beside issue 3's H200 targets where it sets one.

Compiling runs in a child process with ``TRITON_INTERPRET=0`` when this process runs the
kernels in Triton's interpreter (no CUDA); identical compilations are done once per run, and
Triton's own on-disk cache (``TRITON_CACHE_DIR``) makes reruns fast.
"""

from __future__ import annotations

from . import _runtime  # first: decides compiled vs interpreted before any kernel is built

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from typing import Sequence

from ._targets import TARGETS, get_target

_WORKER_FLAG = "--in-process"


def _row(case, launch, target, res, counted) -> dict:
    main = max(res.loops, key=lambda loop: loop.flops or 0.0, default=None)
    blocks = target.blocks_per_sm(res.num_warps, res.registers, res.shared_bytes)
    programs = launch.programs
    return {
        "case": case.name, "preset": case.preset, "op": case.op, "shape": case.shape, "kernel": launch.name,
        "grid": list(launch.grid), "programs": programs,
        "blocks_per_sm": blocks,
        "waves": programs / (target.sm_count * blocks) if blocks else None,
        "num_warps": res.num_warps, "num_stages": res.num_stages,
        "registers": res.registers, "spill_bytes": res.local_bytes,
        "loop_spill": None if res.loop_spill is None else dataclasses.asdict(res.loop_spill),
        "shared_bytes": res.shared_bytes, "shared_limit": target.smem_per_block,
        "shared_ok": res.shared_bytes <= target.smem_per_block,
        "mma_kinds": list(res.mma_kinds),
        "main_loop": None if main is None else {
            "kind": main.kind, "mma_per_iteration": main.count, "shapes": main.shapes,
            "issued_flops": main.flops, "barriers": main.barriers, "async_copies": main.async_copies,
            "instructions": main.instructions, "shared_bytes": main.shared_bytes,
        },
        "loops_with_mma": len(res.loops),
        "counted_flops": counted,
        "tensor_work_ratio": (main.flops / counted) if (main is not None and main.flops and counted) else None,
        "constexprs": {k: v for k, v in launch.constexprs.items() if k.startswith("BLOCK") or k in ("SPLIT_P", "P_SPLIT")},
        "partial_bytes": _partial_bytes(launch),
    }


def _partial_bytes(launch) -> int:
    """Bytes of the launch's float32 tensors of 3 or more dims: split partials, float32 accumulators."""
    import torch

    return sum(a.numel() * 4 for a in launch.args
               if isinstance(a, torch.Tensor) and a.dtype == torch.float32 and a.dim() >= 3)


def collect_in_process(target_name: str, presets=None, full: bool = True) -> dict:
    """The report for this process; the kernels must be compiled (not interpreted) JITFunctions."""
    if _runtime.INTERPRETED:
        raise RuntimeError("collect_in_process: the kernels run interpreted in this process; use collect()")
    from ._inspect_cases import counted_flops_per_iteration, select
    from ._estimate import estimate_cases
    from ._inspect_compile import compile_launch

    target = get_target(target_name)
    rows = []
    cases = select(presets, full)
    for case in cases:
        try:
            launches = case.build(target)
        except ValueError as exc:  # the wrapper refuses this target before launch: say so in the report
            rows.append({"case": case.name, "preset": case.preset, "op": case.op, "shape": case.shape,
                         "kernel": case.op, "unsupported": str(exc)})
            continue
        for launch in launches:
            res = compile_launch(launch, target)
            rows.append(_row(case, launch, target, res, counted_flops_per_iteration(launch, case)))
    estimates = estimate_cases(rows, {c.name: c.work for c in cases}, target)
    return {"target": dataclasses.asdict(target), "rows": rows, "estimates": estimates}


def collect(target_name: str = "sm_90", presets=None, full: bool = True, env: dict | None = None) -> dict:
    """The report, compiled in a child process when this one interprets the kernels.

    ``env``: extra environment variables for the child (e.g. a kernel option switch).
    """
    from ._inspect_cases import select

    get_target(target_name)  # fail early on a bad name
    select(presets)  # ... and on a bad preset name
    if not _runtime.INTERPRETED and not env:
        return collect_in_process(target_name, presets, full)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "report.json")
        argv = [sys.executable, "-m", "mlaverify.kernels.inspect", _WORKER_FLAG, "--target", target_name,
                "--json", out, "--quiet"]
        if full:
            argv.append("--all-batches")
        for preset in presets or ():
            argv += ["--preset", preset]
        child_env = {**os.environ, "TRITON_INTERPRET": "0", **(env or {})}
        child_env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, stated to silence its warning
        proc = subprocess.run(argv, env=child_env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"inspect child failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        with open(out) as f:
            return json.load(f)


def _fmt(x, spec="") -> str:
    return "-" if x is None else format(x, spec)


def format_table(report: dict) -> str:
    t = report["target"]
    lines = [f"target {t['name']} ({t['product']}: {t['sm_count']} SMs, {t['smem_per_block']} B shared per block)",
             "| case | kernel | grid (programs) | blocks/SM, waves | warps/stages | regs | spill B | smem B | "
             "loop LDL/STL | main-loop MMA per iter | bar | cp.async | PTX instr | smem KB/iter | issued/counted |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        if "unsupported" in r:
            lines.append(f"| {r['case']} | {r['kernel']} | not supported on this target: {r['unsupported']} |")
            continue
        main = r["main_loop"]
        mma = "-" if main is None else (
            f"{main['kind']} " + ", ".join(f"{n}x{s}" for s, n in sorted(main["shapes"].items())))
        smem = f"{r['shared_bytes']:,}" + ("" if r["shared_ok"] else " OVER")
        ls = r.get("loop_spill")
        loop_spill = "-" if ls is None else f"{ls['loads']}/{ls['stores']}"
        lines.append(
            f"| {r['case']} | {r['kernel']} | {'x'.join(map(str, r['grid']))} ({r['programs']:,}) | "
            f"{r['blocks_per_sm']}, {_fmt(r['waves'], '.2f')} | {r['num_warps']}/{r['num_stages']} | "
            f"{r['registers']} | {r['spill_bytes']} | {smem} | {loop_spill} | {mma} | "
            f"{_fmt(main and main['barriers'])} | {_fmt(main and main['async_copies'])} | "
            f"{_fmt(main and main.get('instructions'))} | "
            f"{_fmt(main and main.get('shared_bytes') and main['shared_bytes'] / 1024, '.0f')} | "
            f"{_fmt(r['tensor_work_ratio'], '.2f')} |"
        )
    if report.get("estimates"):
        from ._estimate import format_estimates

        lines += ["", format_estimates(report["estimates"], t)]
    return "\n".join(lines)


def _write_json(path: str, report: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1)
    os.replace(tmp, path)  # atomic


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlaverify.kernels.inspect", description=__doc__.split("\n")[0])
    parser.add_argument("--target", default="sm_90", choices=sorted(TARGETS))
    parser.add_argument("--preset", action="append", help="preset name (repeatable); default: all")
    parser.add_argument("--all-batches", action="store_true",
                        help="every batch size of the sparse decode records (default: the smallest and the largest)")
    parser.add_argument("--json", help="also write the report as JSON to this file")
    parser.add_argument("--quiet", action="store_true", help="print no table")
    parser.add_argument(_WORKER_FLAG, dest="in_process", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        if args.in_process:
            report = collect_in_process(args.target, args.preset, args.all_batches)
        else:
            report = collect(args.target, args.preset, args.all_batches)
    except ValueError as exc:
        print(f"inspect: {exc}", file=sys.stderr)
        return 2
    if args.json:
        _write_json(args.json, report)
    if not args.quiet:
        print(format_table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
