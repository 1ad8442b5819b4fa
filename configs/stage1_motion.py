"""Stage 1 — ID-aware motion modelling: video stream, identity (+ view) conditioning, no audio.

    --config=configs/stage1_motion.py:tiny|demo|small|paper[,ablation=<name>]
"""
from configs.common import apply_ablation, base_config, parse_arg


def get_config(arg=None):
    a = parse_arg(arg)
    c = base_config(a["variant"])
    c.stage = "stage1_motion"
    c.data.mixture = {"video": 1.0}
    c.train.update(p_drop_id=0.1, p_drop_audio=1.0, p_drop_view=0.2, lip_weight=0.0)
    # From-scratch variants train everything; the paper variant starts from SD-1.5 (+ AnimateDiff)
    # and trains the temporal blocks at full LR with the spatial ones at a tenth of it.
    if a["variant"] == "paper":
        c.optim.param_groups = ((r"motion_modules", 1.0), (r"^model\.unet\.", 0.1))
    return apply_ablation(c, a["ablation"])
