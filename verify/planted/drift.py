"""A regression that stays within tolerance: the gate must catch it, a plain check must not.

``within_tolerance_drift`` is the reference except that, in sparse prefill's ``out``, the elements
whose bit pattern is a multiple of 61 (a value-based choice, so repeated runs agree) are moved two
bfloat16 ulps away from zero, the way a changed accumulation order or a sloppier exp2 can worsen
the worst element without breaking the 3.01/128 relative tolerance. Every case still passes (the
cosine difference stays below its bound, too); the gate fails it because the max ulp error grew
over the baseline. That holds under FlashMLA's fixed table (``--tolerance-policy flashmla``); the
calibrated budget (2x the numerics emulation's error) is tighter and fails the drift in the check
itself, so the self-test exercises the gate's teeth under the fixed table.
"""
from __future__ import annotations

import torch

from ._base import PlantedBug, sparse_fwd_wrapper

EVERY = 61  # elements whose bf16 bit pattern is a multiple of EVERY move (about 1 in 61: the cosine difference
# stays below its bound on production-distribution cases too, e.g. outlier channels, where 1 in 31 reached 1.08x)
ULPS = 2.0  # by this many bf16 ulps: with the 0.5 ulp of rounding, < 3.01/128 relative


def drift(t: torch.Tensor) -> torch.Tensor:
    """t (bf16) with the chosen elements moved ULPS bf16 ulps away from zero."""
    v = t.detach().float()
    pick = (t.detach().contiguous().view(torch.int16).int() % EVERY == 0) & torch.isfinite(v) & (v != 0)
    spacing = torch.exp2(torch.floor(torch.log2(v.abs().masked_fill(~pick, 1.0))) - 7.0)  # bf16 ulp at |v|
    return torch.where(pick, v + torch.sign(v) * ULPS * spacing, v).to(t.dtype)


def _prefill(called: dict, outputs: tuple) -> tuple:
    out, max_logits, lse = outputs
    return drift(out), max_logits, lse


DRIFT = PlantedBug("within_tolerance_drift", "sparse prefill out elements moved 2 bf16 ulps, within tolerance",
                   ("sparse_prefill",), ("v32", "model1"), {"flash_mla_sparse_fwd": sparse_fwd_wrapper(post=_prefill)})
