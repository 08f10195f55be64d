"""Compile one ``KernelLaunch`` for a GPU target without a GPU, and read its resources.

Must run in a process where ``mlaverify.kernels`` was imported with ``TRITON_INTERPRET=0``
(``mlaverify.kernels.inspect`` starts such a process): only then are the kernels Triton
``JITFunction``s that compile. The launch's arguments go through Triton's own binder, so the
integer and pointer specializations (value 1, divisibility by 16) are those a real launch with
these shapes gets; meta tensors report address 0, i.e. aligned like real allocations.

Resources come from the compiled artifacts: registers and local (spill) bytes per thread from
``cuobjdump --dump-resource-usage`` of the cubin, shared memory from Triton's metadata (what
the launch requests), the MMA instructions of each innermost loop of the PTX, and the local
loads and stores (LDL/STL: where a spill costs time) inside the SASS main loop, read with
``nvdisasm``: a kernel whose spills all sit in its prologue and epilogue pays them once.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import tempfile

from triton.backends.compiler import GPUTarget as TritonTarget
from triton.compiler import ASTSource, compile as triton_compile, make_backend
from triton.runtime.jit import create_function_from_signature

from ._launch import KernelLaunch
from ._targets import GpuTarget


@dataclasses.dataclass(frozen=True)
class LoopMma:
    """The tensor-core instructions of one innermost PTX loop that issues any."""

    kind: str  # "wgmma", "mma.sync" or "tcgen05"
    count: int  # MMA instructions per iteration, per thread's instruction stream
    shapes: dict  # "m64n32k16" -> count
    flops: float | None  # tensor-core FLOPs issued per iteration by the whole block (None: shape unknown)
    barriers: int  # bar.sync / barrier instructions per iteration
    async_copies: int  # cp.async / cp.async.bulk (TMA) instructions per iteration
    instructions: int = 0  # PTX instructions per iteration, per thread: the ALU work (dequant, softmax) a change adds or saves
    shared_bytes: int = 0  # shared-memory bytes per iteration, whole block: see `shared_traffic`


@dataclasses.dataclass(frozen=True)
class CompiledResources:
    registers: int  # per thread
    local_bytes: int  # per thread: stack frame (where ptxas spills) or local memory, the larger
    shared_bytes: int  # dynamic shared memory the launch requests (Triton metadata)
    num_warps: int
    num_stages: int
    loops: tuple  # LoopMma of each innermost loop with MMAs, in PTX order
    mma_kinds: tuple  # every MMA kind anywhere in the kernel
    loop_spill: "SassLoopSpill | None" = None  # LDL/STL in the SASS main loop (None: no SASS loop with MMAs)


@dataclasses.dataclass(frozen=True)
class SassLoopSpill:
    """Local-memory traffic of the SASS main loop: the innermost loop with the most MMA instructions."""

    loads: int  # LDL instructions per iteration
    stores: int  # STL instructions per iteration
    instructions: int  # SASS instructions per iteration


def _tool(name: str) -> str:
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    if not os.path.exists(path):
        raise RuntimeError(f"{name}: not found at {path}; the triton wheel bundles it (triton >= 3.0)")
    return path


_CACHE: dict = {}  # compile key -> CompiledResources, for the lifetime of the process


def compile_key(launch: KernelLaunch, target: GpuTarget):
    """(triton target, backend, binder output): the launch as Triton would specialize it."""
    t = TritonTarget("cuda", target.capability, 32)
    backend = make_backend(t)
    kernel = launch.kernel
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    kwargs = {**launch.constexprs, **launch.launch_options()}
    bound, specialization, options = binder(*launch.args, **kwargs)
    key = (launch.name, target.name, str(specialization), str(sorted(kwargs.items())))
    return key, (t, backend, kernel, kwargs, bound, specialization, options)


def compile_launch(launch: KernelLaunch, target: GpuTarget) -> CompiledResources:
    """Compile (once per key in this process) and read the resources."""
    key, (t, backend, kernel, kwargs, bound, specialization, options) = compile_key(launch, target)
    if key in _CACHE:
        return _CACHE[key]
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    compiled = triton_compile(ASTSource(kernel, signature, constexprs, attrs), target=t, options=options.__dict__)
    regs, local = _resource_usage(compiled.asm["cubin"], compiled.metadata.name)
    loop_spill = sass_main_loop_spill(_read_cubin("nvdisasm", "-c", compiled.asm["cubin"]))
    meta = compiled.metadata
    ptx = compiled.asm["ptx"]
    warps = meta.num_warps
    result = CompiledResources(regs, local, int(meta.shared), warps, meta.num_stages,
                               tuple(innermost_loops(ptx, warps)), tuple(sorted(_kinds(ptx))), loop_spill)
    _CACHE[key] = result
    return result


def _read_cubin(tool: str, flag: str, cubin: bytes) -> str:
    """stdout of one of the wheel's CUDA tools run on the cubin."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        return subprocess.run([_tool(tool), flag, path], check=True, capture_output=True, text=True).stdout


