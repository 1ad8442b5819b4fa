"""Stage 3 — novel-view animation (temporal-to-spatial adaptation): multi-view stills through
the temporal blocks (frame axis = views) mixed with the video stream, LoRA on temporal blocks.

    --config=configs/stage3_views.py:tiny|demo|small|paper[,ablation=<name>]
"""
from configs.common import apply_ablation, base_config, parse_arg


def get_config(arg=None):
    a = parse_arg(arg)
    c = base_config(a["variant"])
    c.stage = "stage3_views"
    c.data.mixture = {"video": 0.5, "multiview": 0.5}
    c.train.update(p_drop_id=0.1, p_drop_audio=0.1, p_drop_view=0.0, lip_weight=0.1)
    c.self_forcing.update(enabled=True, probability=0.25,
                          chunks=1 if a["variant"] in ("micro", "tiny", "demo") else 2)
    c.lora.update(enabled=True, rank=4 if a["variant"] in ("micro", "tiny", "demo") else 16)
    c.lora.alpha = float(c.lora.rank)
    c.init_from = ""  # the stage-2 workdir
    return apply_ablation(c, a["ablation"])
