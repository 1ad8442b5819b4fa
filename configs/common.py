"""Shared pieces of every STARCaster config: model sizes per variant and the default sections.

A config reads like a table in the paper: ``model``, ``diffusion``, ``data``, ``optim``,
``schedule``, ``mesh``, ``ckpt``, ``eval``. Stage files (``stage1_motion.py`` ...) start from
``base_config(variant)`` and change what their stage changes.

Variants:
- ``micro`` : unit tests of the training system (smallest graph that has every part: compiles fastest).
- ``tiny``  : CPU tests, seconds per step (32x32 frames, f=4 VAE -> 8x8x4 latents).
- ``demo``  : the ``make demo`` model (64x64 frames, f=4 VAE -> 16x16x4 latents), minutes on 2 cores.
- ``small`` : the benchmark size (blocks 64/128/256/256, context 256, 32x32x4 latents, 8 frames).
- ``paper`` : SD-1.5 dims (320/640/1280/1280, 2 layers/block, 8 heads, context 768),
              AnimateDiff-v2-size temporal blocks, wav2vec2-base audio, f=8 SD VAE, 512x512.
"""
from __future__ import annotations

import ml_collections as mlc

VARIANTS = ("micro", "tiny", "demo", "small", "paper")

_UNET = {
    "micro": dict(block_out_channels=(16, 32), cross_attn_blocks=(False, True), layers_per_block=1,
                  num_attention_heads=2, cross_attention_dim=32, norm_num_groups=4,
                  motion_num_attention_heads=2, motion_max_seq_length=32, audio_dim=32, view_dim=16),
    "tiny": dict(block_out_channels=(32, 64), cross_attn_blocks=(True, True), layers_per_block=1,
                 num_attention_heads=4, cross_attention_dim=64, norm_num_groups=8,
                 motion_num_attention_heads=4, motion_max_seq_length=32, audio_dim=64, view_dim=32),
    "demo": dict(block_out_channels=(64, 128, 128), cross_attn_blocks=(True, True, True), layers_per_block=1,
                 num_attention_heads=4, cross_attention_dim=128, norm_num_groups=16,
                 motion_num_attention_heads=4, motion_max_seq_length=32, audio_dim=128, view_dim=64),
    "small": dict(block_out_channels=(64, 128, 256, 256), cross_attn_blocks=(True, True, True, False),
                  layers_per_block=2, num_attention_heads=8, cross_attention_dim=256, norm_num_groups=32,
                  motion_num_attention_heads=8, motion_max_seq_length=32, audio_dim=256, view_dim=128),
    "paper": dict(block_out_channels=(320, 640, 1280, 1280), cross_attn_blocks=(True, True, True, False),
                  layers_per_block=2, num_attention_heads=8, cross_attention_dim=768, norm_num_groups=32,
                  motion_num_attention_heads=8, motion_max_seq_length=32, audio_dim=768, view_dim=320),
}

# VAE (diffusers AutoencoderKL fields); paper = SD-1.5's VAE.
_VAE = {
    "micro": dict(block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4),
    "tiny": dict(block_out_channels=(16, 32, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8),
    "demo": dict(block_out_channels=(32, 64, 64), layers_per_block=1, latent_channels=4, norm_num_groups=16),
    "small": dict(block_out_channels=(32, 64, 128, 128), layers_per_block=1, latent_channels=4, norm_num_groups=16),
    "paper": dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, norm_num_groups=32),
}

_DATA = {  # frames per chunk F, context frames K, image resolution
    "micro": dict(resolution=16, num_frames=2, context_frames=1, batch_size=2, num_views=2),
    "tiny": dict(resolution=32, num_frames=4, context_frames=1, batch_size=2, num_views=4),
    "demo": dict(resolution=64, num_frames=8, context_frames=2, batch_size=4, num_views=4),
    "small": dict(resolution=256, num_frames=8, context_frames=2, batch_size=8, num_views=8),
    "paper": dict(resolution=512, num_frames=16, context_frames=4, batch_size=256, num_views=8),
}

_AUDIO = {  # encoder, window +-w frames, tokens per frame (fields of models/audio/encoder.py)
    "micro": dict(encoder="builtin", builtin=dict(hidden_size=32, num_layers=1), num_tokens=2,
                  window=2, proj_hidden=32),
    "tiny": dict(encoder="builtin", builtin=dict(hidden_size=64, num_layers=2), num_tokens=4,
                 window=2, proj_hidden=128),
    "demo": dict(encoder="builtin", builtin=dict(hidden_size=96, num_layers=3), num_tokens=4,
                 window=2, proj_hidden=256),
    "small": dict(encoder="builtin", builtin=dict(hidden_size=256, num_layers=4), num_tokens=8,
                  window=2, proj_hidden=512),
    # wav2vec2-base-960h: 12 layers + the feature projection = 13 hidden states of 768.
    "paper": dict(encoder="wav2vec2", wav2vec2=dict(), num_tokens=32, window=2, proj_hidden=512),
}

