"""Optimiser: LR schedule, parameter groups by regex (freeze / LR multiplier), clipping, EMA.

Parameter paths are the '.'-joined keys of the trainable pure-dict tree, e.g.
``model.unet.down_blocks.0.motion_modules.0.proj_in.kernel`` or ``lora.<same path>.a``.
``optim.param_groups`` is an ordered list of ``(regex, rule)``: the first regex that
``re.search``-es a path decides; ``rule`` is ``"freeze"`` or an LR multiplier (float). Paths no
regex matches train at the base LR (multiplier 1). Groups become one ``optax.multi_transform``
so frozen leaves get no optimiser state at all (and XLA drops their weight gradients).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax


def path_str(path) -> str:
    """``tree_flatten_with_path`` key path -> ``'a.b.0.kernel'``."""
    parts = []
    for k in path:
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return ".".join(parts)


def tree_paths(tree) -> list[str]:
    return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _rule_label(rule) -> str:
    if isinstance(rule, str):
        if rule != "freeze":
            raise ValueError(f"optim.param_groups: rule {rule!r}: expected 'freeze' or a float multiplier")
        return "freeze"
    return f"lr*{float(rule):g}"


def param_labels(params, groups: Sequence[Sequence[Any]]) -> Any:
    """Pytree of group labels (``"freeze"`` / ``"lr*<m>"``) matching ``params``."""
    compiled = []
    for g in groups or ():
        if len(g) != 2:
            raise ValueError(f"optim.param_groups: entry {g!r}: expected (regex, 'freeze' | multiplier)")
        try:
            compiled.append((re.compile(g[0]), _rule_label(g[1])))
        except re.error as e:
            raise ValueError(f"optim.param_groups: bad regex {g[0]!r}: {e}") from None

    def label(path, _):
        p = path_str(path)
        for rx, lab in compiled:
            if rx.search(p):
                return lab
        return "lr*1"

    return jax.tree_util.tree_map_with_path(label, params)


def lr_schedule(base_lr: float, schedule_cfg, *, warmup_from: float | None = None) -> optax.Schedule:
    """Linear warm-up (from base_lr / warmup, so the first update is not a no-op; ``warmup_from``
    overrides that start) then cosine decay to 10% or constant."""
    total = max(int(schedule_cfg.total_steps), 1)
    warm = min(int(schedule_cfg.warmup_steps), total - 1)
    decay = str(schedule_cfg.decay)
    if decay == "constant":
        main = optax.constant_schedule(base_lr)
    elif decay == "cosine":
        main = optax.cosine_decay_schedule(base_lr, max(total - warm, 1), alpha=0.1)
    else:
        raise ValueError(f"schedule.decay {decay!r}: expected 'cosine' or 'constant'")
    if warm <= 0:
        return main
    ramp = optax.linear_schedule(base_lr / warm if warmup_from is None else warmup_from, base_lr, warm)
    return optax.join_schedules([ramp, main], [warm])


def make_optimizer(config, params, groups=None, *,
                   warmup_from: float | None = None) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """-> (transform, base LR schedule) for the trainable tree ``params``. ``groups`` (default
    ``optim.param_groups``) are the resolved ``(regex, "freeze" | lr multiplier)`` rules: the
    trainer prepends the LoRA stage's freezing to the config's own. ``warmup_from``: see
    ``lr_schedule`` (the built-in encoders' schedules start at 0)."""
    o = config.optim
    sched = lr_schedule(float(o.lr), config.schedule, warmup_from=warmup_from)
    labels = param_labels(params, o.param_groups if groups is None else groups)
    used = set(jax.tree.leaves(labels))
    if used == {"freeze"}:
        raise ValueError("optim.param_groups freezes every parameter: nothing would train")

    def adamw(mult: float):
        return optax.adamw(lambda s: mult * sched(s), b1=o.b1, b2=o.b2, eps=o.eps,
                           weight_decay=o.weight_decay)

    transforms = {lab: (optax.set_to_zero() if lab == "freeze" else adamw(float(lab[3:])))
                  for lab in used}
    tx = optax.multi_transform(transforms, labels)
    if o.grad_clip and o.grad_clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(float(o.grad_clip)), tx)
    return tx, sched


def trainable_mask(params, groups) -> Any:
    """True where a leaf is trained (used to keep EMA and grad-norm metrics honest)."""
    return jax.tree.map(lambda lab: lab != "freeze", param_labels(params, groups))


def opt_state_shardings(abs_opt, params_shardings, abstract_params, default):
    """Shardings of the optimiser state: a leaf under a parameter's path (Adam's ``mu``/``nu``
    end with ``model.<param path>``) with that parameter's shape takes the parameter's sharding;
    everything else (counts, masked-out nodes) gets ``default``.

    Why not XLA's propagation through ``tx.init``: the moments are ``zeros_like(param)``, which
    carries no data dependence on the (sharded) parameter, so XLA:TPU leaves them replicated:
    a full copy of both moments on every chip."""
    table = {}
    for (path, a), s in zip(jax.tree_util.tree_flatten_with_path(abstract_params)[0],
                            jax.tree.leaves(params_shardings)):
        table[path_str(path)] = (tuple(a.shape), s)

    def one(path, a):
        parts = path_str(path).split(".")
        for i in range(len(parts)):
            hit = table.get(".".join(parts[i:]))
            if hit is not None and hit[0] == tuple(getattr(a, "shape", ())):
                return hit[1]
        return default

    return jax.tree_util.tree_map_with_path(one, abs_opt)


def ema_update(ema, params, decay: float, step):
    """EMA with the usual warm-up ``min(decay, (1 + step) / (10 + step))`` so early EMA weights
    are not dominated by the random init."""
    d = jnp.minimum(decay, (1.0 + step) / (10.0 + step)).astype(jnp.float32)
    return jax.tree.map(lambda e, p: (d * e.astype(jnp.float32) + (1 - d) * p.astype(jnp.float32)
                                      ).astype(e.dtype), ema, params)
