"""The training schedule as pure functions of the environment step (seeds, Diagram 5)::

    env step:  0 ── warmup ──┬── transition ──┬──────── full training ────────
    WM updates:   n_wm       │   n_wm         │  n_wm  (early_wm_updates before the
    actor/critic: 0          │   n_a / n_c    │         early/late boundary, late_* after,
    critic_real_mix:         1 ─────────────► final_real_mix (seeds: 0)  when multi_update is on)

Every function accepts a Python int (host loop) or a traced integer (on-device loop).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp


class UpdateCounts(NamedTuple):
    world_model: int
    actor: int
    critic: int


def phase(env_step: int, schedule) -> str:
    """'warmup', 'transition' or 'full' — for logs and reports (host side only)."""
    if env_step < schedule.warmup_steps:
        return "warmup"
    if env_step < schedule.transition_steps:
        return "transition"
    return "full"


def update_counts(env_step, schedule) -> UpdateCounts:
    """Updates of each optimiser per training batch at ``env_step``.

    Warmup forces actor and critic to 0 (don't train a policy on an untrained model).  With
    ``multi_update`` the full-training phase uses more world-model updates before
    ``early_late_boundary`` and more actor/critic updates after it.
    """
    s = schedule
    if isinstance(env_step, int):
        warm = env_step < s.warmup_steps
        early = env_step < s.early_late_boundary
        full = env_step >= s.transition_steps
        wm, actor, critic = s.wm_updates, s.actor_updates, s.critic_updates
        if s.multi_update and full:
            if early:
                wm = s.early_wm_updates
            else:
                actor, critic = s.late_actor_updates, s.late_critic_updates
        if warm:
            actor = critic = 0
        return UpdateCounts(wm, actor, critic)
    warm = env_step < s.warmup_steps
    early = env_step < s.early_late_boundary
    multi = jnp.asarray(s.multi_update) & (env_step >= s.transition_steps)
    wm = jnp.where(multi & early, s.early_wm_updates, s.wm_updates)
    actor = jnp.where(multi & ~early, s.late_actor_updates, s.actor_updates)
    critic = jnp.where(multi & ~early, s.late_critic_updates, s.critic_updates)
    return UpdateCounts(wm, jnp.where(warm, 0, actor), jnp.where(warm, 0, critic))


def later_counts(start: int, end: int, schedule) -> list[UpdateCounts]:
    """The distinct :func:`update_counts` a host run takes after env step ``start`` and before
    ``end``, in the order it meets them (each is a compiled program of the train step); the
    counts at ``start`` are not listed.  Counts change only where a phase starts."""
    now = update_counts(start, schedule)
    seen, out = {now}, []
    bounds = (schedule.warmup_steps, schedule.transition_steps, schedule.early_late_boundary)
    for step in sorted(b for b in bounds if start < b < end):
        counts = update_counts(step, schedule)
        if counts not in seen:
            seen.add(counts)
            out.append(counts)
    return out


def critic_real_mix(env_step, schedule):
    """Weight of real-data returns in the critic loss: 1 until warmup ends, linearly down to
    ``final_real_mix`` at ``transition_steps``, constant afterwards.  The seeds' "gradually trust
    imagined returns more" ends at 0; a floor keeps the critic anchored to real terminations."""
    span = max(schedule.transition_steps - schedule.warmup_steps, 1)
    frac = (env_step - schedule.warmup_steps) / span
    end = schedule.final_real_mix
    if isinstance(env_step, int):
        return float(end + (1.0 - end) * min(max(1.0 - frac, 0.0), 1.0))
    return end + (1.0 - end) * jnp.clip(1.0 - frac, 0.0, 1.0)
