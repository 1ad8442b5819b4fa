"""Train the built-in encoders in order, save each, print the table and write summary.json.

The first job is built here and the others on a builder thread, in order, while it trains; each
job queues its programs on the compile pool when it is built, so encoder k+1 compiles while
encoder k trains (XLA:CPU compiles one program at a time on one core, and compiling is a large
share of a CPU run).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import jax
import numpy as np
from flax import nnx

from data_pipelines.schema import NUM_VISEMES
from starcaster_jax.models import builtin_encoders as be
from starcaster_jax.models.audio.builtin import BuiltinAudioConfig
from starcaster_jax.models.identity.builtin import BuiltinIdentityConfig
from starcaster_jax.models.lipreading import LipReaderConfig
from starcaster_jax.models.pose_regressor import PoseRegressorConfig
from starcaster_jax.models.vae import VAEConfig
from starcaster_jax.training.encoders.audio import AudioJob
from starcaster_jax.training.encoders.common import VARIANT_SCALE, Compiler, Progress, Schedule, schedules
from starcaster_jax.training.encoders.corpus import load_corpus
from starcaster_jax.training.encoders.identity import IdentityJob
from starcaster_jax.training.encoders.lip import LipJob, MouthCrops
from starcaster_jax.training.encoders.pose import PoseJob
from starcaster_jax.training.encoders.vae import VAEJob

JOBS = {"vae": VAEJob, "audio": AudioJob, "identity_cond": IdentityJob, "identity_eval": IdentityJob,
        "lip_loss": LipJob, "lip_eval": LipJob, "pose_eval": PoseJob}


def module_configs(config) -> dict[str, Any]:
    """The module config of every encoder, from the experiment config (+ the presets)."""
    res = int(config.data.resolution)
    vae = VAEConfig.from_diffusers(config.model.vae.to_dict(), sample_size=res)
    audio_kw = dict(config.model.audio.builtin)
    audio = BuiltinAudioConfig.from_dict({**audio_kw, "num_visemes": NUM_VISEMES})
    id_size = min(res, 32)
    return {
        "vae": vae,
        "audio": audio,
        "identity_cond": BuiltinIdentityConfig.for_conditioning(image_size=id_size),
        "identity_eval": BuiltinIdentityConfig.for_evaluation(image_size=id_size),
        "lip_loss": LipReaderConfig.tiny(num_visemes=NUM_VISEMES),
        # the evaluator: another seed and a different trunk (wider front-end, longer temporal
        # context), so that its errors are not the loss network's errors
        "lip_eval": LipReaderConfig.tiny(num_visemes=NUM_VISEMES, frontend_width=24,
                                         widths=(24, 48, 64), temporal_kernel=7),
        "pose_eval": PoseRegressorConfig(image_size=id_size),
    }


@dataclasses.dataclass
class Result:
    name: str
    model: Any                  # the trained module (what builtin_encoders.save wrote)
    metrics: dict[str, Any]
    seconds: float
    steps: int
    params: int
    path: str = ""


def _num_params(model) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param))))


def _f(x, fmt=".3f") -> str:
    return "n/a" if x is None else format(x, fmt)


def _metric_cells(name: str, m: Mapping[str, Any]) -> tuple[str, str, str]:
    if name == "vae":
        return ("PSNR test frames / mouth (dB)",
                f"{_f(m['psnr_db'], '.1f')} / {_f(m['mouth_psnr_db'], '.1f')}", "-")
    if name == "pose_eval":
        return "pose MAE (deg)", _f(m["mae_deg"], ".1f"), _f(m["chance_mae_deg"], ".1f")
    if name.startswith("identity"):
        return ("TAR@FAR=1e-2 / rank-1", f"{_f(m['tar@far=0.01'])} / {_f(m['rank1'])}",
                f"0.010 / {_f(m['chance_rank1'])}")
    return "viseme acc/frame", _f(m["viseme_accuracy"]), _f(m["chance"])


def format_table(results: Mapping[str, Result]) -> str:
    rows = [("encoder", "params", "steps", "time s", "held-out metric", "value", "chance")]
    for name, r in results.items():
        rows.append((name, f"{r.params / 1e6:.2f}M", str(r.steps), f"{r.seconds:.1f}",
                     *_metric_cells(name, r.metrics)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def train(config, data_dir: str, workdir: str, *, names=None,
          scheds: Mapping[str, Schedule] | None = None, progress: bool = True,
          compile_workers: int = 2) -> dict[str, Result]:
    """Train ``names`` (default: all seven) and save them under ``<workdir>/encoders``;
    -> ``{name: Result}`` (models included)."""
    names = list(names or be.ENCODER_NAMES)
    scheds = dict(scheds or schedules(VARIANT_SCALE.get(config.variant, 1.0)))
    t0, cpu0 = time.perf_counter(), time.process_time()
    corpus = load_corpus(data_dir)
    t_data = time.perf_counter() - t0
    cfgs = module_configs(config)
    out_dir = os.path.join(workdir, "encoders")
    print(f"built-in encoders: corpus {corpus.path} ({len(corpus.train)} train / "
          f"{len(corpus.test)} test clips, {corpus.num_train_ids} train identities, "
          f"{corpus.resolution}px), read in {t_data:.1f}s; config variant {config.variant}",
          flush=True)
    compiler = Compiler(compile_workers)
    bar = None
    results: dict[str, Result] = {}
    try:
        crops: dict[tuple, MouthCrops] = {}     # the two lip readers share the crops of one size

        def build(name):   # model + optimizer (NumPy init) and its programs queued for compiling
            cfg, sched = cfgs[name], scheds[name]
            if JOBS[name] is not LipJob:
                return JOBS[name](cfg, sched, corpus, compiler)
            key = (cfg.crop_size, cfg.margin)
            if key not in crops:
                crops[key] = MouthCrops(cfg, corpus, compiler)
            return LipJob(cfg, sched, corpus, compiler, crops[key])

        builder = ThreadPoolExecutor(1, thread_name_prefix="encoder-build")
        jobs: dict[str, Future] = {names[0]: Future()}
        jobs[names[0]].set_result(build(names[0]))
        for name in names[1:]:
            jobs[name] = builder.submit(build, name)
        builder.shutdown(wait=False)
        bar = Progress(sum(scheds[n].steps for n in names), progress)
        for name in names:
            bar.start(name)
            t = time.perf_counter()
            model, metrics = jobs.pop(name).result().run(bar)
            secs = time.perf_counter() - t
            metrics = dict(metrics, train_seconds=round(secs, 2), steps=scheds[name].steps,
                           timing=bar.timing())
            record = {"schedule": dataclasses.asdict(scheds[name]), "data": corpus.path,
                      "config_variant": config.variant, "trained_by": "launch.train_encoders"}
            path = be.save(out_dir, name, model, record, metrics)
            results[name] = Result(name, model, metrics, secs, scheds[name].steps,
                                   _num_params(model), path)
    finally:
        if bar is not None:
            bar.close()
        compiler.close()
    total, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    print("\n" + format_table(results))
    print(f"total {total:.1f}s wall, {cpu:.1f}s CPU (data {t_data:.1f}s); "
          f"saved under {os.path.abspath(out_dir)}", flush=True)
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump({n: r.metrics for n, r in results.items()}
                  | {"total_seconds": round(total, 2), "cpu_seconds": round(cpu, 2)},
                  f, indent=1, default=float)
    return results
