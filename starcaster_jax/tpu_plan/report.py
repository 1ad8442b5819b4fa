"""What one compiled program costs per chip, and what to change when it does not fit.

``plan_program`` compiles a lowered :class:`~starcaster_jax.tpu_plan.programs.Program` for the
topology, reads XLA's ``memory_analysis()`` / ``cost_analysis()`` and the compiled HLO
(``hlo``), and returns a :class:`Report`: a program XLA:TPU refuses to compile for lack of HBM
becomes a report too (``oom``), so the plan says "does not fit" instead of raising."""
from __future__ import annotations

import dataclasses
import glob
import os
import re
import tempfile

import jax

from starcaster_jax.tpu_plan.chips import Chip
from starcaster_jax.tpu_plan.hlo import COLLECTIVES, collective_bytes, splash_flops
from starcaster_jax.tpu_plan.programs import TRAIN_PREFIXES, Program, per_chip_bytes

# remat policies from most to least memory kept for the backward pass (models/unet.py)
REMAT_ORDER = ("none", "dots_saveable", "dots", "full")


@dataclasses.dataclass
class Report:
    program: str
    chip: Chip
    groups: dict[str, int]           # per-chip bytes per group (arguments as compiled + resident)
    xla_argument: int                # XLA's argument size (includes TPU layout padding; pruned args excluded)
    temp: int
    output: int
    alias: int
    xla_flops: float
    kernel_flops: float
    kernel_calls: int
    bytes_accessed: float
    collectives: dict[str, int]
    steps: int
    oom: str = ""                    # XLA:TPU refused to compile: its message

    @property
    def argument(self) -> int:
        """Resident bytes per chip: the larger of the shard sizes of everything held (pruned
        arguments included) and XLA's own argument size (tile padding included)."""
        return max(sum(self.groups.values()), self.xla_argument)

    @property
    def total(self) -> int:
        return self.argument + self.temp + self.output - self.alias

    @property
    def fits(self) -> bool:
        return not self.oom and self.total <= self.chip.hbm_bytes

    @property
    def flops(self) -> float:
        return self.steps * (self.xla_flops + self.kernel_flops)

    @property
    def times(self) -> dict[str, float]:
        c = self.chip
        return {"compute": self.flops / c.peak_bf16, "hbm": self.steps * self.bytes_accessed / c.hbm_bw,
                "ici": self.steps * sum(self.collectives.values()) / c.ici_bw}

    @property
    def step_time(self) -> float:
        return max(self.times.values())

    @property
    def mfu(self) -> float:
        t = self.step_time
        return self.flops / (t * self.chip.peak_bf16) if t > 0 else 0.0


def compiled_args(prog: Program, compiled) -> tuple:
    """``prog.call_args`` with the shardings the compiled program takes them in (arguments it
    does not read, which JAX prunes, come back replicated)."""
    shardings = compiled.input_shardings[0]
    return jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                        tuple(prog.call_args), tuple(shardings))


def _group_bytes(prog: Program) -> dict[str, int]:
    # the shardings the arrays live in (the trainer's); the compiled program takes its used
    # arguments in exactly these (tests/test_tpu_aot.py), and reports the pruned ones replicated
    groups = {k: per_chip_bytes(v) for k, v in prog.groups(tuple(prog.call_args)).items()}
    groups.update({k: per_chip_bytes(v) for k, v in prog.resident.items()})
    return groups


