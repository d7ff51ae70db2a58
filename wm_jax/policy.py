"""Acting: observations -> encoder -> representation -> policy head -> actions.

The returned actions follow :mod:`wm_jax.types` (one-hot / ``[-1, 1]``); the environment adapter
converts them for gymnasium.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp

from wm_jax.normalizer import normalize
from wm_jax.types import Params


def act(
    agent,
    wm_params: Params,
    actor_params: Params,
    obs: chex.Array,
    obs_mean: chex.Array,
    obs_std: chex.Array,
    key: chex.PRNGKey,
    deterministic: bool,
) -> chex.Array:
    """Actions ``[N, A]`` for raw observations ``[N, *obs_shape]``.

    ``deterministic=True`` takes the mode: the arg-max one-hot, or ``tanh(μ)`` of the squashed
    Normal; otherwise a sample of the policy (exploration comes from its entropy).
    """
    wm = agent.nets.world_model
    states = wm.apply(wm_params, normalize(obs, obs_mean, obs_std), False, method=wm.encode)
    dist = agent.nets.actor.apply(actor_params, states)
    if agent.spec.discrete:
        if deterministic:
            return jax.nn.one_hot(jnp.argmax(dist.logits, -1), agent.spec.action_dim)
        return jax.lax.stop_gradient(dist.sample(seed=key))
    if deterministic:
        return jnp.tanh(dist.distribution.loc)
    return dist.sample(seed=key)


def make_act_fn(agent):
    """``act`` bound to ``agent`` and jitted (``deterministic`` is static)."""
    return jax.jit(functools.partial(act, agent), static_argnames=("deterministic",))