def _resource_usage(cubin: bytes, name: str) -> tuple[int, int]:
    text = _read_cubin("cuobjdump", "--dump-resource-usage", cubin)
    match = re.search(r"Function (\S+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", text)
    if match is None:
        raise RuntimeError(f"cuobjdump: no resource line for {name} in:\n{text}")
    return int(match.group(2)), max(int(match.group(3)), int(match.group(5)))  # spills live in the stack frame


_SASS_LABEL = re.compile(r"^\s*\.(L_x_\d+):")
_SASS_BRANCH = re.compile(r"\bBRA\b[^;]*?\.(L_x_\d+)")
_SASS_OPCODE = re.compile(r"/\*[0-9a-f]{4,}\*/")  # an instruction line carries its address
_SASS_MMA = re.compile(r"\b(HGMMA|HMMA|UTCHMMA|UTCQMMA)\b")


def _innermost_mma_loops(lines: list, label, branch, has_mma) -> list:
    """(first, last) line of each loop = [label, backward branch to it] that holds an MMA line and
    contains no other such loop, in program order (PTX and SASS alike: their own patterns)."""
    labels: dict = {}
    loops = []
    for i, line in enumerate(lines):
        match = label.match(line)
        if match:
            labels[match.group(1)] = i
        for target in branch.findall(line):
            if target in labels and labels[target] < i:
                loops.append((labels[target], i))
    with_mma = [(a, b) for a, b in loops if any(has_mma(x) for x in lines[a:b + 1])]
    return sorted({(a, b) for a, b in with_mma
                   if not any((c, d) != (a, b) and a <= c and d <= b for c, d in with_mma)})


def sass_main_loop_spill(sass: str) -> SassLoopSpill | None:
    """LDL/STL per iteration of the innermost SASS loop (label, backward BRA) with the most MMAs."""
    lines = sass.splitlines()
    innermost = _innermost_mma_loops(lines, _SASS_LABEL, _SASS_BRANCH, _SASS_MMA.search)
    if not innermost:
        return None
    a, b = max(innermost, key=lambda ab: sum(1 for x in lines[ab[0]:ab[1] + 1] if _SASS_MMA.search(x)))
    body = [x for x in lines[a:b + 1] if _SASS_OPCODE.search(x)]
    return SassLoopSpill(sum(1 for x in body if re.search(r"\bLDL\b", x)),
                         sum(1 for x in body if re.search(r"\bSTL\b", x)), len(body))


_MMA_PATTERNS = (
    ("wgmma", re.compile(r"\bwgmma\.mma_async\S*\.(m\d+n\d+k\d+)\b")),
    ("mma.sync", re.compile(r"\bmma\.sync\S*\.(m\d+n\d+k\d+)\b")),
    ("tcgen05", re.compile(r"\btcgen05\.mma\b()")),
)
_LABEL = re.compile(r"^\s*(\$L__\w+):")
_BRANCH = re.compile(r"\bbra(?:\.uni)?\s+(\$L__\w+);")
_BARRIER = re.compile(r"\b(bar\.sync|barrier\.sync|bar\.arrive|barrier\.cta)")
_ASYNC_COPY = re.compile(r"\bcp\.async(?!\.wait|\.commit|\.mbarrier)")
_INSTRUCTION = re.compile(r"^\s*(@!?%\w+\s+)?[a-z][\w.]*[\s;]")  # an opcode line (not a label, directive or brace)


