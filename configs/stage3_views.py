"""Stage 3 — novel-view animation (temporal-to-spatial adaptation): multi-view stills through
the temporal blocks (frame axis = views) mixed with the video stream, LoRA on temporal blocks.

    --config=configs/stage3_views.py:tiny|demo|small|paper
"""
from configs.common import base_config, parse_arg


def get_config(arg=None):
    a = parse_arg(arg)
    c = base_config(a["variant"])
    c.stage = "stage3_views"
    c.ablation = a["ablation"]
    c.data.mixture = {"video": 0.5, "multiview": 0.5}
    c.train = dict(p_drop_id=0.1, p_drop_audio=0.1, p_drop_view=0.0, lip_weight=0.1)
    c.lora = dict(enabled=True, rank=16, targets=r"motion_modules\..*\.(to_q|to_k|to_v|to_out)")
    c.init_from = ""  # the stage-2 workdir
    return c
