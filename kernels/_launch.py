"""One kernel launch as data: the kernel, its grid, its arguments and its launch options.

Every host wrapper of this package builds its launches with a ``*_plan`` function that takes
already validated tensors (real ones, or ``device="meta"`` ones of the same shapes and strides)
and returns ``KernelLaunch`` records; the wrapper then calls them. ``mlaverify.kernels.inspect``
compiles the very same records for a GPU target without launching anything, so the block
sizes, warps, stages and grid it reports are the ones the wrappers use, never restated.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

GRID_Y_Z_LIMIT = 65535  # CUDA: grid dimensions y and z are capped at 2^16 - 1 (x at 2^31 - 1)
GRID_X_LIMIT = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class KernelLaunch:
    """One launch of a ``@triton.jit`` kernel."""

    name: str  # label for reports, e.g. "sparse_decode.split"
    kernel: Any  # the @triton.jit function (JITFunction compiled, InterpretedFunction interpreted)
    grid: tuple  # programs per grid axis, 1 to 3 ints
    args: tuple  # positional arguments: tensors and runtime scalars
    constexprs: dict  # keyword constexpr arguments
    num_warps: int | None = None  # None: Triton's default (the interpreter ignores it anyway)
    num_stages: int | None = None  # None: Triton's default

    def __post_init__(self):
        limits = (GRID_X_LIMIT, GRID_Y_Z_LIMIT, GRID_Y_Z_LIMIT)
        for axis, (size, limit) in enumerate(zip(self.grid, limits)):
            if size > limit:
                raise ValueError(
                    f"{self.name}: grid axis {axis} needs {size} programs, more than CUDA's limit of {limit}"
                )

    @property
    def programs(self) -> int:
        total = 1
        for size in self.grid:
            total *= size
        return total

    def arg(self, name: str):
        """The value passed for the kernel parameter `name` (positional or constexpr)."""
        if name in self.constexprs:
            return self.constexprs[name]
        params = list(inspect.signature(self.kernel.fn).parameters)
        return self.args[params.index(name)]

    def launch_options(self) -> dict:
        options = {}
        if self.num_warps is not None:
            options["num_warps"] = self.num_warps
        if self.num_stages is not None:
            options["num_stages"] = self.num_stages
        return options

    def __call__(self) -> None:
        if self.programs == 0:
            return
        self.kernel[self.grid](*self.args, **self.constexprs, **self.launch_options())


def run_all(launches) -> None:
    """Launch the records in order."""
    for launch in launches:
        launch()
