"""Reading a compiled, per-chip HLO module's text: what ``cost_analysis()`` and
``memory_analysis()`` do not say (collective traffic by kind, the FLOPs of splash kernels,
which XLA counts as ~0, the ENTRY arguments each chip is handed, the largest buffers)."""
from __future__ import annotations

import re

import numpy as np

_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4, "u32": 4,
                "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8}
_SHAPE = re.compile(r"\b(pred|[suf]\d+|bf16|c64)\[([\d,]*)\]")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.+?)\s+([\w\-]+)\(")
COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")


def _shapes(text: str) -> list[tuple[str, tuple[int, ...]]]:
    return [(d, tuple(int(x) for x in dims.split(",") if x)) for d, dims in _SHAPE.findall(text)]


def _nbytes(dtype: str, dims) -> int:
    return int(np.prod(dims)) * _DTYPE_BYTES.get(dtype, 4)


def hlo_instructions(hlo: str):
    """(opcode, result-shape text, full line) of every instruction of a compiled HLO module."""
    for line in hlo.splitlines():
        m = _INSTR.match(line)
        if m:
            yield m.group(2), m.group(1), line


def collective_bytes(hlo: str) -> dict[str, int]:
    """Result bytes of each collective kind, per chip, per execution of the module text (ops in
    a while body count once). Async ``-start`` ops count their output buffer; ``-done`` nothing."""
    out = {k: 0 for k in COLLECTIVES}
    for op, shape, _ in hlo_instructions(hlo):
        base = op[:-len("-start")] if op.endswith("-start") else op
        if base not in out:
            continue
        sizes = [_nbytes(d, dims) for d, dims in _shapes(shape)]
        if sizes:
            out[base] += max(sizes) if op.endswith("-start") else sum(sizes)
    return out


# Matmuls (2 * Lq * Lk * D FLOPs each) per splash kernel: fwd QK^T, PV; dq recomputes QK^T, dP,
# dS K; dkv recomputes QK^T, dP, P^T dO, dS^T Q.
_SPLASH_MATMULS = {"fwd": 2, "dq": 3, "dkv": 4}


def splash_flops(hlo: str) -> tuple[float, int]:
    """Analytic FLOPs of the splash kernels in a compiled module (XLA counts custom calls as ~0),
    from each custom call's operand shapes: (flops, number of kernel calls)."""
    flops, calls = 0.0, 0
    for op, _, line in hlo_instructions(hlo):
        if op != "custom-call" or "tpu_custom_call" not in line:
            continue
        found = re.search(r"splash_mha_(dkv|dq|fwd)", line)  # kernel name: instruction or config
        if found is None:
            continue
        kind = found.group(1)
        # operand shapes: printed inline in XLA's dumps, else in operand_layout_constraints
        inline = re.search(r"custom-call\((.*?)\),\s*custom_call_target", line)
        ops = re.search(r"operand_layout_constraints=\{(.*?)\}(?:,\s*[a-z_]+=|$)", line)
        text = inline.group(1) if inline and _shapes(inline.group(1)) else (ops.group(1) if ops else "")
        arrays = [s for s in _shapes(text) if len(s[1]) >= 3 and s[0] in ("bf16", "f16", "f32")]
        if len(arrays) < 2:
            continue
        q, k = arrays[0][1], arrays[1][1]          # [..., H, Lq, D], [..., H, Lk, D]
        flops += 2.0 * _SPLASH_MATMULS[kind] * np.prod(q[:-1]) * k[-2] * q[-1]
        calls += 1
    return flops, calls


def entry_argument_bytes(hlo: str) -> int:
    """Bytes of the compiled module's ENTRY parameters as XLA declares them (per-chip shapes,
    no layout padding): what each chip is really handed."""
    for line in hlo.splitlines():
        if line.startswith("ENTRY"):
            signature = line.split(" -> ")[0]
            return sum(_nbytes(d, dims) for d, dims in _shapes(signature))
    raise ValueError("no ENTRY computation in the HLO text")


def largest_buffers(hlo: str, n: int = 5, skip=("parameter", "get-tuple-element", "tuple", "bitcast")):
    """The ``n`` largest per-chip instruction results (bytes, opcode, shape) of a compiled module."""
    rows = []
    for op, shape, _ in hlo_instructions(hlo):
        if op in skip or op.endswith("-done"):
            continue
        for d, dims in _shapes(shape):
            rows.append((_nbytes(d, dims), op, f"{d}[{','.join(map(str, dims))}]"))
    return sorted(rows, reverse=True)[:n]
