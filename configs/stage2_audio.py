"""Stage 2 — audio-visual sync: adds audio cross-attention and the lip-reading loss.

    --config=configs/stage2_audio.py:tiny|demo|small|paper
"""
from configs.common import base_config, parse_arg


def get_config(arg=None):
    a = parse_arg(arg)
    c = base_config(a["variant"])
    c.stage = "stage2_audio"
    c.ablation = a["ablation"]
    c.data.mixture = {"video": 1.0}
    c.train = dict(p_drop_id=0.1, p_drop_audio=0.1, p_drop_view=0.2, lip_weight=0.1)
    c.init_from = ""  # the stage-1 workdir
    return c
