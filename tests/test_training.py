"""The training system (issue 5) on the `micro` variant and the built-in `tiny` corpus.

Compiles are the cost here: every test that runs a step shares the same stage-1 micro config
(so the persistent XLA cache in conftest turns repeats into loads)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import common, stage1_motion, stage2_audio, stage3_views
from starcaster_jax.training import lora as lora_lib
from starcaster_jax.training import optim

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from data_pipelines.synthetic import build
    d = str(tmp_path_factory.mktemp("corpus"))
    assert build.main(["--out", d, "--preset", "tiny"]) == 0
    return d


def micro(stage=stage1_motion, arg="micro", root="", **over):
    c = stage.get_config(arg)
    c.data.root = root
    c.log.progress = False
    c.schedule.update(total_steps=over.pop("total_steps", 8), warmup_steps=2)
    c.ckpt.update(every_steps=over.pop("every_steps", 4), async_save=True)
    c.log.every_steps = over.pop("log_every", 1)
    c.optim.lr = over.pop("lr", 1e-3)
    c.mesh.update(data=1, fsdp=1, tensor=1)
    for k, v in over.items():
        c[k] = v
    return c


def leaves_equal(a, b) -> bool:
    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# ---------------------------------------------------------------------------------------------
# Optimiser pieces (no model)
# ---------------------------------------------------------------------------------------------
def test_param_groups_freeze_and_lr_multipliers():
    params = {"model": {"unet": {"motion_modules": {"k": jnp.ones(3)}, "conv": {"k": jnp.ones(3)}},
                        "id_proj": {"k": jnp.ones(3)}}}
    c = stage1_motion.get_config("micro")
    c.optim.update(lr=0.1, weight_decay=0.0, grad_clip=0.0,
                   param_groups=((r"motion_modules", 1.0), (r"^model\.unet\.", 0.1), (r"id_proj", "freeze")))
    c.schedule.update(total_steps=10, warmup_steps=0, decay="constant")
    tx, _ = optim.make_optimizer(c, params)
    st = tx.init(params)
    g = jax.tree.map(jnp.ones_like, params)
    up, _ = tx.update(g, st, params)
    # Adam's first step moves every trained leaf by ~lr * multiplier
    np.testing.assert_allclose(up["model"]["unet"]["motion_modules"]["k"], -0.1, rtol=1e-4)
    np.testing.assert_allclose(up["model"]["unet"]["conv"]["k"], -0.01, rtol=1e-4)
    np.testing.assert_array_equal(up["model"]["id_proj"]["k"], 0.0)
    with pytest.raises(ValueError, match="freezes every parameter"):
        c.optim.param_groups = ((r".", "freeze"),)
        optim.make_optimizer(c, params)
    with pytest.raises(ValueError, match="bad regex"):
        optim.param_labels(params, ((r"(", 1.0),))


def test_lora_starts_at_the_base_model_and_merges_exactly():
    rng = np.random.default_rng(0)
    base = {"blk": {"motion_modules": {"to_q": {"kernel": jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)},
                                       "norm": {"scale": jnp.ones(5)}}}}
    lo = lora_lib.init_lora(base, r"motion_modules\..*to_q", 2, jax.random.key(0))
    assert leaves_equal(lora_lib.merge(base, lo, 1.0), base)           # B = 0 at init
    lo["blk"]["motion_modules"]["to_q"]["kernel"]["b"] = jnp.ones((2, 5))
    merged = lora_lib.merge(base, lo, 0.5)
    a = lo["blk"]["motion_modules"]["to_q"]["kernel"]["a"]
    np.testing.assert_allclose(merged["blk"]["motion_modules"]["to_q"]["kernel"],
                               base["blk"]["motion_modules"]["to_q"]["kernel"] + 0.5 * a @ jnp.ones((2, 5)),
                               rtol=1e-6)
    with pytest.raises(ValueError, match="matches no 2-D kernel"):
        lora_lib.init_lora(base, r"nothing", 2, jax.random.key(0))


def test_ablations_change_what_they_say():
    for name in common.ABLATIONS:
        for stage in (stage1_motion, stage2_audio, stage3_views):
            c = stage.get_config(f"micro,ablation={name}")
            assert c.ablation == name
    assert stage2_audio.get_config("micro,ablation=no_lip_loss").train.lip_weight == 0
    assert not stage2_audio.get_config("micro,ablation=no_self_forcing").self_forcing.enabled
    assert stage2_audio.get_config("micro,ablation=strict_reference").train.strict_reference
    assert not stage2_audio.get_config("micro,ablation=no_view_embedding").train.use_view
    assert not stage3_views.get_config("micro,ablation=full_finetune_stage3").lora.enabled
    assert stage2_audio.get_config("micro,ablation=no_audio_cfg_dropout").train.p_drop_audio == 0
    with pytest.raises(ValueError, match="ablation 'nope'"):
        stage2_audio.get_config("micro,ablation=nope")


@pytest.mark.slow  # several full-step compiles: `make test-slow`
@pytest.mark.parametrize("name", sorted(common.ABLATIONS))
def test_every_ablation_builds_its_steps(name):
    """Each ablation builds a Trainer and traces (lowers) every step it can dispatch to."""
    from starcaster_jax.sharding import make_mesh
    from starcaster_jax.training.step import Trainer
    stage = stage3_views if name == "full_finetune_stage3" else stage2_audio
    c = micro(stage, f"micro,ablation={name}")
    tr = Trainer(c, make_mesh((1, 1, 1), devices=jax.devices()[:1]))
    kinds = ["video"] + (["video_sf"] if tr.sf.enabled else []) + (
        ["multiview"] if "multiview" in c.data.mixture else [])
    for kind in kinds:
        batch = fake_batch(tr, kind)
        with jax.set_mesh(tr.mesh):
            tr.compiled(kind, batch).lower(tr.abstract_state(), tr.frozen_states, batch)
    if name == "full_finetune_stage3":         # stage 3 trains LoRA adapters unless ablated
        assert tr.lora is None and stage3_views.get_config("micro").lora.enabled
    assert tr.lc.strict_reference == (name == "strict_reference")
    assert tr.lc.use_view == (name != "no_view_embedding")


def fake_batch(tr, kind):
    c = tr.config
    b, r, w = int(c.data.batch_size), int(c.data.resolution), int(c.model.audio.window)
    t = tr.window_frames() if kind != "multiview" else int(c.data.num_views)
    rng = np.random.default_rng(0)
    batch = dict(stream=np.full(b, 1 if kind == "multiview" else 0, np.int32),
                 frames=rng.uniform(-1, 1, (b, t, r, r, 3)).astype(np.float32),
                 audio=rng.normal(0, 0.1, (b, (t + 2 * w) * 640)).astype(np.float32),
                 pose=np.tile(np.array([0, 0, 0, 0, 0, 1], np.float32), (b, t, 1)),
                 pose_valid=np.ones(b, bool),
                 mouth_box=np.tile(np.array([r * .3, r * .6, r * .7, r * .8], np.float32), (b, t, 1)),
                 identity=rng.normal(size=(b, 48)).astype(np.float32),
                 id_vector=rng.normal(size=(b, 48)).astype(np.float32))
    return tr.global_batch(batch)


# ---------------------------------------------------------------------------------------------
# Self-forcing: no gradient reaches the rollout
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow  # several full-step compiles: `make test-slow`
@pytest.mark.parametrize("mode", ["context_stopgrad", "last_step"])
def test_self_forcing_gradient_does_not_leak_into_the_rollout(mode):
    from flax import nnx
    from starcaster_jax.sharding import make_mesh
    from starcaster_jax.training import losses as L
    from starcaster_jax.training import self_forcing as SF
    from starcaster_jax.training.step import Trainer
    c = micro(stage2_audio)
    c.self_forcing.mode = mode
    c.train.lip_weight = 0.0
    tr = Trainer(c, make_mesh((1, 1, 1), devices=jax.devices()[:1]))
    state = tr.init_state()
    batch = fake_batch(tr, "video")
    rng = jax.random.key(3)
    nets = None

    def loss_with(params, ctx_override):
        model = tr.model_from(params)
        nets = __import__("starcaster_jax.training.frozen", fromlist=["x"]).merge_frozen(
            tr.frozen_graphdefs, tr.frozen_states)
        if ctx_override is None:
            return SF.self_forcing_loss(model, nets, batch, rng, tr.lc, tr.sf)[0]
        orig = SF.rollout
        SF.rollout = lambda *a, **k: ctx_override
        try:
            return SF.self_forcing_loss(model, nets, batch, rng, tr.lc, tr.sf)[0]
        finally:
            SF.rollout = orig

    # The rollout's context, computed once and then used as a *constant*.
    def ctx_of(params):
        model = tr.model_from(params)
        from starcaster_jax.training.frozen import merge_frozen
        nets = merge_frozen(tr.frozen_graphdefs, tr.frozen_states)
        k_lat, k_roll = jax.random.split(rng, 5)[:2]
        _, x0, cond = L.video_conditions(nets, batch, k_lat, tr.lc, tr.window_frames())
        return SF.rollout(model, x0, cond, k_roll, tr.lc, tr.sf)

    ctx = jax.jit(ctx_of)(state.params)
    assert float(jnp.abs(ctx).mean()) > 0
    g_sf = jax.jit(jax.grad(lambda p: loss_with(p, None)))(state.params)
    g_const = jax.jit(jax.grad(lambda p: loss_with(p, ctx)))(state.params)
    for a, b in zip(jax.tree.leaves(g_sf), jax.tree.leaves(g_const)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    assert sum(float(jnp.abs(g).sum()) for g in jax.tree.leaves(g_sf)) > 0
    del nets, nnx


# ---------------------------------------------------------------------------------------------
# The loop on the built-in corpus
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow  # 60 training steps + two eval compiles (~5 min on 2 shared cores): `make test-slow`
def test_loss_falls_on_the_builtin_corpus(corpus, tmp_path):
    """Train 60 steps on the corpus; the loss of a fixed batch under fixed noise (8 draws of
    noise/t/dropout) must fall by a margin measured at ~40% (asserted: 20%)."""
    from data_pipelines.pipeline import make_train_iterator
    from starcaster_jax.training.checkpoint import restore_params
    from starcaster_jax.training.loop import data_config, train
    from starcaster_jax.sharding import make_mesh
    from starcaster_jax.training.step import Trainer
    c = micro(root=corpus, total_steps=60, every_steps=60, log_every=10, lr=2e-3)
    c.train.p_drop_view = 0.0
    s = train(c, str(tmp_path / "wd"))
    assert s["step"] == 60 and s["skipped"] == 0
    tr = Trainer(c, make_mesh((1, 1, 1), devices=jax.devices()[:1]))
    cc = micro(root=corpus)
    cc.seed = 123                                   # another draw of windows than training's
    batch = tr.global_batch(next(make_train_iterator(data_config(cc, tr))))
    init = {"model": tr.mdef.init_params()}
    trained = {"model": restore_params(str(tmp_path / "wd"), use_ema=False)[0]}
    before = tr.eval_loss(init, batch, seeds=range(8))
    after = tr.eval_loss(trained, batch, seeds=range(8))
    print(f"micro stage-1 fixed-batch loss -> {before:.4f} -> {after:.4f} after 60 steps")
    assert after < 0.8 * before, (before, after)


def test_nan_batch_update_is_skipped_and_counted(corpus):
    from data_pipelines.pipeline import make_train_iterator
    from starcaster_jax.sharding import make_mesh
    from starcaster_jax.training.loop import data_config
    from starcaster_jax.training.step import Trainer
    c = micro(root=corpus)
    tr = Trainer(c, make_mesh((1, 1, 1), devices=jax.devices()[:1]))
    batch = next(make_train_iterator(data_config(c, tr)))
    state = tr.init_state()
    before = jax.device_get(state.params)
    bad = dict(batch, frames=np.where(np.arange(batch["frames"].shape[1])[None, :, None, None, None] == 2,
                                      np.nan, batch["frames"]).astype(np.float32))
    state, m = tr.step(state, tr.global_batch(bad), "video")
    assert float(m["update_skipped"]) == 1.0 and int(state.skipped) == 1 and int(state.step) == 1
    assert leaves_equal(jax.device_get(state.params), before)
    state, m = tr.step(state, tr.global_batch(batch), "video")
    assert float(m["update_skipped"]) == 0.0 and int(state.skipped) == 1
    assert not leaves_equal(jax.device_get(state.params), before)


def test_separate_update_program_equals_the_fused_step():
    """optim.update_program: the two-program step (gradients, then the update program every
    stream shares) takes the same two steps as one fused program."""
    from starcaster_jax.sharding import make_mesh
    from starcaster_jax.training.step import Trainer, TwoProgramStep
    out = {}
    for mode in ("separate", "fused"):
        c = micro()
        c.optim.update_program = mode
        tr = Trainer(c, make_mesh((1, 1, 1), devices=jax.devices()[:1]))
        batch = fake_batch(tr, "video")
        steps = {k: tr.compiled(k, batch) for k in ("video", "multiview")}
        assert isinstance(steps["video"], TwoProgramStep) == (mode == "separate")
        if mode == "separate":
            assert steps["video"].update is steps["multiview"].update
        state, metrics = tr.init_state(), []
        for _ in range(2):
            state, m = tr.step(state, batch, "video")
            metrics.append(jax.device_get(m))
        out[mode] = (jax.device_get(state), metrics)
    (s_sep, m_sep), (s_fus, m_fus) = out["separate"], out["fused"]
    assert int(s_sep.step) == int(s_fus.step) == 2
    for a, b in zip(jax.tree.leaves((s_sep.params, s_sep.opt_state, s_sep.ema)),
                    jax.tree.leaves((s_fus.params, s_fus.opt_state, s_fus.ema))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
    for a, b in zip(m_sep, m_fus):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-7, err_msg=k)
    assert min(float(m["grad_norm"]) for m in m_sep) > 0 and int(s_sep.skipped) == 0


def _train_cmd(workdir, root, *extra):
    return [sys.executable, "-m", "launch.train", "--config=configs/stage1_motion.py:micro",
            f"--workdir={workdir}", f"--config.data.root={root}", "--config.log.progress=False",
            "--config.schedule.total_steps=6", "--config.ckpt.every_steps=3",
            "--config.log.every_steps=1", "--config.optim.lr=1e-3", *extra]


def _env(devices=1):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"
    return env


def test_kill9_after_checkpoint_resumes_bit_exact(corpus, tmp_path):
    """2k steps straight == k steps, kill -9, resume, k more: identical params and data order."""
    from starcaster_jax.training.checkpoint import restore_params
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(_train_cmd(straight, corpus), check=True, cwd=REPO, env=_env(),
                   capture_output=True)
    # Slow the victim's steps down so the kill lands between checkpoints 3 and 6.
    p = subprocess.Popen(_train_cmd(killed, corpus, "--config.ckpt.async_save=False"), cwd=REPO,
                         env=dict(_env(), STARCASTER_STEP_DELAY_S="1.0"),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck3 = killed / "checkpoints" / "3"
    t0 = time.time()
    while not ck3.exists() and p.poll() is None and time.time() - t0 < 600:
        time.sleep(0.05)
    assert ck3.exists(), "the victim never wrote checkpoint 3"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not (killed / "checkpoints" / "6").exists()
    subprocess.run(_train_cmd(killed, corpus), check=True, cwd=REPO, env=_env(), capture_output=True)
    for ema in (False, True):
        a, _, sa = restore_params(str(straight), use_ema=ema)
        b, _, sb = restore_params(str(killed), use_ema=ema)
        assert sa == sb == 6
        assert leaves_equal(a, b), f"params differ after resume (ema={ema})"
    def grain_state(d):
        return sorted((f.name, f.read_bytes()) for f in (d / "checkpoints" / "6" / "data").glob("*.json"))
    assert grain_state(straight) and grain_state(straight) == grain_state(killed), \
        "data iterator position differs"


@pytest.mark.slow  # several full-step compiles: `make test-slow`
def test_stages_chain_and_lora_trains_only_adapters(corpus, tmp_path):
    from starcaster_jax.training.checkpoint import restore_params
    from starcaster_jax.training.loop import train
    s1, s2, s3 = (str(tmp_path / n) for n in ("s1", "s2", "s3"))
    train(micro(root=corpus, total_steps=2, every_steps=2), s1)
    c2 = micro(stage2_audio, root=corpus, total_steps=2, every_steps=2, init_from=s1)
    c2.self_forcing.enabled = False
    train(c2, s2)
    p1, _, _ = restore_params(s1, use_ema=False)
    c3 = micro(stage3_views, root=corpus, total_steps=2, every_steps=2, init_from=s2)
    c3.self_forcing.enabled = False
    out = train(c3, s3)
    assert {h.split("/")[0] for h in out["history"][-1] if "/loss" in h} <= {"video", "multiview"}
    p2, _, _ = restore_params(s2, use_ema=False)
    assert not leaves_equal(p1, p2)                      # stage 2 trained on from stage 1
    p3, cfg3, _ = restore_params(s3, use_ema=False)      # LoRA merged in
    from starcaster_jax.training.optim import tree_paths
    flat2 = dict(zip(tree_paths(p2), jax.tree.leaves(p2)))
    flat3 = dict(zip(tree_paths(p3), jax.tree.leaves(p3)))
    changed = [k for k in flat2 if not np.array_equal(flat2[k], flat3[k])]
    assert changed, "stage 3 changed nothing"
    import re
    allowed = re.compile(cfg3.lora.targets + "|" + cfg3.lora.also_train)
    assert all(allowed.search(k) for k in changed), [k for k in changed if not allowed.search(k)][:3]


@pytest.mark.slow  # several full-step compiles: `make test-slow`
def test_sharded_step_equals_unsharded(corpus):
    from data_pipelines.pipeline import make_train_iterator
    from starcaster_jax.sharding import make_mesh
    from starcaster_jax.training.loop import data_config
    from starcaster_jax.training.step import Trainer
    c = micro(root=corpus)
    c.data.batch_size = 8
    results = []
    for mesh in (make_mesh((1, 1, 1), devices=jax.devices()[:1]), make_mesh((2, 4, 1))):
        tr = Trainer(c, mesh)
        it = make_train_iterator(data_config(c, tr))
        state = tr.init_state()
        for _ in range(2):
            state, m = tr.step(state, tr.global_batch(next(it)), "video")
        results.append((float(m["loss"]), jax.device_get(state.params)))
    (l1, p1), (l8, p8) = results
    print(f"sharded vs unsharded loss rel err {abs(l1 - l8) / abs(l1):.2e}")
    np.testing.assert_allclose(l1, l8, rtol=1e-5)
    # Adam divides by sqrt(v): where a gradient is ~0, reduction-order noise becomes a visible
    # fraction of one update (lr = 1e-3), so compare params at a small fraction of lr.
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
        np.testing.assert_allclose(a, b, rtol=0, atol=5e-5)