_SHARED_ACCESS = re.compile(r"\b(?:ld|st)\.shared(?:::cta)?(?:\.v(\d))?\.[bsuf](\d+)\b")
_MATRIX_ACCESS = re.compile(r"\b(?:ldmatrix|stmatrix)\S*\.x(\d)\b")
_ASYNC_COPY_BYTES = re.compile(r"\bcp\.async\.c[ag]\.shared\S*\s*\[[^\]]*\],\s*\[[^\]]*\],\s*(0x[0-9a-fA-F]+|\d+)")
_WGMMA_OPERANDS = re.compile(
    r"\bwgmma\.mma_async\S*\.m(\d+)n(\d+)k(\d+)\.\w+\.(\w+)\.\w+\s+\{[^}]*\},\s*(\{|%rd)")


def shared_traffic(line: str, num_warps: int) -> int:
    """Shared-memory bytes one PTX line moves for the whole block (0 for other lines).

    ld/st.shared: vector width x element bytes per thread; ldmatrix/stmatrix .xN: N 8x8 16-bit
    matrices per warp; cp.async: its copy size per thread (written); wgmma: the operands it reads
    from shared memory, per warpgroup: B always, A when given as a descriptor (not registers).
    """
    threads = num_warps * 32
    m = _SHARED_ACCESS.search(line)
    if m:
        return int(m.group(1) or 1) * int(m.group(2)) // 8 * threads
    m = _MATRIX_ACCESS.search(line)
    if m:
        return int(m.group(1)) * 8 * 8 * 2 * num_warps
    m = _ASYNC_COPY_BYTES.search(line)
    if m:
        return int(m.group(1), 0) * threads
    m = _WGMMA_OPERANDS.search(line)
    if m:
        rows, cols, depth = int(m.group(1)), int(m.group(2)), int(m.group(3))
        size = 1 if m.group(4).startswith("e") else 2  # e4m3 / e5m2 operands: one byte
        a_from_shared = m.group(5) == "%rd"
        return (rows * depth * a_from_shared + cols * depth) * size * (num_warps // 4)
    return 0


def _kinds(ptx: str) -> set:
    return {kind for kind, pattern in _MMA_PATTERNS if pattern.search(ptx)}


def _mma_flops(kind: str, shape: str, num_warps: int) -> float | None:
    m, n, k = (int(x) for x in re.match(r"m(\d+)n(\d+)k(\d+)", shape).groups())
    per_instruction = 2.0 * m * n * k
    if kind == "wgmma":
        return per_instruction * (num_warps // 4)  # one instruction per warpgroup
    if kind == "mma.sync":
        return per_instruction * num_warps  # one instruction per warp
    return None


def innermost_loops(ptx: str, num_warps: int) -> list[LoopMma]:
    """Loops = [label, backward branch to it]; the innermost ones holding MMAs, with their counts."""
    lines = ptx.splitlines()
    result = []
    for a, b in _innermost_mma_loops(lines, _LABEL, _BRANCH, _kinds):
        body = lines[a:b + 1]
        counts: dict = {}
        kind_of = {}
        for line in body:
            for kind, pattern in _MMA_PATTERNS:
                match = pattern.search(line)
                if match:
                    shape = match.group(1) or "?"
                    counts[shape] = counts.get(shape, 0) + 1
                    kind_of[shape] = kind
        flops = 0.0
        for shape, count in counts.items():
            f = _mma_flops(kind_of[shape], shape, num_warps) if shape != "?" else None
            flops = None if (f is None or flops is None) else flops + f * count
        kinds = sorted(set(kind_of.values()))
        result.append(LoopMma(
            "+".join(kinds), sum(counts.values()), counts, flops,
            sum(1 for line in body if _BARRIER.search(line)),
            sum(1 for line in body if _ASYNC_COPY.search(line)),
            sum(1 for line in body if _INSTRUCTION.match(line)),
            sum(shared_traffic(line, num_warps) for line in body),
        ))
    return result
