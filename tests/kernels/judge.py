"""How the kernel tests judge an output: the engine's own rule, not a table of their own.

The kernels round P (and dS) to bf16 once, as FlashMLA does (``MLAVERIFY_P_SPLIT`` unset or 0).
Next to the unrounded reference that costs up to 2^-9 per softmax weight, which FlashMLA's fixed
table was never calibrated for on these tests' unit-scale randn data. So an output must stay
within its calibrated budget: ``max(floor, k x the numerics emulation's error)`` on max, p99 and
cosine (`mlaverify.verify.budgets`), the emulation being the reference with that one rounding.
With ``MLAVERIFY_P_SPLIT=1`` (hi + lo, nearly exact products) the fixed table must hold as well.
"""
from __future__ import annotations

import torch

from mlaverify.kernels import _options
from mlaverify.verify.budgets import judge
from mlaverify.verify.compare import compare_tensor
from mlaverify.verify.tolerances import DEFAULT_TOLERANCES


def budget_failure(op: str, name: str, actual, reference: torch.Tensor, emulated: torch.Tensor,
                   expected_shape=None, expected_dtype=None) -> str | None:
    """None when `actual` passes (see the module docstring), else the engine's message."""
    tol = DEFAULT_TOLERANCES[op][name]
    m = compare_tensor(name, actual, reference, tol, expected_shape=expected_shape, expected_dtype=expected_dtype)
    policy = "both" if _options.p_split() else "calibrated"
    m = judge(m, actual, emulated, reference, tol, dist="flashmla", policy=policy)
    return None if m.passed else m.message


def assert_within_budget(op: str, name: str, actual, reference: torch.Tensor, emulated: torch.Tensor,
                         expected_shape=None, expected_dtype=None) -> None:
    message = budget_failure(op, name, actual, reference, emulated, expected_shape, expected_dtype)
    assert message is None, message
