"""Metrics: per-stream averaging, TensorBoard scalars/videos (tensorboardX), a progress bar,
throughput and an MFU estimate (model FLOPs from XLA's cost analysis of the compiled step over
the device peak: measured on CPU with a matmul, a table value on TPU/GPU)."""
from __future__ import annotations

import collections
import glob
import logging
import os
import struct
import time

import jax
import jax.numpy as jnp
import numpy as np
from tensorboardX import SummaryWriter
from tensorboardX.proto import event_pb2
from tqdm import tqdm

log = logging.getLogger(__name__)

# bf16 dense peak per chip (FLOP/s) for MFU; CPU peaks are measured (measured_peak_flops).
PEAK_FLOPS = {"TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
              "TPU v6 lite": 918e12, "NVIDIA H100": 989e12, "NVIDIA H200": 989e12,
              "NVIDIA A100": 312e12}


def step_flops(compiled) -> float | None:
    """FLOPs of one call of a compiled function (XLA cost analysis), None if unavailable."""
    try:
        ca = compiled.cost_analysis()
        if isinstance(ca, (list, tuple)):
            ca = ca[0]
        return float(ca.get("flops", 0.0)) or None
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None


def measured_peak_flops(n: int = 1024, repeats: int = 5) -> float:
    """Achieved f32 matmul FLOP/s on the first device (the CPU 'peak' MFU is measured against)."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(repeats):
        f(a).block_until_ready()
    return 2 * n**3 * repeats / (time.perf_counter() - t0)


def device_peak_flops() -> float:
    kind = jax.devices()[0].device_kind
    for k, v in PEAK_FLOPS.items():
        if kind.startswith(k):
            return v * jax.device_count()
    return measured_peak_flops() * (jax.device_count() if jax.default_backend() != "cpu" else 1)


class MetricWriter:
    """Averages metrics per (stream) between writes; writes TensorBoard scalars on process 0
    (``workdir=None``: none, only the averages and the progress bar)."""

    def __init__(self, workdir: str | None, *, total_steps: int, progress: bool = True):
        self.enabled = jax.process_index() == 0
        self.tb = None
        if self.enabled and workdir is not None:
            self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
        self.sums = collections.defaultdict(float)
        self.counts = collections.defaultdict(int)
        self.bar = None
        if progress and self.enabled:
            self.bar = tqdm(total=total_steps, desc="train", unit="step", dynamic_ncols=True)
        self.history: list[dict] = []
        self.eval_history: list[dict] = []

    def add(self, kind: str, metrics: dict) -> None:
        for k, v in metrics.items():
            self.sums[f"{kind}/{k}"] += float(v)
            self.counts[f"{kind}/{k}"] += 1

    def write(self, step: int, extra: dict | None = None) -> dict:
        out = {k: self.sums[k] / self.counts[k] for k in self.sums}
        out.update(extra or {})
        self.sums.clear()
        self.counts.clear()
        if self.tb is not None:
            for k, v in out.items():
                self.tb.add_scalar(k, v, step)
            self.tb.flush()
        self.history.append(dict(out, step=step))
        if self.bar is not None:
            loss = {k: v for k, v in out.items() if k.endswith("/loss")}
            self.bar.set_postfix({k.split("/")[0]: f"{v:.4f}" for k, v in loss.items()})
        return out

    def video(self, tag: str, frames: np.ndarray, step: int, fps: int = 25) -> None:
        """frames uint8 [N, T, H, W, 3] -> a TensorBoard video (needs moviepy) or image grid."""
        if self.tb is None:
            return
        try:
            self.tb.add_video(tag, np.transpose(frames, (0, 1, 4, 2, 3)), step, fps=fps)
        except Exception:  # noqa: BLE001 - moviepy missing: fall back to the first frames
            self.tb.add_images(tag, frames[:, 0], step, dataformats="NHWC")

    def write_eval(self, step: int, scalars: dict, images: dict | None = None) -> None:
        """The training loop's held-out evaluation: scalars as they are (no averaging) and
        images ``{tag: uint8 [H, W, 3]}`` (e.g. true frames above generated ones)."""
        self.eval_history.append(dict(scalars, step=step))
        if self.tb is None:
            return
        for k, v in scalars.items():
            self.tb.add_scalar(k, float(v), step)
        for tag, img in (images or {}).items():
            self.tb.add_image(tag, np.asarray(img, np.uint8), step, dataformats="HWC")
        self.tb.flush()

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()


def read_events(logdir: str) -> list[dict]:
    """Every summary value in the TensorBoard event files under ``logdir`` (the writer's
    ``<workdir>/tensorboard``), as ``{"step", "tag", "value"}`` (scalars) or ``{"step", "tag",
    "image": encoded bytes, "height", "width"}``: a reader with no TensorFlow / tensorboard
    install (event files are TFRecord-framed ``Event`` protos)."""

    out = []
    for path in sorted(glob.glob(os.path.join(logdir, "**", "events.out.tfevents.*"), recursive=True)):
        with open(path, "rb") as f:
            data = f.read()
        i = 0
        while i + 12 <= len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            ev = event_pb2.Event.FromString(data[i + 12:i + 12 + n])  # length, crc, data, crc
            i += 12 + n + 4
            for v in ev.summary.value:
                if v.HasField("image"):
                    out.append({"step": ev.step, "tag": v.tag, "image": v.image.encoded_image_string,
                                "height": v.image.height, "width": v.image.width})
                elif v.HasField("simple_value"):
                    out.append({"step": ev.step, "tag": v.tag, "value": v.simple_value})
    return out
