"""STARCaster-JAX: identity- and view-aware spatio-temporal autoregressive talking-portrait diffusion.

Parameters carry *logical* axis names only; shardings are derived explicitly in
``starcaster_jax.sharding`` from the abstract state (MaxDiffusion style), so Flax's eager
variable sharding (which would demand a mesh at construction time) is switched off here.
"""
try:
    import flax
except ImportError:  # serving an exported artefact (inference/serve.py) needs JAX only
    pass
else:
    flax.config.update("flax_always_shard_variable", False)

__version__ = "0.1.0"
