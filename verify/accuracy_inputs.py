"""The inputs of `mlaverify accuracy`: keys, queries and index lists, drawn or read from a file.

Drawn inputs come from a named production-like distribution (`distributions.PRODUCTION_DISTRIBUTIONS`),
one torch.Generator seeded per (seed, distribution, model, op, sweep point), so every row of the report
can be re-drawn alone. Real activations come from a `.safetensors` file (safetensors, no code runs) or a
`.pt` file read with `torch.load(weights_only=True)` (tensors only, never pickle), holding:
- `keys` (or `k`, `kv`): [n, d_qk], d_qk 576 (V32 shape) or 512 (MODEL1 shape), any float dtype;
- `queries` (or `q`), optional: [rows, h_q, d_qk] or [rows, d_qk]; without it, peaked queries are built
  from the keys (the distribution of production heads, `make_queries(..., "peaked")`);
- `indices`, optional: [rows, topk] integer key rows each query attends to (-1: none); without it, each
  query attends to a random top-k of the keys.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from mlaverify.reference import ModelType
from mlaverify.verify.distributions import Distribution, make_queries

__all__ = ["AttentionInputs", "ActivationsError", "draw_inputs", "load_activations", "file_inputs", "row_generator"]

_KEY_NAMES, _QUERY_NAMES, _INDEX_NAMES = ("keys", "k", "kv"), ("queries", "q"), ("indices",)


class ActivationsError(ValueError):
    """An activations file cannot be used; the message names the file and what is wrong."""


@dataclass
class AttentionInputs:
    keys: torch.Tensor       # [n, d_qk] bf16, n a multiple of the page block (padding rows never attended)
    q: torch.Tensor          # [rows, h_q, d_qk] bf16
    lists: torch.Tensor      # [rows, topk] int64 key rows, -1 = not attended
    model: ModelType
    softmax_scale: float


def row_generator(*parts) -> torch.Generator:
    """A generator seeded from the parts of a report row (stable across runs and machines)."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _random_lists(g, rows: int, topk: int, n: int) -> torch.Tensor:
    """[rows, topk] int64: per row min(topk, n) distinct key rows of [0, n), the rest -1."""
    out = torch.full((rows, topk), -1, dtype=torch.int64)
    for r in range(rows):
        out[r, :min(topk, n)] = torch.randperm(n, generator=g)[:topk]
    return out


def _pad(keys: torch.Tensor, block: int) -> torch.Tensor:
    extra = -keys.shape[0] % block
    return torch.cat([keys, keys.new_zeros(extra, keys.shape[1])]) if extra else keys


def draw_inputs(g, dist: Distribution, model: ModelType, s_kv: int, topk: int, rows: int, h_q: int,
                block: int) -> AttentionInputs:
    """Keys of s_kv tokens, rows queries of h_q heads, each attending to topk random tokens."""
    scale = model.d_qk ** -0.5  # the API default softmax scale
    keys = dist.make_keys(g, s_kv, model.d_nope, model.d_rope)
    lists = _random_lists(g, rows, topk, s_kv)
    q = dist.make_queries(g, keys, lists, scale, n_heads=h_q)
    return AttentionInputs(_pad(keys, block).to(torch.bfloat16), q.to(torch.bfloat16), lists, model, scale)


def load_activations(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors or .pt file (tensors only: weights_only=True, never pickle)."""
    path = Path(path)
    if not path.is_file():
        raise ActivationsError(f"--activations {path}: no such file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            data = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise ActivationsError(f"--activations {path}: not a readable safetensors file ({exc})") from None
    elif path.suffix == ".pt":
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
            raise ActivationsError(f"--activations {path}: not loadable with weights_only=True "
                                   f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    else:
        raise ActivationsError(f"--activations {path}: expected a .safetensors or .pt file, got {path.suffix!r}")
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ActivationsError(f"--activations {path}: expected a dict of tensors, got {type(data).__name__}")
    return data


def _pick(data: dict, names: tuple[str, ...], path, required: bool) -> torch.Tensor | None:
    found = [n for n in names if n in data]
    if len(found) > 1:
        raise ActivationsError(f"--activations {path}: holds both {found[0]!r} and {found[1]!r}; keep one")
    if not found:
        if required:
            raise ActivationsError(f"--activations {path}: expected a tensor named one of {list(names)}, "
                                   f"got {sorted(data)}")
        return None
    return data[found[0]]


def file_inputs(data: dict[str, torch.Tensor], path, g, topk: int, rows: int, h_q: int,
                block: int) -> AttentionInputs:
    """AttentionInputs from a loaded activations file (see the module docstring for its tensors)."""
    keys = _pick(data, _KEY_NAMES, path, True)
    if keys.dim() != 2 or not keys.dtype.is_floating_point or keys.shape[0] < 1:
        raise ActivationsError(f"--activations {path}: keys: expected a float tensor [n >= 1, d_qk], got "
                               f"{keys.dtype} {list(keys.shape)}")
    try:
        model = ModelType.from_d_qk(keys.shape[1])
    except ValueError:
        raise ActivationsError(f"--activations {path}: keys: expected d_qk 576 (V32) or 512 (MODEL1), got "
                               f"{keys.shape[1]}") from None
    if not bool(torch.isfinite(keys).all()):
        raise ActivationsError(f"--activations {path}: keys: expected finite values, got NaN or inf")
    n, scale = keys.shape[0], model.d_qk ** -0.5
    keys = keys.float()
    lists = _pick(data, _INDEX_NAMES, path, False)
    queries = _pick(data, _QUERY_NAMES, path, False)
    if lists is not None:
        if lists.dim() != 2 or lists.dtype.is_floating_point:
            raise ActivationsError(f"--activations {path}: indices: expected an integer tensor [rows, topk], got "
                                   f"{lists.dtype} {list(lists.shape)}")
        lists = lists.long()
        bad = (lists < -1) | (lists >= n)
        if bool(bad.any()):
            raise ActivationsError(f"--activations {path}: indices: expected -1 or key rows in [0, {n}), got "
                                   f"{int(lists[bad][0])}")
        rows = lists.shape[0]
    if queries is not None:
        if queries.dim() == 2:
            queries = queries.unsqueeze(1)  # [rows, d_qk] -> one head
        if queries.dim() != 3 or queries.shape[-1] != model.d_qk or not queries.dtype.is_floating_point:
            raise ActivationsError(f"--activations {path}: queries: expected a float tensor [rows, h_q, "
                                   f"{model.d_qk}], got {queries.dtype} {list(queries.shape)}")
        if lists is not None and queries.shape[0] != lists.shape[0]:
            raise ActivationsError(f"--activations {path}: queries has {queries.shape[0]} rows, indices "
                                   f"{lists.shape[0]}; expected the same")
        rows = queries.shape[0]
    if lists is None:
        lists = _random_lists(g, rows, topk, n)
    if queries is None:
        queries = make_queries(g, "peaked", keys, lists, scale, n_heads=h_q)
    return AttentionInputs(_pad(keys, block).to(torch.bfloat16), queries.to(torch.bfloat16), lists, model, scale)