def analyse(prog: Program, compiled, hlo: str, chip: Chip) -> Report:
    """Per-chip memory, FLOPs and collectives of one compiled program.

    XLA's cost analysis counts a while loop's body once; the generation chunk's sampler is a
    ``fori_loop`` over ``steps``, so its figures are multiplied by ``prog.steps`` (which
    overcounts the once-per-chunk audio encoder a little)."""
    mem = compiled.memory_analysis()
    ca = compiled.cost_analysis()
    ca = (ca[0] if isinstance(ca, (list, tuple)) else ca) or {}
    kflops, kcalls = splash_flops(hlo)
    return Report(program=prog.name, chip=chip, groups=_group_bytes(prog),
                  xla_argument=int(mem.argument_size_in_bytes),
                  temp=int(mem.temp_size_in_bytes), output=int(mem.output_size_in_bytes),
                  alias=int(mem.alias_size_in_bytes), xla_flops=float(ca.get("flops", 0.0)),
                  kernel_flops=kflops, kernel_calls=kcalls,
                  bytes_accessed=float(ca.get("bytes accessed", 0.0)),
                  collectives=collective_bytes(hlo), steps=prog.steps)


_OOM = re.compile(r"required for HLO temporaries \(([\d.]+)([KMGT])\) exceeds available HBM")
_UNIT = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def oom_report(prog: Program, message: str, chip: Chip) -> Report:
    """A program XLA:TPU refused to compile for lack of HBM: what it said its temporaries need."""
    m = _OOM.search(message)
    temp = int(float(m.group(1)) * _UNIT[m.group(2)]) if m else 0
    return Report(program=prog.name, chip=chip, groups=_group_bytes(prog), xla_argument=0, temp=temp,
                  output=0, alias=0, xla_flops=0.0, kernel_flops=0.0, kernel_calls=0, bytes_accessed=0.0,
                  collectives={k: 0 for k in COLLECTIVES}, steps=prog.steps,
                  oom=message.strip().splitlines()[0])


class CompileOOM(Exception):
    """XLA:TPU's compile-time "ran out of memory on HBM"."""


def compile_program(prog: Program):
    """-> (compiled, per-chip optimised HLO text). Raises ``CompileOOM`` when XLA:TPU finds the
    program's temporaries alone exceed the chip's HBM.

    The text is ``compiled.as_text()``; where a module does not print (some XLA:TPU async ops
    did not round-trip through this jaxlib's HLO printer), the program is compiled again with
    XLA's own dump, which always works but costs a second compile."""
    try:
        compiled = prog.lowered.compile()
    except Exception as e:  # jax.errors.JaxRuntimeError; its type moved between jax releases
        if "RESOURCE_EXHAUSTED" in str(e) or "Ran out of memory" in str(e):
            raise CompileOOM(str(e)) from None
        raise
    try:
        return compiled, compiled.as_text()
    except Exception:  # noqa: BLE001 - any printer failure: fall back to the dump
        pass
    with tempfile.TemporaryDirectory() as d:
        again = prog.lowered.compile(compiler_options={"xla_dump_to": d, "xla_dump_hlo_as_text": True})
        files = sorted(glob.glob(os.path.join(d, "*.after_optimizations.txt")), key=os.path.getsize)
        if not files:
            raise RuntimeError(f"{prog.name}: XLA wrote no optimised HLO dump")
        with open(files[-1]) as f:
            return again, f.read()


def plan_program(prog: Program, chip: Chip) -> tuple[Report, str]:
    """Compile and analyse one program -> (report, optimised HLO text; "" when it did not compile)."""
    try:
        compiled, hlo = compile_program(prog)
    except CompileOOM as e:
        return oom_report(prog, str(e), chip), ""
    return analyse(prog, compiled, hlo, chip), hlo


# -- formatting --------------------------------------------------------------------------------------
def gib(x: float) -> str:
    return f"{x / 2**30:.2f}"


