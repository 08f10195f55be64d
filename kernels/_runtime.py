"""How Triton runs in this process: compiled for a GPU, or in Triton's interpreter on CPU.

Triton decides between compiling and interpreting when a ``@triton.jit`` decorator runs, by
reading ``TRITON_INTERPRET``. This module therefore settles the mode once, when it is first
imported, before any kernel module of this package is imported (every kernel module imports
it first, and ``mlaverify.kernels`` imports it before anything else):

- ``TRITON_DEFAULT_FP_FUSION``: pinned to ``1`` unless the user set it (see below).
- ``TRITON_INTERPRET`` set by the user: respected as given.
- unset and no CUDA device: set to ``1`` so that the kernels run in the interpreter on CPU.
- unset and CUDA available: left unset, the kernels compile for the GPU.

Setting an environment variable at import is the one deliberate import-time side effect of
the package; it has to happen before Triton builds the kernels, and later is too late.

The kernels never fall back to the reference: a tensor the chosen mode cannot serve raises
``RuntimeError`` saying what to do (``require_device``).
"""

from __future__ import annotations

import os

import torch

_ENV = "TRITON_INTERPRET"

# Whether the user chose the mode (the variable was set before this package touched it).
USER_CHOSE_MODE: bool = _ENV in os.environ
if not USER_CHOSE_MODE and not torch.cuda.is_available():
    os.environ[_ENV] = "1"

# FP fusion (a * b + c contracted to one FMA in compiled kernels) changes results in the last bits.
# Triton 3.9 enables it by default and warns that the default flips in 3.10; pinned here (a user's own
# setting wins) so that compiled results stay comparable to recorded baselines across Triton releases.
FP_FUSION_ENV = "TRITON_DEFAULT_FP_FUSION"
os.environ.setdefault(FP_FUSION_ENV, "1")

import triton  # noqa: E402  (must follow the environment decision above)

# True: @triton.jit functions built from now on run in Triton's interpreter (numpy on CPU).
INTERPRETED: bool = bool(triton.knobs.runtime.interpret)

# Device types whose tensors the compiled mode can launch kernels on (ROCm torch says "cuda" too).
_COMPILED_DEVICE_TYPES = ("cuda",)


def mode() -> str:
    """'interpreted' or 'compiled', as decided when this module was first imported."""
    return "interpreted" if INTERPRETED else "compiled"


def require_device(tensor: torch.Tensor, name: str) -> None:
    """Raise RuntimeError when the kernels cannot run on `tensor`'s device in this process's mode.

    The interpreter reads any tensor Triton can copy to host memory (CPU or CUDA); compiled
    kernels need GPU tensors. Nothing falls back to the reference.
    """
    device = tensor.device
    if INTERPRETED:
        if device.type in ("cpu",) + _COMPILED_DEVICE_TYPES:
            return
        raise RuntimeError(
            f"{name}: tensor is on {device}, but Triton runs interpreted in this process "
            f"({_ENV}={os.environ.get(_ENV)!r}) and reads only cpu or cuda tensors; "
            "move the tensors to the cpu"
        )
    if device.type in _COMPILED_DEVICE_TYPES:
        return
    raise RuntimeError(
        f"{name}: tensor is on {device}, but Triton runs compiled for the GPU in this process "
        f"({_ENV} was {os.environ.get(_ENV)!r} when mlaverify.kernels was imported); move the "
        f"tensors to a CUDA device, or set {_ENV}=1 in the environment before importing "
        "mlaverify.kernels to run the kernels in Triton's interpreter on the cpu"
    )


def require_same_device(named: dict[str, torch.Tensor | None]) -> torch.device:
    """require_device for every given tensor (None skipped); all must share one device.

    Returns that device. Raises ValueError when the tensors sit on different devices.
    """
    device = None
    first = None
    for name, tensor in named.items():
        if tensor is None:
            continue
        require_device(tensor, name)
        if device is None:
            device, first = tensor.device, name
        elif tensor.device != device:
            raise ValueError(
                f"{name}: expected a tensor on {device} (the device of {first}), got {tensor.device}"
            )
    if device is None:
        raise ValueError("expected at least one tensor, got none")
    return device


def parallelism(device: torch.device) -> int:
    """How many programs the device runs at once: the SM count on a GPU.

    In the interpreter programs run one after another; 4 keeps the split logic exercised on
    the small shapes that the interpreter can afford.
    """
    if device.type == "cuda" and not INTERPRETED:
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4
