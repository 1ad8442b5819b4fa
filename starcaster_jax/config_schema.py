"""The config's schema: every section of ``configs/common.py`` as a frozen dataclass.

``configs/common.py`` declares each field once, with its default and a comment. This module
gives each section a type and refuses anything else. An unknown field (with "did you mean"), a
missing one, or a value of the wrong kind is a one-line ``ValueError`` naming the field.
``sections(config)`` converts the whole config once, at start-up (``launch.train``,
``launch.train_compile``), so that a typo fails before a model is built rather than at the first
step that reads it.

The dataclasses carry no defaults on purpose: the defaults live in ``configs/common.py`` alone.
Sections with a model-side dataclass of their own (``model.unet`` -> ``UNetConfig``,
``model.vae`` -> ``VAEConfig``, ``model.audio.builtin`` -> ``BuiltinAudioConfig``) are
converted by it, so the model and the schema can never disagree.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from typing import Any

from starcaster_jax.models.audio.builtin import BuiltinAudioConfig
from starcaster_jax.models.unet import UNetConfig
from starcaster_jax.models.vae import VAEConfig


def _plain(v: Any) -> Any:
    """ConfigDict / FrozenConfigDict / FieldReference -> plain Python values."""
    if hasattr(v, "to_dict"):
        return v.to_dict()
    if hasattr(v, "get") and hasattr(v, "set") and not isinstance(v, Mapping):  # FieldReference
        return v.get()
    return v


def _kind_ok(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits the annotation ``hint`` (the subset the schema uses)."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_kind_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (tuple, list) or hint in (tuple, list):
        return isinstance(value, (tuple, list))
    if origin is not None and issubclass(origin, Mapping) or hint is Mapping:
        return isinstance(value, Mapping)
    return isinstance(value, hint)


def strict(cls: type, section: Any, where: str):
    """``section`` (ConfigDict or mapping) -> ``cls(**section)``, refusing unknown, missing or
    wrongly typed fields with one line that names ``where.<field>``."""
    d = dict(_plain(section) or {})
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(d) - set(names))
    if unknown:
        close = difflib.get_close_matches(unknown[0], names, n=1)
        hint = f"; did you mean {where}.{close[0]}?" if close else f"; known: {', '.join(names)}"
        raise ValueError(f"{where}.{unknown[0]}: unknown field{hint}")
    required = [f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    missing = [n for n in required if n not in d]
    if missing:
        raise ValueError(f"{where}.{missing[0]}: missing (declare it in configs/common.py)")
    for name, value in d.items():
        value = _plain(value)
        if not _kind_ok(value, hints[name]):
            raise ValueError(f"{where}.{name}={value!r}: expected {hints[name]}")
        d[name] = tuple(value) if isinstance(value, list) else value
    return cls(**d)


# ---------------------------------------------------------------------------------- sections
# Field order and meaning: configs/common.py, where each one is declared with its comment.

@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The top-level scalars (the sections are their own dataclasses)."""
    variant: str
    stage: str
    ablation: str
    seed: int
    max_wall_minutes: float
    init_from: str
    init_from_ema: bool


@dataclasses.dataclass(frozen=True)
class IdentityConfig:
    embed_dim: int
    num_tokens: int
    encoder: str
    encoder_checkpoint: str
    source: str


@dataclasses.dataclass(frozen=True)
class AudioConfig:
    encoder: str
    builtin: Mapping
    wav2vec2: Mapping
    num_tokens: int
    window: int
    proj_hidden: int
    layers: tuple | None
    wav2vec2_path: str
    encoder_checkpoint: str


@dataclasses.dataclass(frozen=True)
class PretrainedConfig:
    sd_unet: str
    motion_adapter: str
    vae: str


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    unet: UNetConfig
    vae: VAEConfig
    vae_checkpoint: str
    encoders_dir: str
    identity: IdentityConfig
    audio: AudioConfig
    pretrained: PretrainedConfig


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
    schedule: str
    zero_terminal_snr: bool
    flow_shift: float
    objective: str
    loss_weighting: str | None
    min_snr_gamma: float
    sampler: str
    sample_steps: int
    audio_cfg: float
    id_cfg: float
    timestep_spacing: str


@dataclasses.dataclass(frozen=True)
class DataConfig:
    resolution: int
    num_frames: int
    context_frames: int
    batch_size: int
    num_views: int
    window_frames: int
    root: str
    sources: Mapping
    split: str
    mixture: Mapping
    hflip: bool | float
    pose_mode: str
    num_shards: int
    num_workers: int
    read_threads: int
    prefetch: int


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    name: str
    lr: float
    b1: float
    b2: float
    eps: float
    weight_decay: float
    grad_clip: float
    ema_decay: float
    update_program: str
    param_groups: tuple


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    total_steps: int
    warmup_steps: int
    decay: str


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    p_drop_id: float
    p_drop_audio: float
    p_drop_view: float
    p_drop_all: float
    p_context: float
    p_reference_context: float
    p_context_multiview: float
    per_frame_t: bool
    lip_weight: float
    lip_low_noise_power: float
    lip_checkpoint: str
    lip_latent_crop: int
    strict_reference: bool
    use_view: bool
    vae_latent_noise: bool


