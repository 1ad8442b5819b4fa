"""TPU-ready, proven without a TPU: the `tiny` stage-2 train step (gradient program + shared
update) and the generation chunk, with splash attention, compiled ahead of time by XLA:TPU for a
real v5p 2x2x1 topology (libtpu's topology description; no TPU is needed) over ``fsdp=4``.

What is checked is what the *compiled* programs take and allocate, not what we asked for:
parameters, optimiser state and EMA arrive sharded (~1/4 per chip), XLA's own argument sizes
agree, no activation of the sharded grads program is as large as a replicated batch would make
it, and splash kernels are really in the programs. Plus the plan CLI's misuse and does-not-fit
exits, multi-slice, and the fused step (``optim.update_program=fused``).
"""
import logging
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

pytest.importorskip("libtpu", reason="libtpu is not installed: it is the `tpu` extra "
                                     "(pip install -e '.[tpu]'), needed to compile for TPU topologies")

from configs import stage2_audio  # noqa: E402
from starcaster_jax import tpu_plan as tp  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOPOLOGY = "v5p:2x2x1"
FSDP = 4
# Largest per-chip activation of the sharded tiny grads program (one sample of 1 + 4 frames per
# chip): splash's softmax statistics, f32[5 frames, 4 heads, 128 queries, 128 lanes] = 1.25 MiB.
# Replicating the batch of 4 would make that f32[20, 4, 128, 128] = 5 MiB on every chip.
MAX_ACTIVATION_BYTES = 2 * 2**20


def _tiny_config():
    c = stage2_audio.get_config("tiny")
    c.mesh.fsdp = FSDP
    c.data.batch_size = FSDP          # one sample per chip
    c.model.unet.attention_impl = "splash"
    tp.resolve_for_tpu(c)
    return c


def _env():
    # the test process holds libtpu already; a second process may load it too (compile only)
    return dict(os.environ, ALLOW_MULTIPLE_LIBTPU_LOAD="1", PYTHONPATH=ROOT)


@pytest.fixture(scope="module", autouse=True)
def _no_persistent_cache():
    """TPU executables compiled for a topology cannot be reloaded from the persistent cache (no
    TPU client here): do not write them there."""
    before = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    yield
    jax.config.update("jax_enable_compilation_cache", before)


@pytest.fixture(scope="module")
def plan():
    """name -> (program, compiled, optimised HLO, report) for grads:video, update, generate_chunk."""
    tp.quiet_libtpu(TOPOLOGY)
    # the frozen networks are abstract here: their "random init, tests only" warnings do not apply
    logging.getLogger("starcaster_jax.training.frozen").setLevel(logging.ERROR)
    config = _tiny_config()
    chip, devices = tp.topology_devices(TOPOLOGY)
    mesh = tp.tpu_mesh(config, devices)
    assert dict(mesh.shape) == {"data": 1, "fsdp": FSDP, "tensor": 1}
    out = {}
    for prog in tp.lower_programs(config, mesh, ("video", "update", "generate")):
        compiled, hlo = tp.compile_program(prog)
        out[prog.name] = (prog, compiled, hlo, tp.analyse(prog, compiled, hlo, chip))
    assert sorted(out) == ["generate_chunk", "grads:video", "update"]
    return out


def _ratio(tree) -> float:
    return tp.per_chip_bytes(tree) / tp.global_bytes(tree)


@pytest.mark.parametrize("name", ["grads:video", "update", "generate_chunk"])
def test_parameters_are_sharded_over_fsdp(plan, name, capsys):
    """Per chip, the compiled program takes ~1/4 of the parameters (tiny's widths all divide by
    4; the few replicated leaves are norm scales and other vectors under 4 % of the bytes), and
    in the update also ~1/4 of the Adam moments and of the EMA."""
    prog, compiled, _, _ = plan[name]
    groups = prog.groups(tp.compiled_args(prog, compiled))
    checked = ["params"] + (["opt_state", "ema", "grads"] if name == "update" else [])
    for group in checked:
        r = _ratio(groups[group])
        with capsys.disabled():
            print(f"\n{name}: {group} per chip / unsharded = {r:.3f}")
        assert 1 / FSDP <= r <= 1 / FSDP + 0.04, (name, group, r)


@pytest.mark.parametrize("name", ["grads:video", "update"])
def test_compiled_modules_take_the_shards(plan, name):
    """The ENTRY parameters of the compiled per-chip HLO are the shards above: the update takes
    exactly the state, loss and gradient shards (all used); the grads program takes them less
    the optimiser state, EMA and a few frozen leaves, which it does not read (JAX prunes them;
    they stay resident and the report counts them). XLA's argument size adds only TPU tile padding."""
    prog, compiled, hlo, _ = plan[name]
    args = tp.compiled_args(prog, compiled)
    shards = tp.per_chip_bytes(args)
    entry = tp.entry_argument_bytes(hlo)
    if name == "update":
        assert abs(entry - shards) <= 0.01 * shards, (entry, shards)
    else:
        unread = tp.per_chip_bytes((args[0].opt_state, args[0].ema))
        params = tp.per_chip_bytes(args[0].params)
        assert params < entry <= shards - unread, (entry, shards, unread, params)
    assert compiled.memory_analysis().argument_size_in_bytes >= entry


