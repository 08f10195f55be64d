"""The options shared by ``check``, ``gate`` and ``baseline``, and their checks before any case runs.

Nothing here imports torch: ``mlaverify --help`` builds every parser and must answer at once.
Values that can be wrong are checked by `validate_run_options` before a case runs (exit 2), so a
long run never ends on a typo.
"""
from __future__ import annotations

import argparse
import math
import re
import tomllib
from pathlib import Path
from typing import Any

from mlaverify.verify.budgets import DEFAULT_POLICY, POLICIES
from mlaverify.verify.presets import PRESETS

__all__ = ["add_check_options", "validate_run_options", "parse_shard", "split_list", "default_timeout",
           "DEFAULT_JSON", "DEFAULT_REPLAYS", "SHRINK_BUDGET_S", "DEFAULT_TIMEOUT_S"]

DEFAULT_JSON = "mlaverify-report.json"      # where the run's JSON report goes without --out
DEFAULT_REPLAYS = "mlaverify-replays"       # where failing cases go without --out
SHRINK_BUDGET_S = 120.0                     # total seconds spent shrinking per run
# Per-case limit of the worker (call + repeat + permuted call). CPU: the Triton interpreter's slowest
# `thorough` cases take ~1-2 minutes on 2 cores, so 600 s only stops a real hang; CUDA: compiled kernels
# finish a production-size case in seconds, the first call of a kernel includes its compilation (~1 min).
DEFAULT_TIMEOUT_S = {"cpu": 600.0, "cuda": 180.0}
_DEVICE = re.compile(r"(cpu|cuda)(:\d+)?")


class OptionError(ValueError):
    """A bad option value, found before any case runs (exit 2)."""


def split_list(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [v for item in values for v in item.split(",") if v]


def add_check_options(p: argparse.ArgumentParser, impl_required: bool = True) -> None:
    p.add_argument("--impl", required=impl_required, metavar="MODULE|path.py",
                   help="module name or .py file exposing the FlashMLA API (e.g. mlaverify.kernels, flash_mla); "
                        "a name is looked up in the current folder first")
    p.add_argument("--ops", nargs="+", metavar="OP", help="ops to verify (default: all the implementation has)")
    p.add_argument("--models", nargs="+", metavar="MODEL", help="models (v32, model1, d192, d128; default: all)")
    p.add_argument("--profile", choices=("ci", "dev", "thorough"), default=None,
                   help="case-drawing profile (default ci: deterministic)")
    p.add_argument("--max-examples", type=int, default=None, metavar="N",
                   help="drawn cases per op and model (the fixed corner cases of each op and model come on top)")
    p.add_argument("--seed", type=int, default=None, metavar="N", help="seed of the case draws (default 0)")
    p.add_argument("--preset", action="append", default=[], metavar="NAME",
                   help="run a named production configuration instead of drawn cases (repeatable): "
                        + ", ".join(PRESETS))
    p.add_argument("--preset-size", choices=("full", "cpu"), default=None,
                   help="full: production sizes (for GPUs); cpu: same structure, scaled down "
                        "(default: cpu on a CPU device, full otherwise)")
    p.add_argument("--shard", default=None, metavar="K/N", help="run only shard K of N (1-based), then `merge`")
    p.add_argument("--tolerance", action="append", default=[], metavar="OP.OUTPUT.FIELD=VALUE",
                   help="override one tolerance, e.g. sparse_decode.out.atol=2e-3 (repeatable)")
    p.add_argument("--tolerance-policy", choices=POLICIES, default=None,
                   help=f"flashmla (fixed table), calibrated (k x the numerics emulation's error, with a floor) or "
                        f"both (each policy that applies to a case must pass; default {DEFAULT_POLICY})")
    p.add_argument("--capabilities", default=None, metavar="PROFILE",
                   help="capability profile: full, reference or flash_mla (default: the module's own or by name)")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available, else cpu)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write report.json, report.md, report.html, junit.xml and replays/ into DIR")
    p.add_argument("--json", default=None, metavar="FILE",
                   help=f"JSON report path without --out (default {DEFAULT_JSON})")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="per-case limit of the implementation's worker (default: [tool.mlaverify] timeout in "
                        f"pyproject.toml, else {DEFAULT_TIMEOUT_S['cpu']:g} s on CPU, "
                        f"{DEFAULT_TIMEOUT_S['cuda']:g} s on CUDA)")
    p.add_argument("--in-process", action="store_true",
                   help="run the implementation in this process instead of a worker process (no protection "
                        "against exits, crashes or hangs; the report says which mode ran)")
    p.add_argument("--allow-skips", action="store_true",
                   help="exit 0 even when every selected case was skipped (default: exit 3, nothing verified)")
    p.add_argument("--allow-empty", action="store_true",
                   help="exit 0 even when no case was selected (default: exit 3, nothing verified)")
    p.add_argument("--no-shrink", action="store_true", help="write failing cases as found, without shrinking")
    p.add_argument("--shrink-budget", type=float, default=SHRINK_BUDGET_S, metavar="SECONDS",
                   help=f"total time spent shrinking failures (default {SHRINK_BUDGET_S:g})")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.add_argument("--require-coverage", action=argparse.BooleanOptionalAction, default=None,
                   help="fail (exit 1) when a boundary feature of a run op/model was never observed (default: on "
                        "for the ci profile's drawn cases without --shard or --preset)")


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'K/N' (1-based, as users count) -> the engine's (K - 1, N)."""
    if text is None:
        return None
    parts = text.split("/")
    try:
        k, n = (int(x) for x in parts)
    except ValueError:
        raise OptionError(f"--shard: expected K/N such as 2/4, got {text!r}") from None
    if n < 1 or not 1 <= k <= n:
        raise OptionError(f"--shard: expected 1 <= K <= N, got {text!r}")
    return k - 1, n


