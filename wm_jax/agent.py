"""The agent: modules, config, spec and the three optax optimisers the update steps close over,
and the initial :class:`wm_jax.types.TrainState` (parameters, optimiser states, key, counters).

:func:`make_agent` validates the config and builds the networks (:mod:`wm_jax.networks`) and one
optimiser per group (clip → Adam inside ``optax.apply_if_finite``); :func:`init_state`
initialises them.  The steps that train the agent are in :mod:`wm_jax.update`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from wm_jax.config import validate
from wm_jax.networks import Networks, build_networks, state_size
from wm_jax.types import TrainState


class Agent(NamedTuple):
    """What the update steps close over: modules, config, environment spec and the three
    optax transformations.  Static (hashable by identity) — it holds no arrays."""

    nets: Networks
    config: Any  # a validated ml_collections.ConfigDict
    spec: Any  # anything with obs_shape, obs_dtype, action_dim, discrete
    wm_optimizer: optax.GradientTransformation
    actor_optimizer: optax.GradientTransformation
    critic_optimizer: optax.GradientTransformation

    def __hash__(self):
        return id(self)

    def __eq__(self, other):
        return self is other


def expected_updates(config, group: str) -> int:
    """How many updates optimiser ``group`` gets over ``config.total_env_steps``: one train step
    per ``1 / train_ratio`` env steps after prefill (world model) or warmup (actor, critic), each
    with the schedule's updates per batch (the early/late multi-update split is ignored)."""
    s = config.schedule
    start = config.prefill_steps
    per_batch = s.wm_updates
    if group != "world_model":
        start = max(start, s.warmup_steps)
        per_batch = s.actor_updates if group == "actor" else s.critic_updates
    return max(1, int((config.total_env_steps - start) * config.train_ratio * per_batch))


def clip_per_module(max_norm: float) -> optax.GradientTransformation:
    """``optax.clip_by_global_norm(max_norm)`` applied to each module's gradient on its own.

    A module is an entry of the gradient's ``"params"`` dict (the world model's encoder,
    representation, dynamics, reward, continue and decoder; the actor's and critic's layers).
    With one clip for the whole tree, one module's large gradient (a learned reward σ at its
    floor: ~800 against ~1 for the rest) scales every other module's step down with it; here
    each module is clipped by its own norm.  A tree without ``"params"`` is one module.
    """
    clip = optax.clip_by_global_norm(max_norm)

    def update_fn(updates, state, params=None):
        del params
        if not (isinstance(updates, Mapping) and isinstance(updates.get("params"), Mapping)):
            return clip.update(updates, optax.EmptyState())[0], state
        modules = {
            name: clip.update(grads, optax.EmptyState())[0]
            for name, grads in updates["params"].items()
        }
        return {**updates, "params": modules}, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def gradient_clip(group) -> optax.GradientTransformation:
    """The clip of one optimiser group, by ``group.grad_clip_mode``:

    * ``"global"`` (the seeds): ``optax.clip_by_global_norm(grad_clip)`` of the whole gradient;
    * ``"per_module"``: :func:`clip_per_module`, each module to norm ``grad_clip``;
    * ``"adaptive"``: ``optax.adaptive_grad_clip(grad_clip)``, each unit's gradient at most
      ``grad_clip`` times its parameters' norm (Brock et al. 2021; DreamerV3 uses 0.3).
    """
    mode = group.get("grad_clip_mode", "global")
    if mode == "per_module":
        return clip_per_module(group.grad_clip)
    if mode == "adaptive":
        return optax.adaptive_grad_clip(group.grad_clip)
    return optax.clip_by_global_norm(group.grad_clip)


def make_optimizer(group, anneal_updates: int = 1) -> optax.GradientTransformation:
    """:func:`gradient_clip` (``clip_by_global_norm(grad_clip)`` by default) then Adam(lr, eps):
    one per optimiser group.

    With ``lr_final_scale < 1`` the learning rate falls linearly from ``lr`` to
    ``lr·lr_final_scale`` over ``anneal_updates`` updates and stays there.

    Wrapped in ``optax.apply_if_finite``: a non-finite gradient skips that update (zero update,
    Adam moments untouched) and is counted in the state; the trainer stops the run after
    ``config.max_nonfinite_updates`` consecutive skips, so the wrapper itself never gives up and
    applies a NaN (its ``max_consecutive_errors`` is effectively infinite).
    """
    lr = group.lr
    if group.get("lr_final_scale", 1.0) < 1.0:
        lr = optax.linear_schedule(lr, lr * group.lr_final_scale, anneal_updates)
    inner = optax.chain(gradient_clip(group), optax.adam(lr, eps=group.eps))
    return optax.apply_if_finite(inner, max_consecutive_errors=2**30)


def nonfinite_streak(opt_state) -> chex.Array:
    """Consecutive skipped (non-finite) updates of one optimiser, from its state."""
    return opt_state.notfinite_count


def make_agent(config, spec) -> Agent:
    """Validates ``config`` and builds modules and optimisers for an environment ``spec``."""
    validate(config)
    return Agent(
        nets=build_networks(config, spec),
        config=config,
        spec=spec,
        wm_optimizer=make_optimizer(config.world_model, expected_updates(config, "world_model")),
        actor_optimizer=make_optimizer(config.actor, expected_updates(config, "actor")),
        critic_optimizer=make_optimizer(config.critic, expected_updates(config, "critic")),
    )


def init_state(agent: Agent, key: chex.PRNGKey) -> TrainState:
    """Initialises the three parameter sets and optimiser states from ``key``."""
    spec = agent.spec
    wm_key, actor_key, critic_key, sample_key, state_key = jax.random.split(key, 5)
    obs = jnp.zeros((1, *spec.obs_shape), spec.obs_dtype)
    action = jnp.zeros((1, spec.action_dim), jnp.float32)
    wm_params = agent.nets.world_model.init({"params": wm_key, "sample": sample_key}, obs, action)
    state_vec = jnp.zeros((1, state_size(agent.config)), jnp.float32)
    actor_params = agent.nets.actor.init(actor_key, state_vec)
    critic_params = agent.nets.critic.init(critic_key, state_vec)
    zero = jnp.zeros((), jnp.int32)
    return TrainState(
        wm_params=wm_params,
        actor_params=actor_params,
        critic_params=critic_params,
        critic_target_params=critic_params,
        wm_opt_state=agent.wm_optimizer.init(wm_params),
        actor_opt_state=agent.actor_optimizer.init(actor_params),
        critic_opt_state=agent.critic_optimizer.init(critic_params),
        key=state_key,
        wm_updates=zero,
        actor_updates=zero,
        critic_updates=zero,
        return_range=jnp.zeros((2,), jnp.float32),
        lr_scale=jnp.ones((3,), jnp.float32),
    )
