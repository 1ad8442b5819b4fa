"""The training system (issue 5) on the `micro` variant and the built-in `tiny` corpus.

Compiles are the cost here: every test that runs a step shares the same stage-1 micro config
(so the persistent XLA cache in conftest turns repeats into loads)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import common, stage1_motion, stage2_audio, stage3_views
from data_pipelines.pipeline import make_train_iterator
from data_pipelines.synthetic import build
from starcaster_jax import inference as G
from starcaster_jax.inference import export as E
from starcaster_jax.inference import serve as S
from starcaster_jax.models.rngs import InitRngs
from starcaster_jax.models.starcaster import STARCaster
from starcaster_jax.sharding import make_mesh
from starcaster_jax.training import lora as lora_lib
from starcaster_jax.training import losses as L
from starcaster_jax.training import optim
from starcaster_jax.training.checkpoint import Checkpointer, load_for_inference, restore_params
from starcaster_jax.training.frozen import build_frozen, merge_frozen
from starcaster_jax.training.loop import data_config, train
from starcaster_jax.training.optim import tree_paths
from starcaster_jax.training.self_forcing import SelfForcingConfig
from starcaster_jax.training.step import Trainer, TwoProgramStep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
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


class _Recorder:
    """Stand-in denoiser for the ablation test: records what the loss hands it and predicts a
    constant plus the (undropped) view, so the loss depends on the pose exactly when the view
    reaches the model."""

    def __init__(self):
        self.seen = []

    def __call__(self, x, t, **kw):
        self.seen.append(kw)
        pred = jnp.zeros_like(x) + 0.1
        if kw.get("view") is not None:
            gate = 1.0 - jnp.asarray(kw["drop_view"], jnp.float32)                     # [B]
            pred = pred + (gate[:, None] * kw["view"].mean(-1))[:, :, None, None, None]
        return pred


def _ablation_batch(c, b, seed=0):
    t = int(c.data.num_frames) + int(c.data.context_frames)
    r, w = int(c.data.resolution), int(c.model.audio.window)
    rng = np.random.default_rng(seed)
    pose = np.zeros((b, t, 6), np.float32)
    pose[..., 0] = rng.uniform(-0.5, 0.5, (b, t))
    pose[..., 5] = 1.0
    return dict(stream=np.zeros(b, np.int32), frames=rng.uniform(-1, 1, (b, t, r, r, 3)).astype(np.float32),
                audio=rng.normal(0, 0.1, (b, (t + 2 * w) * 640)).astype(np.float32), pose=pose,
                pose_valid=np.ones(b, bool),
                mouth_box=np.tile(np.array([r * .3, r * .6, r * .7, r * .8], np.float32), (b, t, 1)),
                identity=rng.normal(size=(b, 48)).astype(np.float32),
                id_vector=rng.normal(size=(b, 48)).astype(np.float32))


@pytest.mark.slow  # eager losses on the real frozen micro nets (~70 s on 2 shared cores): `make test-slow`
def test_ablations_change_what_the_step_does():
    """Each ablation's effect on the video step's loss and on what it feeds the model (a
    recording stand-in denoiser, the real frozen networks at ``micro``), and on the step
    dispatch, against the full method; not the config flags read back."""
    b, draws = 16, 3
    base = stage2_audio.get_config("micro")
    nets = build_frozen(base)         # ablations change no frozen network
    batch = {k: jnp.asarray(v) for k, v in _ablation_batch(base, b).items()}
    turned = dict(batch, pose=batch["pose"].at[..., 0].multiply(-1.0).at[..., 1].add(0.3))
    k = int(base.data.context_frames)
    out = {}
    for name in ("none", "no_lip_loss", "strict_reference", "no_view_embedding", "no_audio_cfg_dropout"):
        c = stage2_audio.get_config(f"micro,ablation={name}")
        if name not in ("none", "no_lip_loss"):
            c.train.lip_weight = 0.0          # the lip path is what those two compare; skip its cost
        lc = L.LossConfig.from_config(c)
        rec = _Recorder()
        runs = [L.video_loss(rec, nets, batch, jax.random.key(s), lc) for s in range(draws)]
        turned_loss = (float(L.video_loss(_Recorder(), nets, turned, jax.random.key(0), lc)[0])
                       if name in ("none", "no_view_embedding") else None)
        cm = np.stack([np.asarray(kw["context_mask"]) for kw in rec.seen])               # [draws, B, T]
        out[name] = dict(
            metrics=[{m: float(v) for m, v in r[1].items()} for r in runs], loss=[float(r[0]) for r in runs],
            turned=turned_loss, context_on=cm[:, :, :k].all(-1), context_off_rest=~cm[:, :, k:].any(),
            drop_id=np.stack([np.asarray(kw["drop_id"]) for kw in rec.seen]),
            drop_audio=np.stack([np.asarray(kw["drop_audio"]) for kw in rec.seen]),
            views=[kw["view"] for kw in rec.seen])
    full = out["none"]
    # the full method: lip loss on, context and identity dropped at times, the pose given
    for m, loss in zip(full["metrics"], full["loss"]):
        assert "lip" in m and loss == pytest.approx(m["diffusion"] + base.train.lip_weight * m["lip"], rel=1e-5)
    assert full["context_on"].any() and not full["context_on"].all() and full["context_off_rest"]
    assert full["drop_id"].any() and not full["drop_id"].all()
    assert full["drop_audio"].any()
    # the pose reaches the model: per sample, the window's own poses, or (for samples whose
    # context is the reference layout of the first animate chunk) that layout's views
    ref_view = np.asarray(L.reference_layout(None, None, None, None, batch["pose"],
                                             L.LossConfig.from_config(base))[4])
    n_ref = 0
    for v, on in zip(full["views"], full["context_on"]):
        for i in range(b):
            if not np.array_equal(np.asarray(v[i]), np.asarray(batch["pose"][i])):
                assert on[i], i
                np.testing.assert_allclose(np.asarray(v[i]), ref_view[i], rtol=0, atol=0)
                n_ref += 1
    assert n_ref > 0                                   # p_reference_context > 0 is exercised
    assert full["turned"] != pytest.approx(full["loss"][0], rel=1e-6)             # the pose matters
    # no_lip_loss: no lip term at all, the loss is the diffusion loss
    for m, loss in zip(out["no_lip_loss"]["metrics"], out["no_lip_loss"]["loss"]):
        assert "lip" not in m and loss == m["diffusion"]
    # strict_reference: identity always dropped, the reference context always on
    assert out["strict_reference"]["drop_id"].all() and out["strict_reference"]["context_on"].all()
    # no_view_embedding: the model never sees the pose, and the loss ignores it
    assert all(v is None for v in out["no_view_embedding"]["views"])
    assert out["no_view_embedding"]["turned"] == pytest.approx(out["no_view_embedding"]["loss"][0], rel=1e-6)
    # no_audio_cfg_dropout: audio never dropped (the full method drops it above)
    assert not out["no_audio_cfg_dropout"]["drop_audio"].any()
    # no_self_forcing: the dispatch never picks the self-forcing step (the full method does)
    picks = {}
    for name in ("none", "no_self_forcing"):
        c = stage2_audio.get_config(f"micro,ablation={name}")
        fake = SimpleNamespace(config=c, sf=SelfForcingConfig.from_config(c))
        picks[name] = {Trainer.kind_for(fake, {"stream": np.zeros(1, np.int32)}, s) for s in range(64)}
    assert picks["none"] == {"video", "video_sf"} and picks["no_self_forcing"] == {"video"}
    # full_finetune_stage3 (no LoRA, every weight trained) is checked on a built Trainer in
    # test_every_ablation_builds_its_steps.
    with pytest.raises(ValueError, match="ablation 'nope'"):
        stage2_audio.get_config("micro,ablation=nope")


@pytest.mark.slow  # several full-step compiles: `make test-slow`
@pytest.mark.parametrize("name", sorted(common.ABLATIONS))
def test_every_ablation_builds_its_steps(name):
    """Each ablation builds a Trainer and traces (lowers) every step it can dispatch to."""
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


def host_batch(tr, kind):
    """One process's batch of ``kind``'s stream, as the pipeline yields it (numpy)."""
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
    return batch


def fake_batch(tr, kind):
    return tr.global_batch(host_batch(tr, kind))


class _FakeProgram:
    """Stands in for a compiled step: records its kind, costs 10 FLOPs, counts steps."""

    def __init__(self, kind):
        self.kind = kind

    def cost_analysis(self):
        return {"flops": 10.0}

    def __call__(self, state, frozen_states, batch):
        assert all(isinstance(v, jax.Array) for v in batch.values())   # the global batch
        return state + 1, {"ran": self.kind}


def test_trainer_step_owns_the_step_kinds(monkeypatch):
    """``Trainer.step(state, host_batch, step)`` is all the loop calls: it picks the kind (the
    stream, and self-forcing's deterministic draw for video), makes the global batch, compiles
    video and video_sf together on the first video batch (once), and says which kind ran."""
    c = micro(stage2_audio)                        # self-forcing on: video batches draw video_sf too
    tr = Trainer(c, make_mesh((1, 1, 1), devices=jax.devices()[:1]), frozen_nets={})
    compiles = []

    def precompile(batches):
        compiles.append(sorted(batches))
        for k in batches:
            tr._compiled_aot[k] = _FakeProgram(k)

    monkeypatch.setattr(tr, "precompile", precompile)
    video, multiview = host_batch(tr, "video"), host_batch(tr, "multiview")
    state, kinds = 0, []
    for s in range(40):
        state, m, kind = tr.step(state, multiview if s == 20 else video, s)
        assert m["ran"] == kind
        kinds.append(kind)
    assert state == 40
    assert compiles == [["video", "video_sf"], ["multiview"]]
    assert kinds[20] == "multiview" and {"video", "video_sf"} == set(kinds) - {"multiview"}
    assert kinds == [tr.kind_for(multiview if s == 20 else video, s) for s in range(40)]   # replayable
    assert tr.flops == {"video": 10.0, "video_sf": 10.0, "multiview": 10.0}


# ---------------------------------------------------------------------------------------------
# The loop on the built-in corpus
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow  # 60 training steps + two eval compiles (~5 min on 2 shared cores): `make test-slow`
def test_loss_falls_on_the_builtin_corpus(corpus, tmp_path):
    """Train 60 steps on the corpus; the loss of a fixed batch under fixed noise (8 draws of
    noise/t/dropout) must fall by a margin measured at ~40% (asserted: 20%)."""
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
    c = micro(root=corpus)
    tr = Trainer(c, make_mesh((1, 1, 1), devices=jax.devices()[:1]))
    batch = next(make_train_iterator(data_config(c, tr)))
    state = tr.init_state()
    before = jax.device_get(state.params)
    bad = dict(batch, frames=np.where(np.arange(batch["frames"].shape[1])[None, :, None, None, None] == 2,
                                      np.nan, batch["frames"]).astype(np.float32))
    state, m, kind = tr.step(state, bad, 0)
    assert kind == "video"
    assert float(m["update_skipped"]) == 1.0 and int(state.skipped) == 1 and int(state.step) == 1
    assert leaves_equal(jax.device_get(state.params), before)
    state, m, _ = tr.step(state, batch, 1)
    assert float(m["update_skipped"]) == 0.0 and int(state.skipped) == 1
    assert not leaves_equal(jax.device_get(state.params), before)


def test_separate_update_program_equals_the_fused_step():
    """optim.update_program: the two-program step (gradients, then the update program every
    stream shares) takes the same two steps as one fused program."""
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
            state, m = tr.step_kind(state, batch, "video")
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


# `python -m launch.train` with every train step slowed by 1 s (Trainer.step wrapped in this
# process only), so a kill -9 lands between two checkpoints; the production loop has no hook.
_SLOW_TRAIN = """
import runpy, time
from starcaster_jax.training import step as step_lib
_step = step_lib.Trainer.step
def slow_step(self, *args, **kwargs):
    out = _step(self, *args, **kwargs)
    time.sleep(1.0)
    return out
step_lib.Trainer.step = slow_step
runpy.run_module("launch.train", run_name="__main__", alter_sys=True)
"""


def test_kill9_after_checkpoint_resumes_bit_exact(corpus, tmp_path):
    """2k steps straight == k steps, kill -9, resume, k more: identical params and data order."""
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(_train_cmd(straight, corpus), check=True, cwd=REPO, env=_env(),
                   capture_output=True)
    # The victim's steps are slowed down so the kill lands between checkpoints 3 and 6.
    victim = _train_cmd(killed, corpus, "--config.ckpt.async_save=False")
    assert victim[1:3] == ["-m", "launch.train"]
    p = subprocess.Popen([sys.executable, "-c", _SLOW_TRAIN, *victim[3:]], cwd=REPO, env=_env(),
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
    flat2 = dict(zip(tree_paths(p2), jax.tree.leaves(p2)))
    flat3 = dict(zip(tree_paths(p3), jax.tree.leaves(p3)))
    changed = [k for k in flat2 if not np.array_equal(flat2[k], flat3[k])]
    assert changed, "stage 3 changed nothing"
    # the adapters themselves reached the checkpoint: a LoRA target changed (the view layers of
    # also_train changing alone would pass the "allowed" check below with the adapters dropped)
    assert any(re.search(cfg3.lora.targets, k) for k in changed), changed[:5]
    allowed = re.compile(cfg3.lora.targets + "|" + cfg3.lora.also_train)
    assert all(allowed.search(k) for k in changed), [k for k in changed if not allowed.search(k)][:3]


@pytest.mark.slow  # several full-step compiles: `make test-slow`
def test_sharded_step_equals_unsharded(corpus):
    c = micro(root=corpus)
    c.data.batch_size = 8
    results = []
    for mesh in (make_mesh((1, 1, 1), devices=jax.devices()[:1]), make_mesh((2, 4, 1))):
        tr = Trainer(c, mesh)
        it = make_train_iterator(data_config(c, tr))
        state = tr.init_state()
        for s in range(2):
            state, m, kind = tr.step(state, next(it), s)
            assert kind == "video"
        results.append((float(m["loss"]), jax.device_get(state.params)))
    (l1, p1), (l8, p8) = results
    print(f"sharded vs unsharded loss rel err {abs(l1 - l8) / abs(l1):.2e}")
    np.testing.assert_allclose(l1, l8, rtol=1e-5)
    # Adam divides by sqrt(v): where a gradient is ~0, reduction-order noise becomes a visible
    # fraction of one update (lr = 1e-3), so compare params at a small fraction of lr.
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
        np.testing.assert_allclose(a, b, rtol=0, atol=5e-5)


@pytest.mark.slow  # a stage-3 Trainer, two steps and an export compile (~1-2 min): `make test-slow`
def test_lora_round_trip_restore_init_from_and_export_equal_the_trainers_model(tmp_path):
    """Stage 3 trains LoRA adapters; the restored model (``load_for_inference``), the next
    stage's ``init_from`` params (``restore_params``) and the exported/served chunk all equal the
    trainer's merged model — and visibly differ from the base without the adapters, so a restore
    or export that drops them fails here. The model starts from random-filled params (every path
    live: the zero-initialised ``proj_out`` would hide the temporal kernels the adapters target)."""
    c = micro(stage3_views, lr=1e-2)
    c.self_forcing.enabled = False
    c.train.lip_weight = 0.0
    c.diffusion.sample_steps = 2
    c.ckpt.async_save = False
    tr = Trainer(c, make_mesh((1, 1, 1), devices=jax.devices()[:1]))
    assert tr.lora is not None
    live = nnx.to_pure_dict(nnx.state(G.random_module(lambda: STARCaster(c.model, rngs=InitRngs(0)), 3), nnx.Param))
    state = tr.init_state(jax.device_put(live, tr.mdef.param_shardings))
    for s, want_kind in enumerate(("multiview", "video")):
        state, m, kind = tr.step(state, host_batch(tr, want_kind), s)
        assert kind == want_kind and float(m["update_skipped"]) == 0.0
    params = jax.device_get(state.params)
    merged = lora_lib.merge(params["model"], params["lora"], tr.lora_scale)
    flat = lambda t: dict(zip(tree_paths(t), jax.tree.leaves(t)))  # noqa: E731
    f_live, f_base, f_merged = flat(live), flat(params["model"]), flat(merged)
    targets = lora_lib.target_paths(params["model"], tr.lora["targets"])
    assert targets
    moved = [k for k in targets if not np.allclose(f_merged[k], f_live[k], rtol=0, atol=1e-6)]
    assert moved, "no adapter target changed"
    for k in targets:                                   # the base of a target is frozen: only A @ B moved it
        np.testing.assert_array_equal(f_base[k], f_live[k])

    ck = Checkpointer(str(tmp_path / "s3"), c.ckpt, enable_data=False)
    ck.save(int(state.step), state, c, force=True)
    ck.close()
    restored, _, _ = restore_params(str(tmp_path / "s3"), use_ema=False)          # what init_from reads
    f_restored = flat(restored)
    assert f_restored.keys() == f_merged.keys()
    for k in f_merged:
        np.testing.assert_allclose(f_restored[k], f_merged[k], rtol=0, atol=0, err_msg=k)
    model, _ = load_for_inference(str(tmp_path / "s3"), use_ema=False)

    b, f, r = 1, int(c.data.num_frames) + int(c.data.context_frames), int(c.data.resolution)
    rng = np.random.default_rng(1)
    nets = merge_frozen(tr.frozen_graphdefs, tr.frozen_states)
    h = r // nets["vae"].config.downsample_factor
    x = jnp.asarray(rng.normal(size=(b, f, h, h, nets["vae"].config.latent_channels)), jnp.float32)
    t = jnp.full((b, f), 300.0)
    view = jnp.asarray(np.tile([0.2, -0.1, 0, 0, 0, 1.0], (b, f, 1)), jnp.float32)
    fwd = nnx.jit(lambda m: m(x, t, id_emb=jnp.ones((b, 512)) / np.sqrt(512), view=view))
    want = np.asarray(fwd(tr.model_from(state.params)))
    np.testing.assert_allclose(np.asarray(fwd(model)), want, rtol=1e-5, atol=1e-6)
    no_adapters = np.asarray(fwd(tr.mdef.module(params["model"])))
    gap = np.abs(no_adapters - want).max()
    assert gap > 1e3 * 1e-6, f"the adapters change the output by only {gap}"   # the check above has teeth

    # export: the served chunk of the restored model == the trainer's merged model's chunk
    settings = G.SamplingSettings(sampler="ddim", steps=2, id_cfg=1.5, audio_cfg=2.0)
    gen_trainer = G.Generator(tr.model_from(state.params), nets["vae"], nets["audio"], c)
    gen_restored = G.Generator(model, nets["vae"], nets["audio"], c)
    E.export_generator(gen_restored, str(tmp_path / "art"), settings=settings, dtype="float32")
    server = S.Server(str(tmp_path / "art"))
    slots, w = gen_trainer.chunk_frames, gen_trainer.audio_window
    audio = jnp.asarray(rng.normal(0, 0.1, ((slots + 2 * w) * 640,)), jnp.float32)[None]
    args = [audio, jnp.zeros((1, slots) + gen_trainer.latent_shape), jnp.zeros((1, slots), bool),
            view[:, :slots], jnp.zeros((1,), bool)]
    emb = jnp.ones((1, 512)) / np.sqrt(512)
    ours = np.asarray(server._call("chunk", *args, emb, jnp.int32(4), jnp.int32(0)))
    theirs = np.asarray(gen_trainer._chunk_fn(settings, slots, True, True)(
        gen_trainer._states(), *args, emb, jax.random.fold_in(jax.random.key(4), 0)))
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5)