def _pyproject_tool(path: str | Path = "pyproject.toml") -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        return {}
    try:
        with p.open("rb") as f:
            return dict(tomllib.load(f).get("tool", {}).get("mlaverify", {}))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise OptionError(f"{p}: cannot read [tool.mlaverify] ({exc})") from None


def default_timeout(device_type: str, pyproject: str | Path = "pyproject.toml") -> float:
    """[tool.mlaverify] timeout (seconds, or a table {cpu = .., cuda = ..}), else DEFAULT_TIMEOUT_S."""
    value = _pyproject_tool(pyproject).get("timeout")
    if isinstance(value, dict):
        value = value.get(device_type)
    if value is None:
        return DEFAULT_TIMEOUT_S[device_type]
    return _positive_seconds("[tool.mlaverify] timeout", value)


def _positive_seconds(what: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise OptionError(f"{what}: expected a finite number of seconds > 0, got {value!r}")
    return float(value)


def _device_type(text: str | None) -> str:
    """'cpu' or 'cuda' for --device, checked against what this machine has."""
    if text is None:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if not _DEVICE.fullmatch(text):
        raise OptionError(f"--device: expected cpu, cuda or cuda:N, got {text!r}")
    if text.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise OptionError(f"--device {text}: no CUDA device is available here (torch.cuda.is_available() "
                              "is False); use --device cpu")
        index = int(text.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise OptionError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return "cuda"
    return "cpu"


def validate_run_options(args: argparse.Namespace) -> None:
    """Everything about the options that can be wrong, before any case runs (raises OptionError).
    Sets ``args.timeout`` to the resolved per-case limit."""
    from mlaverify.verify.tolerances import parse_override

    if args.out is not None and Path(args.out).exists() and not Path(args.out).is_dir():
        raise OptionError(f"--out: expected a folder (it is created if missing), got the existing file {args.out!r}")
    if getattr(args, "json", None) is not None and Path(args.json).is_dir():
        raise OptionError(f"--json: expected a file path, got the folder {args.json!r}")
    for text in args.tolerance:
        parse_override(text)
    parse_shard(args.shard)
    if args.max_examples is not None and args.max_examples < 1:
        raise OptionError(f"--max-examples: expected a number >= 1, got {args.max_examples}")
    if not (math.isfinite(args.shrink_budget) and args.shrink_budget >= 0):
        raise OptionError(f"--shrink-budget: expected a finite number of seconds >= 0, got {args.shrink_budget}")
    for name in args.preset:
        if name not in PRESETS:
            raise OptionError(f"--preset: expected one of {list(PRESETS)}, got {name!r}")
    device_type = _device_type(args.device)
    args.timeout = (_positive_seconds("--timeout", args.timeout) if args.timeout is not None
                    else default_timeout(device_type))