def size(x: float) -> str:
    """Bytes -> "1.23 GiB" / "45.6 MiB" / "7.8 KiB"."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(x) >= scale or unit == "KiB":
            return f"{x / scale:.{2 if unit in ('GiB', 'TiB') else 1}f} {unit}"


def format_report(r: Report, header: str = "") -> str:
    """One markdown table per program."""
    rows = [(f"{k}", size(v)) for k, v in r.groups.items() if k != "other" or v > 2**20]
    if r.oom:
        rows.append(("temporaries (XLA:TPU refused to compile)", size(r.temp)))
    else:
        rows += [("XLA argument size", size(r.xla_argument)), ("temporaries", size(r.temp)),
                 ("outputs", size(r.output)), ("aliased (donated) outputs", f"-{size(r.alias)}")]
    verdict = "fits" if r.fits else "**DOES NOT FIT**"
    rows.append(("**total / HBM**", f"**{size(r.total)} / {gib(r.chip.hbm_bytes)} GiB** {verdict}"))
    if r.oom:
        rows.append(("XLA:TPU", r.oom))
    else:
        mult = f" x {r.steps} steps" if r.steps > 1 else ""
        rows += [(f"FLOPs, XLA{mult}", f"{r.steps * r.xla_flops:.3e}"),
                 (f"FLOPs, splash kernels (analytic, {r.kernel_calls} calls){mult}",
                  f"{r.steps * r.kernel_flops:.3e}"),
                 ("FLOPs per chip", f"{r.flops:.3e}")]
        rows += [(k + mult, size(r.steps * v)) for k, v in r.collectives.items() if v]
        t = r.times
        rows += [("roofline: compute / HBM / ICI (ms)",
                  f"{t['compute'] * 1e3:.1f} / {t['hbm'] * 1e3:.1f} / {t['ici'] * 1e3:.1f}"),
                 ("**step time (roofline)**", f"**{r.step_time * 1e3:.1f} ms**"),
                 (f"MFU at {r.chip.peak_bf16 / 1e12:.0f} TFLOP/s bf16 (FLOPs as executed)", f"{100 * r.mfu:.0f}%")]
    w = max(len(a) for a, _ in rows)
    title = f"### {r.program}" + (f" ({header})" if header else "")
    lines = [title, "", f"| {'per chip'.ljust(w)} | value |", f"|{'-' * (w + 2)}|-------|"]
    lines += [f"| {a.ljust(w)} | {b} |" for a, b in rows]
    return "\n".join(lines)


# -- suggestions -------------------------------------------------------------------------------------
def _shard_more(state: int, mesh, num_slices: int) -> str:
    fsdp, data = int(mesh.shape["fsdp"]), int(mesh.shape["data"])
    if data > num_slices:
        return (f"the train state alone is {gib(state)} GiB per chip: shard it over more chips, "
                f"--config.mesh.fsdp={fsdp * data // num_slices} --config.mesh.data={num_slices}")
    return f"the train state alone is {gib(state)} GiB per chip: use a larger slice (more fsdp)"


def suggestion(r: Report, config, mesh, num_slices: int = 1) -> str:
    """One line: what to change so that ``r``'s program fits."""
    state = sum(r.groups.get(k, 0) for k in ("params", "opt_state", "ema", "grads"))
    if state > r.chip.hbm_bytes / 2:
        return _shard_more(state, mesh, num_slices)
    per_chip = int(config.data.batch_size) // max(int(mesh.shape["data"] * mesh.shape["fsdp"]), 1)
    if r.program.startswith(TRAIN_PREFIXES):
        policy = str(config.model.unet.remat_policy)
        order = list(REMAT_ORDER)
        nxt = order[order.index(policy) + 1] if policy in order and policy != order[-1] else ""
        smaller = (f"--config.data.batch_size={int(config.data.batch_size) // 2} "
                   f"(per-chip batch {per_chip} -> {per_chip // 2})") if per_chip > 1 else ""
        if nxt and smaller:
            return f"try --config.model.unet.remat_policy={nxt}, or a smaller per-chip batch: {smaller}"
        if nxt:
            return f"try --config.model.unet.remat_policy={nxt}"
        if smaller:
            return f"a smaller per-chip batch: {smaller}"
    return "use a larger slice or a larger --config.mesh.fsdp / --config.mesh.tensor"


def state_suggestion(state: dict[str, int], chip: Chip, mesh, num_slices: int = 1) -> str:
    """"" when the resident train state fits in HBM, else the one-line fix."""
    total = sum(state.values())
    return "" if total <= chip.hbm_bytes else _shard_more(total, mesh, num_slices)
