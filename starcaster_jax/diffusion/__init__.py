"""Diffusion core: schedules, parameterisations/losses, samplers, classifier-free guidance."""
from starcaster_jax.diffusion.guidance import guided_model_fn, nested_conditions
from starcaster_jax.diffusion.objectives import (
    OBJECTIVES,
    diffusion_loss,
    from_x0_eps,
    min_snr_weight,
    predict_x0,
    target,
    to_x0_eps,
    training_inputs,
)
from starcaster_jax.diffusion.samplers import SAMPLERS, denoise_steps, sample
from starcaster_jax.diffusion.schedules import (
    DDPMSchedule,
    FlowSchedule,
    SamplingGrid,
    expand_to,
    make_schedule,
    schedule_from_config,
)
