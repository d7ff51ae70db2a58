"""Acting: observations -> encoder -> representation -> policy head -> actions.

The returned actions follow :mod:`wm_jax.types` (one-hot / ``[-1, 1]``); the environment adapter
converts them for gymnasium.  A recurrent world model (the RSSM) needs the previous state and
action to read an observation, so acting carries an :class:`ActCarry` from step to step; for the
per-observation models the carry passes through unused.
"""

from __future__ import annotations

import dataclasses
import functools

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from wm_jax.networks import state_size
from wm_jax.normalizer import normalize
from wm_jax.observe import observe_step
from wm_jax.types import Params


@flax.struct.dataclass
class ActCarry:
    """What acting remembers between env steps, per env."""

    state: chex.Array  # [N, S]  the state the last observation was read into
    action: chex.Array  # [N, A]  the action taken from it
    is_first: chex.Array  # [N]   True where the next observation starts an episode


@functools.partial(jax.jit, static_argnums=2)
def acting_key(seed_key: chex.PRNGKey, env_step, process_index: int | None = None) -> chex.Array:
    """The key of the training run's acting call at ``env_step`` (a ``uint32`` count):
    ``fold_in(fold_in(seed_key, 2), env_step)``, then ``process_index`` in multi-process runs.
    One jitted call: as two eager ``fold_in``s it cost ~0.3 ms per vector step on a 2-core CPU."""
    key = jax.random.fold_in(jax.random.fold_in(seed_key, 2), env_step)
    return key if process_index is None else jax.random.fold_in(key, process_index)


def initial_carry(agent, num_envs: int) -> ActCarry:
    """Every env at the start of an episode."""
    return ActCarry(
        state=np.zeros((num_envs, state_size(agent.config)), np.float32),
        action=np.zeros((num_envs, agent.spec.action_dim), np.float32),
        is_first=np.ones(num_envs, bool),
    )


def episode_starts(carry: ActCarry, done) -> ActCarry:
    """Marks the envs whose episode ended (``done [N]``): their next observation is a reset."""
    return carry.replace(is_first=np.asarray(done, bool))


def act(
    agent,
    wm_params: Params,
    actor_params: Params,
    carry: ActCarry,
    obs: chex.Array,
    obs_mean: chex.Array,
    obs_std: chex.Array,
    key: chex.PRNGKey,
    deterministic: bool,
) -> tuple[chex.Array, ActCarry]:
    """Actions ``[N, A]`` for raw observations ``[N, *obs_shape]``, and the carry to pass with
    the next observations (``is_first`` cleared: mark new episodes with :func:`episode_starts`).

    ``deterministic=True`` takes the mode: the arg-max one-hot, or ``tanh(μ)`` of the squashed
    Normal (and posterior modes of an RSSM); otherwise a sample of the policy (exploration comes
    from its entropy).
    """
    wm = agent.nets.world_model
    # The action keeps ``key`` itself (as before carries existed); an RSSM latent folds it.
    latent_key, action_key = jax.random.fold_in(key, 1), key
    states = observe_step(
        wm,
        wm_params,
        carry.state,
        carry.action,
        normalize(obs, obs_mean, obs_std),
        carry.is_first,
        None if deterministic else latent_key,
    )
    dist = agent.nets.actor.apply(actor_params, states)
    if agent.spec.discrete:
        if deterministic:
            actions = jax.nn.one_hot(jnp.argmax(dist.logits, -1), agent.spec.action_dim)
        else:
            actions = jax.lax.stop_gradient(dist.sample(seed=action_key))
    elif deterministic:
        actions = jnp.tanh(dist.distribution.loc)
    else:
        actions = dist.sample(seed=action_key)
    actions = actions.astype(jnp.float32)
    return actions, ActCarry(states, actions, jnp.zeros_like(carry.is_first))


class ActFn:
    """``act`` bound to ``agent`` and jitted (``deterministic`` is static); ``initial_carry(n)``
    starts ``n`` envs."""

    def __init__(self, agent):
        self.agent = agent
        self._fn = jax.jit(functools.partial(act, agent), static_argnames=("deterministic",))

    def __call__(self, *args, **kwargs) -> tuple[chex.Array, ActCarry]:
        return self._fn(*args, **kwargs)

    def initial_carry(self, num_envs: int) -> ActCarry:
        return initial_carry(self.agent, num_envs)


def make_act_fn(agent) -> ActFn:
    """``act`` bound to ``agent`` and jitted."""
    return ActFn(agent)


def carry_to_arrays(carry: ActCarry) -> dict[str, np.ndarray]:
    """The carry as named numpy arrays, for checkpoints."""
    return {f.name: np.asarray(getattr(carry, f.name)) for f in dataclasses.fields(carry)}