@dataclasses.dataclass(frozen=True)
class SelfForcingSection:
    enabled: bool
    probability: float
    chunks: int
    mode: str
    sampler: str
    steps: int
    spacing: str
    audio_cfg: float
    id_cfg: float


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    enabled: bool
    rank: int
    alpha: float
    train_base: bool
    also_train: str
    targets: str


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    data: int
    fsdp: int
    tensor: int


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every_steps: int
    keep: int
    async_save: bool


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    every_steps: int
    required: bool
    use_ema: bool
    modes: tuple
    num_clips: int
    num_multiview: int
    num_novel_view: int
    long_clips: int
    long_seconds: float
    segment_seconds: float
    far: float
    calib_clips: int
    calib_frames: int
    synthesize_poses: bool
    quick_clips: int


@dataclasses.dataclass(frozen=True)
class LogConfig:
    every_steps: int
    progress: bool


@dataclasses.dataclass(frozen=True)
class Sections:
    """The whole config, typed: ``sections(config).optim.lr``."""
    run: RunConfig
    model: ModelConfig
    diffusion: DiffusionConfig
    data: DataConfig
    optim: OptimConfig
    schedule: ScheduleConfig
    train: TrainConfig
    self_forcing: SelfForcingSection
    lora: LoraConfig
    mesh: MeshConfig
    ckpt: CheckpointConfig
    eval: EvalConfig
    log: LogConfig


# Values a field may take where the set is closed (others are checked by their consumers).
CHOICES = {
    "optim.name": ("adamw",),   # the one optimiser (optax.adamw); the field names it for the tables
    "optim.update_program": ("separate", "fused"),
    "schedule.decay": ("cosine", "constant"),
    "diffusion.schedule": ("ddpm", "flow"),
    "diffusion.objective": ("eps", "v", "flow"),
    "diffusion.sampler": ("ddim", "dpmpp_2m", "euler"),
    "diffusion.timestep_spacing": ("trailing", "leading", "linspace"),
    "data.pose_mode": ("compose", "subtract"),
    "model.audio.encoder": ("builtin", "wav2vec2"),
}


def _check_choices(s: Sections) -> None:
    for path, allowed in CHOICES.items():
        value: Any = s
        for part in path.split("."):
            value = getattr(value, part)
        if value not in allowed:
            raise ValueError(f"{path}={value!r}: expected one of {'|'.join(allowed)}")


def _model(m: Any) -> ModelConfig:
    d = dict(_plain(m))
    subs = {"unet", "vae", "identity", "audio", "pretrained"}
    unet = UNetConfig.from_dict(d["unet"]) if "unet" in d else None
    try:
        vae = VAEConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d["vae"].items()})
    except TypeError as e:
        raise ValueError(f"model.vae: {e}") from None
    audio = strict(AudioConfig, d["audio"], "model.audio")
    if audio.encoder == "builtin":
        BuiltinAudioConfig.from_dict(audio.builtin)
    scalars = {k: v for k, v in d.items() if k not in subs}
    return strict(ModelConfig, dict(scalars, unet=unet, vae=vae, audio=audio,
                                    identity=strict(IdentityConfig, d["identity"], "model.identity"),
                                    pretrained=strict(PretrainedConfig, d["pretrained"], "model.pretrained")),
                  "model")


SECTION_CLASSES = {"diffusion": DiffusionConfig, "data": DataConfig, "optim": OptimConfig,
                   "schedule": ScheduleConfig, "train": TrainConfig,
                   "self_forcing": SelfForcingSection, "lora": LoraConfig, "mesh": MeshConfig,
                   "ckpt": CheckpointConfig, "eval": EvalConfig, "log": LogConfig}


def sections(config: Any) -> Sections:
    """The whole config -> ``Sections``; the first bad field is a one-line ValueError."""
    d = dict(_plain(config))
    known = set(SECTION_CLASSES) | {"model"} | {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(d) - known)
    if unknown:
        close = difflib.get_close_matches(unknown[0], sorted(known), n=1)
        raise ValueError(f"{unknown[0]}: unknown config section" +
                         (f"; did you mean {close[0]}?" if close else ""))
    for name in ["model", *SECTION_CLASSES]:
        if name not in d:
            raise ValueError(f"{name}: missing config section (configs/common.py declares it)")
    run = strict(RunConfig, {k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(RunConfig)}},
                 "config")
    built = {name: strict(cls, d[name], name) for name, cls in SECTION_CLASSES.items()}
    s = Sections(run=run, model=_model(d["model"]), **built)
    _check_choices(s)
    return s
