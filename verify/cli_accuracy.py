"""``mlaverify accuracy``: what each KV-cache format costs in attention accuracy, as a report.

    mlaverify accuracy [--formats v32,model1,bf16,...] [--distributions peaked,...] [--models v32,model1]
                       [--ops sparse_decode,sparse_prefill] [--activations FILE.safetensors|FILE.pt ...]
                       [--preset NAME] [--impl MODULE] [--no-sweeps] --out DIR

Writes DIR/accuracy.json (schema-versioned), DIR/accuracy.md and DIR/accuracy.html. Exit codes: 0 the
report was written, 1 the --impl implementation failed on some row (the report says where), 2 usage
error. Nothing here imports torch at module import time (``mlaverify --help`` stays fast).
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

__all__ = ["add_parser", "run", "DEFAULT_OUT_FILES"]

DEFAULT_OUT_FILES = ("accuracy.json", "accuracy.md", "accuracy.html")


def _csv(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("accuracy", help="what each FP8 KV-cache format costs in attention accuracy (report)")
    p.add_argument("--formats", default=None, metavar="A,B,...",
                   help="cache formats: v32, v32-exact, model1, model1-f32, v32-ue8m0, bf16, or tN-SCALE "
                        "(SCALE float32|float32-pow2|ue8m0, e.g. t32-ue8m0); default: the first six")
    p.add_argument("--distributions", default=None, metavar="A,B,...",
                   help="value distributions (default: all of distributions.PRODUCTION_DISTRIBUTIONS)")
    p.add_argument("--models", default=None, metavar="A,B", help="key shapes: v32, model1 (default both)")
    p.add_argument("--ops", default=None, metavar="A,B", help="sparse_decode, sparse_prefill (default both)")
    p.add_argument("--activations", action="append", default=[], metavar="FILE",
                   help="real keys (and optionally queries, indices) from a .safetensors or .pt file (repeatable)")
    p.add_argument("--preset", default=None, metavar="NAME",
                   help="production shapes of reference.configs (v32, model1-config1..4); query rows sampled")
    p.add_argument("--impl", default=None, metavar="MODULE|path.py",
                   help="also measure this implementation's end-to-end error on the quantized cache "
                        "(flash_mla: pass --h-q 64 or 128 and a top-k multiple of 64, its limits)")
    p.add_argument("--capabilities", default=None, metavar="PROFILE", help="capability profile of --impl")
    p.add_argument("--device", default=None, help="device of the --impl calls (default: cuda if available)")
    p.add_argument("--h-q", type=int, default=None, metavar="N", help="query heads (both ops)")
    p.add_argument("--s-kv", type=int, default=None, metavar="N", help="cache tokens (both ops)")
    p.add_argument("--topk", type=int, default=None, metavar="N", help="keys per query (both ops)")
    p.add_argument("--rows", type=int, default=None, metavar="N", help="query rows (both ops)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of every draw (default 0)")
    p.add_argument("--no-sweeps", action="store_true", help="skip the outlier / top-k / sequence-length sweeps")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for accuracy.json, .md and .html")
    return p


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"--{name}: expected a positive integer, got {value}")


def _preset_settings(name: str, base):
    """(settings, models, ops) for a production configuration of reference.configs."""
    from mlaverify.reference import configs
    from mlaverify.verify.accuracy import OpShape

    decode = next((c for c in configs.SPARSE_DECODE if c.name == name), None)
    prefill = next((c for c in configs.SPARSE_PREFILL if c.name == name), None)
    if decode is None and prefill is None:
        names = sorted({c.name for c in (*configs.SPARSE_DECODE, *configs.SPARSE_PREFILL)})
        raise ValueError(f"--preset: expected one of {', '.join(names)}, got {name!r}")
    model = (decode or prefill).model.value
    settings, ops = dataclasses.replace(base, preset=name), []
    if decode is not None:  # the extra cache's tokens and list join the main ones: one cache, one list per query
        shape = OpShape(h_q=decode.h_q, s_kv=decode.s_k + decode.extra_s_k, topk=decode.topk + decode.extra_topk,
                        rows=decode.s_q * min(decode.batch_sizes))
        settings, ops = dataclasses.replace(settings, decode=shape), ops + ["sparse_decode"]
    if prefill is not None:  # s_q = 4096 rows are independent: a sample of them (rows) is measured
        shape = OpShape(h_q=prefill.h_q, s_kv=prefill.s_kv_range[0], topk=prefill.topk, rows=base.prefill.rows)
        settings, ops = dataclasses.replace(settings, prefill=shape), ops + ["sparse_prefill"]
    return settings, [model], ops


def _settings(args):
    from mlaverify.verify.accuracy import ACCURACY_OPS, AccuracySettings
    from mlaverify.verify.accuracy_formats import ACCURACY_MODELS

    for name in ("h_q", "s_kv", "topk", "rows"):
        _positive(name.replace("_", "-"), getattr(args, name))
    settings, models, ops = AccuracySettings(seed=args.seed), list(ACCURACY_MODELS), list(ACCURACY_OPS)
    if args.preset:
        settings, models, ops = _preset_settings(args.preset, settings)
    models = _csv(args.models) or models
    ops = _csv(args.ops) or ops
    for given, allowed, what in ((models, ACCURACY_MODELS, "--models"), (ops, ACCURACY_OPS, "--ops")):
        bad = [x for x in given if x not in allowed]
        if bad:
            raise ValueError(f"{what}: expected names from {', '.join(allowed)}, got {bad[0]!r}")
    overrides = {k: getattr(args, k) for k in ("h_q", "s_kv", "topk", "rows") if getattr(args, k) is not None}
    if overrides:
        settings = dataclasses.replace(settings, decode=dataclasses.replace(settings.decode, **overrides),
                                       prefill=dataclasses.replace(settings.prefill, **overrides))
    for op in ops:
        shape = settings.shape(op)
        if shape.s_kv % settings.block:
            raise ValueError(f"--s-kv: expected a multiple of the page block {settings.block}, got {shape.s_kv}")
    return settings, models, ops


def run(args: argparse.Namespace, out, err) -> int:
    import torch

    from mlaverify.verify.accuracy import run_accuracy
    from mlaverify.verify.accuracy_formats import parse_formats
    from mlaverify.verify.accuracy_inputs import file_inputs, load_activations, row_generator
    from mlaverify.verify.accuracy_report import AccuracyReport, conclusions, render_html, render_markdown
    from mlaverify.verify.distributions import PRODUCTION_DISTRIBUTIONS
    from mlaverify.verify.implementations import load_implementation
    from mlaverify.verify.report_common import write_atomic
    from mlaverify.verify.results import tool_version
    from mlaverify.verify.runner import default_device

    start = time.monotonic()
    formats = parse_formats(args.formats)
    dists = _csv(args.distributions) or list(PRODUCTION_DISTRIBUTIONS)
    bad = [d for d in dists if d not in PRODUCTION_DISTRIBUTIONS]
    if bad:
        raise ValueError(f"--distributions: expected names from {', '.join(PRODUCTION_DISTRIBUTIONS)}, got {bad[0]!r}")
    settings, models, ops = _settings(args)
    shape = settings.decode
    files = []
    for path in args.activations:
        x = file_inputs(load_activations(path), path, row_generator(settings.seed, "file", path), shape.topk,
                        shape.rows, shape.h_q, settings.block)
        files.append((f"file:{Path(path).name}", x))
    impl = load_implementation(args.impl, args.capabilities) if args.impl else None
    device = args.device or default_device()
    progress = None if args.quiet else (lambda line: print(f"accuracy: {line}", file=err, flush=True))
    with torch.no_grad():
        rows = run_accuracy(settings, formats, dists, models, ops, files, impl=impl, device=device,
                            sweeps=not args.no_sweeps, progress=progress)
    reasons = {d: PRODUCTION_DISTRIBUTIONS[d].reason for d in dists}
    reasons.update({label: f"real activations from {path}" for (label, _), path in zip(files, args.activations)})
    report = AccuracyReport(settings=settings.to_dict(), formats=[_format_dict(f) for f in formats],
                            distributions=reasons, rows=rows, implementation=args.impl, tool_version=tool_version(),
                            elapsed_s=time.monotonic() - start)
    folder = Path(args.out)
    written = [write_atomic(folder / "accuracy.json", report.to_json()),
               write_atomic(folder / "accuracy.md", render_markdown(report)),
               write_atomic(folder / "accuracy.html", render_html(report))]
    print(conclusions(report), file=out)
    for path in written:
        print(f"wrote {path}", file=out)
    return 1 if report.failed else 0


def _format_dict(fmt) -> dict:
    return {"name": fmt.name, "tile": fmt.tile, "scale_format": fmt.scale_format,
            "real": fmt.real.value if fmt.real else None, "description": fmt.description}