_ID_TOKENS = {"micro": 1, "tiny": 2, "demo": 4, "small": 4, "paper": 4}

# train.lip_latent_crop: side (latent pixels) of the mouth window of x̂0 the lip loss decodes.
# The built-in corpus's mouth box is <= 0.19 of the frame (0.24 with the lip reader's margin):
# about half the window's side at demo/small/paper; the rest is context for the decoder.
# micro/tiny latents (4 / 8 px) are too small to crop: the full frame is decoded (0).
_LIP_LATENT_CROP = {"micro": 0, "tiny": 0, "demo": 8, "small": 16, "paper": 32}


def parse_arg(arg: str | None) -> dict[str, str]:
    """``"tiny,ablation=no_lip_loss"`` -> ``{"variant": "tiny", "ablation": "no_lip_loss"}``."""
    out = {"variant": "tiny", "ablation": "none"}
    for i, part in enumerate([p for p in (arg or "").split(",") if p]):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
        elif i == 0:
            out["variant"] = part.strip()
        else:
            raise ValueError(f"config arg {arg!r}: expected '<variant>[,key=value...]'")
    if out["variant"] not in VARIANTS:
        raise ValueError(f"config variant {out['variant']!r}: expected one of {VARIANTS}")
    return out


def base_config(variant: str) -> mlc.ConfigDict:
    c = mlc.ConfigDict()
    c.variant = variant
    c.stage = "base"
    c.ablation = "none"
    c.seed = 0

    m = c.model = mlc.ConfigDict()
    # dtype: compute dtype ("auto" = bfloat16 on TPU/GPU, float32 on CPU; params, loss, norm
    # statistics and softmax stay f32); remat_policy: none|dots|dots_saveable|full (models/unet.py)
    m.unet = mlc.ConfigDict(dict(_UNET[variant], dtype="auto" if variant in ("small", "paper") else "float32",
                                 remat_policy="none", use_temporal=True, use_context_embedding=True))
    m.unet.attention_impl = ""     # "" = per platform (einsum CPU, cudnn GPU, splash TPU) | xla|einsum|cudnn|splash
    # mesh axis the motion modules shard frames over (K/V all-gathered in a shard_map), so long clips fit; "" = off
    m.unet.sequence_parallel_axis = ""
    m.vae = mlc.ConfigDict(dict(_VAE[variant], scaling_factor=0.18215 if variant == "paper" else 1.0))
    m.vae_checkpoint = ""          # trained tiny VAE (demo) or an imported SD VAE directory
    # Directory written by `python -m launch.train_encoders` (<dir>/{vae,audio,identity_cond,
    # identity_eval,lip_loss,lip_eval}); the explicit *_checkpoint fields win over it.
    m.encoders_dir = ""
    # identity.encoder: how a reference image becomes the embedding, in training, generation
    # and export alike (models/identity/resolve.py): "builtin" (<encoders_dir>/identity_cond, or
    # the encoder directory encoder_checkpoint names) | "onnx_arcface" (encoder_checkpoint = a
    # user's insightface ArcFace .onnx) | "arc2face" (not implemented: raises, saying why).
    # identity.source: what training conditions on: "auto" (the encoder when one exists, else
    # id_vector) | "encoder" | "precomputed" (the records' ingested embedding) | "id_vector"
    # (the built-in corpus's ground truth: tests without a trained encoder); training/frozen.py
    # (the tokens' width is model.unet.cross_attention_dim)
    m.identity = mlc.ConfigDict(dict(embed_dim=512, num_tokens=_ID_TOKENS[variant],
                                     encoder="builtin", encoder_checkpoint="", source="auto"))
    # builtin / wav2vec2: the chosen encoder's own fields; the other one stays empty. The audio
    # tokens' width is model.unet.audio_dim. layers: which encoder hidden states feed the
    # projector (None = all); wav2vec2_path: a local HF wav2vec2 directory; encoder_checkpoint: a
    # trained built-in encoder (else <encoders_dir>/audio).
    m.audio = mlc.ConfigDict(dict(dict(builtin={}, wav2vec2={}), **_AUDIO[variant],
                                  layers=None, wav2vec2_path="", encoder_checkpoint=""))
    m.pretrained = mlc.ConfigDict(dict(sd_unet="", motion_adapter="", vae=""))

    d = c.diffusion = mlc.ConfigDict()
    d.schedule = "ddpm"            # "ddpm" (SD scaled-linear) | "flow" (rectified flow)
    d.zero_terminal_snr = False
    d.flow_shift = 1.0
    d.objective = "v"              # "eps" | "v" | "flow"
    d.loss_weighting = "min_snr"   # None | "min_snr"
    d.min_snr_gamma = 5.0
    d.sampler = "ddim"             # "ddim" | "dpmpp_2m" | "euler"
    d.sample_steps = 25 if variant in ("small", "paper") else 10
    d.audio_cfg = 2.0
    d.id_cfg = 1.5
    # Inference timestep grid (DDPM): "trailing" starts at t=999 (pure noise), as the
    # self-forcing rollout does; "leading" is diffusers' SD-1.5 default (starts at t=901 for 10 steps).
    d.timestep_spacing = "trailing"

    data = c.data = mlc.ConfigDict(dict(_DATA[variant]))
    data.root = ""                 # the built-in corpus or ingested shards (TFDS data_dir)
    # Record files per stream, overriding data.root's shards: a glob of ArrayRecord files or a
    # TFDS directory (data_pipelines/sources.py), e.g. --config.data.sources.video='x/*.array_record'
    data.sources = mlc.ConfigDict(dict(video="", multiview=""))
    data.split = "train"           # the records' split ("train" | "test")
    data.window_frames = 0         # video window length; 0 = num_frames + context_frames (self-forcing sets it)
    data.mixture = mlc.ConfigDict({"video": 1.0})
    data.hflip = True              # random horizontal flip (True = p 0.5, or a probability)
    data.pose_mode = "compose"     # relative head pose: "compose" (rotation composition) | "subtract"
    data.num_shards = 0            # logical shards of the global batch (0: one per process);
                                   # fix it to get the same batches on any number of hosts
    data.num_workers = 0           # Grain multiprocess prefetch workers (0 = in-process)
    data.read_threads = 2          # Grain read threads per stream
    data.prefetch = 2              # per-stream read-ahead, in batches

    o = c.optim = mlc.ConfigDict()
    o.name = "adamw"
    o.lr = 1e-4
    o.b1, o.b2, o.eps = 0.9, 0.999, 1e-8
    o.weight_decay = 1e-2
    o.grad_clip = 1.0
    o.ema_decay = 0.999
    o.update_program = "separate"  # "separate": gradients + one shared update program; "fused": one
    o.param_groups = ()            # ((regex, "freeze" | lr_multiplier), ...), first match wins

    s = c.schedule = mlc.ConfigDict()
    s.total_steps = 1000
    s.warmup_steps = 50
    s.decay = "cosine"             # "cosine" | "constant"

    # Objectives (training/losses.py). Stages override the drop probabilities and lip weight.
    c.train = mlc.ConfigDict(dict(
        p_drop_id=0.1, p_drop_audio=0.1, p_drop_view=0.2,   # CFG / invent-your-own-motion dropout
        p_drop_all=0.05,            # P(identity, audio and view dropped together): the branch CFG weights by 1 - s_id
        p_context=0.7,              # video: P(first K frames are clean context) else synthesize
        # video: P(the context is the reference layout inference uses for the first animate chunk:
        # frame 0 repeated K times, zero audio on those slots), taken out of p_context
        p_reference_context=0.3,
        p_context_multiview=0.5,    # multiview: P(view 0 is a clean reference)
        per_frame_t=False,          # diffusion forcing: an independent timestep per frame (else one per clip)
        lip_weight=0.0, lip_low_noise_power=1.0, lip_checkpoint="",
        # lip loss: decode only a lip_latent_crop x lip_latent_crop window of x̂0 latents centred
        # on the mouth box (and compare it with the real frames' pixels under it); 0 = full frames
        lip_latent_crop=_LIP_LATENT_CROP[variant],
        strict_reference=False,     # ablation: reference frame always context, no identity tokens
        use_view=True, vae_latent_noise=False))
    # Self-forcing (training/self_forcing.py): roll out R chunks with the inference sampler. The
    # empty / zero / negative values below mean "the inference setting" (the diffusion section),
    # so the rolled-out context looks like what Generator produces.
    c.self_forcing = mlc.ConfigDict(dict(
        enabled=False, probability=0.5, chunks=2, mode="context_stopgrad",
        sampler="",                 # "" = diffusion.sampler
        steps=0,                    # 0 = diffusion.sample_steps
        spacing="",                 # "" = diffusion.timestep_spacing
        audio_cfg=-1.0, id_cfg=-1.0,  # < 0 = diffusion.audio_cfg / id_cfg (CFG in the rollout)
    ))
    c.lora = mlc.ConfigDict(dict(enabled=False, rank=16, alpha=16.0, train_base=False,
                                 also_train=r"view_embedding|view_proj",
                                 targets=r"motion_modules\..*\.(to_q|to_k|to_v|to_out)"))

    c.mesh = mlc.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    c.ckpt = mlc.ConfigDict(dict(every_steps=200, keep=3, async_save=True))
    # Training loop (training/periodic_eval.py): every eval.every_steps steps (0 = never) animate
    # eval.quick_clips held-out clips, write their scores beside the baselines and a strip of
    # true / generated frames (the sample videos) to TensorBoard. Needs the evaluators in
    # model.encoders_dir; when they (or held-out clips) are missing it logs one line and stays
    # off, unless eval.required.
    c.eval = mlc.ConfigDict()
    c.eval.every_steps = 0         # steps between quick held-out evaluations (0 = never)
    c.eval.required = False
    c.eval.use_ema = True          # evaluate the EMA weights (what launch.generate samples) else the raw ones
    # launch.evaluate (starcaster_jax/evaluation): which modes, how many held-out records each.
    c.eval.modes = ("animate", "synthesize", "novel_view", "multiview", "long_horizon", "motion")
    c.eval.num_clips = 8           # test clips for animate / synthesize / motion
    c.eval.num_multiview = 4       # test multi-view sets
    c.eval.num_novel_view = 4      # test clips re-rendered from an unseen camera path
    c.eval.long_clips = 1          # long-horizon clips, rendered at evaluation time
    c.eval.long_seconds = 30.0     # length of each long-horizon clip
    c.eval.segment_seconds = 5.0   # long-horizon drift curve: one point per segment
    c.eval.far = 0.01              # identity verification threshold at this false-accept rate
    c.eval.calib_clips = 0         # held-out clips whose frames calibrate it (0 = all test clips)
    c.eval.calib_frames = 16       # frames per calibration clip
    c.eval.synthesize_poses = True  # synthesize along the clip's true poses (else free motion)
    c.eval.quick_clips = 1         # clips of the training loop's quick held-out evaluation
    c.log = mlc.ConfigDict(dict(every_steps=10, progress=True))
    c.max_wall_minutes = 0.0       # stop (with a checkpoint) after this long, compilation excluded; 0 = no limit
    c.init_from = ""               # workdir of the previous stage: its parameters start this one
    c.init_from_ema = False        # ... taken from its EMA (True) or its raw weights
    return c