def test_no_replicated_activation_in_the_grads_program(plan):
    """Activations stay batch-sharded: no intermediate buffer of the per-chip grads program is
    as large as one holding the whole batch would be."""
    _, _, hlo, _ = plan["grads:video"]
    biggest = tp.largest_buffers(hlo, n=3)
    assert biggest and biggest[0][0] <= MAX_ACTIVATION_BYTES, biggest


def test_splash_kernels_are_compiled_in_and_counted(plan):
    """Spatial attention runs as Pallas splash kernels on TPU (forward in the sampler; forward,
    dq and dkv in the gradient), whose FLOPs the report adds analytically (XLA counts them ~0)."""
    for name in ("grads:video", "generate_chunk"):
        _, _, hlo, report = plan[name]
        assert report.kernel_calls > 0 and report.kernel_flops > 0, name
        assert "splash_mha_fwd" in hlo, name
    assert "splash_mha_dkv" in plan["grads:video"][2] and "splash_mha_dq" in plan["grads:video"][2]
    for _, _, _, report in plan.values():
        assert report.fits and 0 < report.total < report.chip.hbm_bytes
        assert report.step_time > 0


def test_cli_unknown_topology_exits_2():
    r = subprocess.run([sys.executable, "-m", "launch.train_compile", "--config=configs/stage2_audio.py:tiny",
                        "--topology=v4-8"], capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=120)
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: unknown topology 'v4-8'"), err
    for name in ("v5p-8", "v5p-64", "v6e-8", "v5e-16"):
        assert name in err


def test_cli_state_that_cannot_fit_exits_2_with_a_fix():
    """`paper` data-parallel on v5e-16 (mesh data=16, fsdp=1): params + Adam moments + EMA are
    4 x 5.2 GiB per chip on a 15.75 GiB chip. The plan says so before compiling anything, and
    names the mesh that shards it."""
    r = subprocess.run([sys.executable, "-m", "launch.train_compile", "--config=configs/stage2_audio.py:paper",
                        "--topology=v5e-16", "--config.mesh.data=16", "--config.mesh.fsdp=1"],
                       capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: the train state does not fit"), err
    assert "--config.mesh.fsdp=16 --config.mesh.data=1" in err
    assert "train state per chip" in r.stdout


@pytest.mark.slow
def test_cli_program_that_cannot_fit_exits_2_with_a_fix():
    """`micro` at a per-chip batch of 16,384 on v5e-16: XLA:TPU refuses the gradient program
    (its temporaries exceed HBM); the plan reports it and suggests remat or a smaller batch."""
    r = subprocess.run([sys.executable, "-m", "launch.train_compile", "--config=configs/stage2_audio.py:micro",
                        "--topology=v5e-16", "--config.data.batch_size=262144", "--programs=video"],
                       capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=600)
    assert r.returncode == 2, r.stderr[-2000:]
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: grads:video does not fit on v5e-16"), err
    assert "remat_policy=dots_saveable" in err and "--config.data.batch_size=131072" in err
    assert "DOES NOT FIT" in r.stdout


@pytest.mark.slow
def test_multislice_compiles():
    """Two v5p 2x2x1 slices, mesh.data = 2 slices over DCN, fsdp = 4 inside each: the update
    program compiles and its parameters are sharded over fsdp only (replicated across slices)."""
    tp.quiet_libtpu(TOPOLOGY)
    config = _tiny_config()
    config.data.batch_size = 2 * FSDP
    chip, devices = tp.topology_devices(TOPOLOGY, num_slices=2)
    assert len(devices) == 8 and len({d.slice_index for d in devices}) == 2
    mesh = tp.tpu_mesh(config, devices, num_slices=2)
    assert dict(mesh.shape) == {"data": 2, "fsdp": FSDP, "tensor": 1}
    slices = np.vectorize(lambda d: d.slice_index)(mesh.devices)
    assert (slices[0] == 0).all() and (slices[1] == 1).all()  # data axis = slices (DCN)
    (prog,) = tp.lower_programs(config, mesh, ("update",))
    compiled, hlo = tp.compile_program(prog)
    report = tp.analyse(prog, compiled, hlo, chip)
    assert report.fits
    r = _ratio(prog.groups(tp.compiled_args(prog, compiled))["params"])
    assert 1 / FSDP <= r <= 1 / FSDP + 0.04, r


@pytest.mark.slow
def test_fused_step_compiles_as_one_program():
    """``optim.update_program=fused``: one program per kind (``step:video``) and no update
    program of its own; it reads the whole train state in its shards (~1/4 per chip) and
    donates it (the new state is aliased onto the old)."""
    tp.quiet_libtpu(TOPOLOGY)
    config = _tiny_config()
    config.optim.update_program = "fused"
    chip, devices = tp.topology_devices(TOPOLOGY)
    mesh = tp.tpu_mesh(config, devices)
    progs = tp.lower_programs(config, mesh, ("video", "update"))
    assert [p.name for p in progs] == ["step:video"]
    (prog,) = progs
    compiled, hlo = tp.compile_program(prog)
    report = tp.analyse(prog, compiled, hlo, chip)
    assert report.fits and report.kernel_calls > 0 and report.step_time > 0
    assert "splash_mha_dkv" in hlo
    groups = prog.groups(tp.compiled_args(prog, compiled))
    for group in ("params", "opt_state", "ema"):
        r = _ratio(groups[group])
        assert 1 / FSDP <= r <= 1 / FSDP + 0.04, (group, r)
    state = sum(report.groups[k] for k in ("params", "opt_state", "ema"))
    assert report.alias >= 0.9 * state, (report.alias, state)
