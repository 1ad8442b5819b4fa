"""Parameter counts of a config's model, per component, without allocating it (``nnx.eval_shape``).

    python launch/info.py --config=configs/stage2_audio.py:paper
"""
from __future__ import annotations

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from launch import cli  # noqa: E402
from starcaster_jax.models.rngs import InitRngs  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "config file[:variant]", lock_config=True)

# component -> regex over the dotted parameter path of the STARCaster module (first match wins)
COMPONENTS = (
    ("view", r"(^unet\.view_embedding\.|\.view_proj\.)"),
    ("audio", r"(^audio_proj\.|\.attn_audio\.|\.norm_audio\.)"),
    ("identity", r"^id_proj\."),
    ("temporal", r"\.motion_modules\."),
    ("context", r"^unet\.context_embedding$"),
    ("spatial", r"^unet\."),
)


def count_components(model_cfg) -> dict[str, int]:
    import numpy as np  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
    from flax import nnx  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)

    import starcaster_jax  # noqa: F401, PLC0415 (CLI misuse and --help answer before JAX loads)
    from starcaster_jax.models.starcaster import STARCaster  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
    from starcaster_jax.models.vae import AutoencoderKL, VAEConfig  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)
    from starcaster_jax.weights.common import param_shapes  # noqa: PLC0415 (CLI misuse and --help answer before JAX loads)

    counts = {name: 0 for name, _ in COMPONENTS}
    model = nnx.eval_shape(lambda: STARCaster(model_cfg, rngs=InitRngs(0)))
    for path, shape in param_shapes(model).items():
        for name, pat in COMPONENTS:
            if re.search(pat, path):
                counts[name] += int(np.prod(shape))
                break
        else:
            raise AssertionError(f"parameter {path} belongs to no component")
    vcfg = VAEConfig.from_diffusers(dict(model_cfg.vae))
    vae = nnx.eval_shape(lambda: AutoencoderKL(vcfg, rngs=InitRngs(0)))
    counts["vae (frozen)"] = sum(int(np.prod(s)) for s in param_shapes(vae).values())
    return counts


def main(argv):
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments: {argv[1:]}")
    cfg = _CONFIG.value
    if cfg is None:
        raise cli.UsageError("--config is required, e.g. --config=configs/stage2_audio.py:paper")
    counts = count_components(cfg.model)
    trainable = sum(v for k, v in counts.items() if "frozen" not in k)
    print(f"config: {flags.FLAGS['config'].config_filename}  (variant {cfg.variant})")
    print(f"{'component':<16}{'parameters':>16}")
    for k, v in counts.items():
        print(f"{k:<16}{v:>16,}")
    print(f"{'denoiser total':<16}{trainable:>16,}")
    print(f"{'total':<16}{sum(counts.values()):>16,}")


if __name__ == "__main__":
    cli.run(main)