# Ablations (``--config=configs/<stage>.py:<variant>,ablation=<name>``): what each one tests.
ABLATIONS = {
    "none": "the full method",
    "no_lip_loss": "lip-reading loss off (lip_weight = 0): is lip sync learnt from audio alone?",
    "no_self_forcing": "self-forcing off: drift over long autoregressive videos",
    "strict_reference": "reference frame always given as context, no identity tokens "
                        "(the 'strict' alternative to the soft identity constraint)",
    "no_view_embedding": "no per-frame view signal: free-viewpoint control and view consistency",
    "full_finetune_stage3": "stage 3 trains every weight (no LoRA): forgetting of temporal skill",
    "no_audio_cfg_dropout": "audio never dropped in training (no audio CFG possible)",
}


def apply_ablation(c: mlc.ConfigDict, name: str) -> mlc.ConfigDict:
    """Change ``c`` as ablation ``name`` says (see ABLATIONS)."""
    if name not in ABLATIONS:
        raise ValueError(f"ablation {name!r}: expected one of {sorted(ABLATIONS)}")
    c.ablation = name
    if name == "no_lip_loss":
        c.train.lip_weight = 0.0
    elif name == "no_self_forcing":
        c.self_forcing.enabled = False
    elif name == "strict_reference":
        c.train.strict_reference = True
        c.train.p_context = 1.0
        c.train.p_context_multiview = 1.0
    elif name == "no_view_embedding":
        c.train.use_view = False
    elif name == "full_finetune_stage3":
        c.lora.enabled = False
    elif name == "no_audio_cfg_dropout":
        c.train.p_drop_audio = 0.0 if c.train.p_drop_audio < 1.0 else 1.0
        c.train.p_drop_all = 0.0   # the joint drop would drop audio too
    return c
