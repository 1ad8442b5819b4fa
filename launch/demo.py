"""`make demo`: the newcomer's first command, end to end on 2 CPU cores.

    1. build the built-in demo corpus (3D heads, espeak-ng speech)         data_pipelines.synthetic
    2. train the built-in encoders (VAE, audio, 2 identity, 2 lip readers)  launch.train_encoders
    3. train stages 1 -> 2 -> 3 at the `demo` variant, a few minutes each   launch.train
    4. speak a demo sentence with espeak-ng and write
         demo_out/animate.mp4     a held-out identity's reference image, animated
         demo_out/synthesize.mp4  from an identity embedding alone (no image)
         demo_out/orbit.mp4       animate + a free-viewpoint orbit
    5. score them with the *evaluator* networks (never the ones that conditioned the model):
       identity cosine (identity_eval) and lip-sync viseme accuracy (lip_eval vs espeak's visemes).

Each step is skipped when its output already exists (re-running continues); budgets are wall
clock (`--stage_minutes`), so the demo fits its 15 minutes on any machine, more steps on faster ones.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time

from launch import cli
from launch import train_encoders as te

DEMO_SENTENCE = "Hello! I am a talking head, made from speech."
# The demo's sampler: DPM-Solver++(2M) in 6 steps (the config's DDIM/10 costs 1.7x as long).
DEMO_SAMPLING = dict(sampler="dpmpp_2m", steps=6)


def _log(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def build_corpus(workdir: str) -> str:
    from data_pipelines.synthetic import build  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
    data = os.path.join(workdir, "data")
    if not os.path.isdir(os.path.join(data, "starcaster_synthetic")):
        rc = build.main(["--out", data, "--preset", "demo"])
        if rc:
            raise SystemExit(rc)
    return data


def train_encoders(workdir: str, data: str) -> str:
    enc = os.path.join(workdir, "encoders")
    if not os.path.isfile(os.path.join(enc, "summary.json")):
        rc = te.main(["--data", data, "--workdir", workdir, "--config", "configs/stage2_audio.py:demo"])
        if rc:
            raise SystemExit(rc)
    return enc


def stage_config(module, data: str, encoders: str, minutes: float, init_from: str, seed: int = 0):
    c = module.get_config("demo")
    c.seed = seed                      # each stage its own data order and noise
    c.data.root = data
    c.model.encoders_dir = encoders
    c.init_from = init_from
    c.max_wall_minutes = minutes       # training time; compilation is not counted
    # Self-forcing's rolled-out step is the largest program of all (R chunks x sampler steps of
    # the denoiser, then the loss): minutes of XLA:CPU compilation that 2 cores cannot spare in a
    # 15-minute demo. It is trained and tested in the test suite (tests/test_training.py).
    c.self_forcing.enabled = False
    c.schedule.update(total_steps=100_000, warmup_steps=3, decay="constant")
    c.optim.lr = 3e-4
    c.ckpt.update(every_steps=100_000, async_save=False)
    c.log.every_steps = 10
    return c


def train_stages(workdir: str, data: str, encoders: str, minutes: float) -> str:
    from configs import stage1_motion, stage2_audio, stage3_views  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
    from starcaster_jax.training.checkpoint import checkpoint_dir  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
    from starcaster_jax.training.loop import train  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
    prev = ""
    for seed, (name, module) in enumerate((("stage1", stage1_motion), ("stage2", stage2_audio),
                                           ("stage3", stage3_views))):
        wd = os.path.join(workdir, name)
        if not os.path.isdir(checkpoint_dir(wd)) or not os.listdir(checkpoint_dir(wd)):
            _log(f"training {name} ({minutes:g} min budget)")
            s = train(stage_config(module, data, encoders, minutes, prev, seed), wd)
            last = s["history"][-1] if s["history"] else {}
            _log(f"{name}: {s['step']} steps in {s['wall_s']:.0f}s ({s['compile_s']:.0f}s compiling); "
                 + ", ".join(f"{k}={v:.4f}" for k, v in last.items() if k.endswith("/loss")))
        prev = wd
    return prev


def held_out_reference(data: str):
    """Two test-split records (identities never seen in training): one to animate, one whose
    identity embedding drives the synthesize video."""
    from data_pipelines.sources import default_spec, make_source  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
    src = make_source(default_spec("video", data, "test"), "video", split="test", root=data)
    recs = [src[i] for i in range(len(src))]
    recs = [r for r in recs if r is not None]
    first = recs[0]
    other = next((r for r in recs if int(r["id_label"]) != int(first["id_label"])), recs[-1])
    return first, other


def score(frames, reference, mouth_box, visemes, ev) -> dict:
    """Evaluator-network scores of a generated clip (uint8 ``[T, H, W, 3]``) against the uint8
    reference it should look like and the visemes of its speech."""
    import numpy as np  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
    n = min(len(frames), len(visemes))
    vis = np.asarray(visemes[:n], np.int32)
    boxes = np.broadcast_to(np.asarray(mouth_box, np.float32), (n, 4))
    return {"identity_cos": round(float(np.mean(ev.embed(frames) @ ev.embed(reference[None])[0])), 3),
            "lip_viseme_acc": round(ev.lip_accuracy(frames[:n], boxes, vis), 3),
            "lip_majority_baseline": round(float(np.max(np.bincount(vis)) / n), 3)}


def generate_videos(stage3: str, data: str, encoders: str, out: str) -> dict:
    import numpy as np  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)

    from data_pipelines.synthetic import speech  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
    from data_pipelines.synthetic import visemes as V  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
    from starcaster_jax.evaluation.synthetic import Evaluators  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
    from starcaster_jax.inference import views  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
    from starcaster_jax.inference.chunking import resize_square  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
    from starcaster_jax.inference.generate import Generator, SamplingSettings  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
    from starcaster_jax.media.video import save_image, write_mp4  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
    os.makedirs(out, exist_ok=True)
    utt = speech.synthesize(DEMO_SENTENCE, speech.VOICES_HELDOUT[-1])   # a voice unseen in training
    audio = utt.audio
    n_frames = int(np.ceil(audio.size / 640))
    vis = V.frame_labels(V.segments_from_phonemes(utt.phonemes, 0, audio.size), n_frames)
    rec, other = held_out_reference(data)
    gen = Generator.from_checkpoint(stage3, need_identity=True)
    settings = SamplingSettings.from_config(gen.config, **DEMO_SAMPLING)
    ev = Evaluators.load(encoders)
    ref = resize_square(np.asarray(rec["frames"][0]), gen.resolution)            # uint8 [R, R, 3]
    other_ref = resize_square(np.asarray(other["frames"][0]), gen.resolution)
    save_image(os.path.join(out, "reference.png"), ref)
    box = np.asarray(rec["mouth_box"][0], np.float32)                              # normalised
    other_box = np.asarray(other["mouth_box"][0], np.float32)
    jobs = {
        "animate": (dict(reference=ref), ref, box),
        "synthesize": (dict(id_emb=np.asarray(gen.identity_from_image(other_ref))), other_ref, other_box),
        "orbit": (dict(reference=ref, poses=views.orbit(n_frames, period_frames=float(n_frames))), ref, box),
    }
    results = {}
    for name, (kw, target, mouth) in jobs.items():
        t = time.perf_counter()
        frames = np.concatenate(list(gen.video(audio, seed=0, settings=settings, **kw)), axis=0)
        path = os.path.join(out, f"{name}.mp4")
        write_mp4(path, np.repeat(np.repeat(frames, 4, 1), 4, 2), fps=25, audio=audio, sample_rate=16000)
        save_image(os.path.join(out, f"{name}.png"), frames[len(frames) // 2])
        results[name] = dict(path=path, frames=len(frames), seconds=round(time.perf_counter() - t, 1),
                             **score(frames, target, mouth, vis, ev))
        _log(f"wrote {path} ({len(frames)} frames) {results[name]}")
    return results


def main(argv=None) -> int:
    ap = cli.ArgumentParser(prog="python -m launch.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="demo_work")
    ap.add_argument("--out", default="demo_out")
    ap.add_argument("--stage_minutes", type=float, default=float(os.environ.get("DEMO_STAGE_MINUTES", 0.5)),
                    help="wall-clock training budget per stage")
    a = ap.parse_args(argv)
    import jax  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
    jax.config.update("jax_compilation_cache_dir", os.path.abspath(os.path.join(a.workdir, "jax_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    logging.getLogger("absl").setLevel(logging.ERROR)
    t0 = time.perf_counter()
    times = {}
    data = build_corpus(a.workdir)
    times["corpus"] = time.perf_counter() - t0
    enc = train_encoders(a.workdir, data)
    times["encoders"] = time.perf_counter() - t0 - sum(times.values())
    stage3 = train_stages(a.workdir, data, enc, a.stage_minutes)
    times["stages"] = time.perf_counter() - t0 - sum(times.values())
    results = generate_videos(stage3, data, enc, a.out)
    times["videos"] = time.perf_counter() - t0 - sum(times.values())
    summary = {"videos": results, "seconds": {k: round(v, 1) for k, v in times.items()},
               "total_seconds": round(time.perf_counter() - t0, 1)}
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print("\nSTARCaster-JAX demo")
    for r in results.values():
        print(f"  {r['path']:28s} {r['frames']:4d} frames  identity cos {r['identity_cos']:.3f}  "
              f"lip viseme acc {r['lip_viseme_acc']:.3f} (majority {r['lip_majority_baseline']:.3f})")
    print("  time: " + ", ".join(f"{k} {v:.0f}s" for k, v in times.items())
          + f"; total {summary['total_seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
