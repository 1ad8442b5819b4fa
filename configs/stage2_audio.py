"""Stage 2 — audio-visual sync: adds audio cross-attention, the lip-reading loss and self-forcing.

    --config=configs/stage2_audio.py:tiny|demo|small|paper[,ablation=<name>]
"""
from configs.common import apply_ablation, base_config, parse_arg


def get_config(arg=None):
    a = parse_arg(arg)
    c = base_config(a["variant"])
    c.stage = "stage2_audio"
    c.data.mixture = {"video": 1.0}
    c.train.update(p_drop_id=0.1, p_drop_audio=0.1, p_drop_view=0.2, lip_weight=0.1)
    c.self_forcing.update(enabled=True, probability=0.25,
                          chunks=1 if a["variant"] in ("micro", "tiny", "demo") else 2)
    c.init_from = ""  # the stage-1 workdir
    return apply_ablation(c, a["ablation"])
