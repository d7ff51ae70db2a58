"""Acting: observations -> encoder -> representation -> policy head -> actions.

The returned actions follow :mod:`wm_jax.types` (one-hot / ``[-1, 1]``); the environment adapter
converts them for gymnasium.  A recurrent world model (the RSSM) needs the previous state and
action to read an observation, so acting carries an :class:`ActCarry` from step to step; for the
per-observation models the carry passes through unused.

Exploration noise may be correlated in time (``actor.explore_correlation`` ρ > 0): each env
keeps an AR(1) Gaussian ``z_t = ρ·z_{t-1} + √(1-ρ²)·ε_t`` (fresh at an episode's start), and an
action is drawn from it by inverse transform: the Gumbel-max trick with Gumbel noise
``-log(-log Φ(z))`` for a categorical policy, ``tanh(μ + σ·z)`` for the squashed Normal.  Each
step's action has exactly the policy's distribution; only consecutive draws are correlated
(~1/(1-ρ) steps), as held or slowly varying actions explore tasks where i.i.d. dithering goes
nowhere (Acrobot: a uniform policy never reaches the goal in 500 steps).  The random prefill
draws from the same process with uniform logits / a uniform ``[-1, 1]``.
"""

from __future__ import annotations

import dataclasses
import functools

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from wm_jax.config_rules import ConfigError
from wm_jax.networks import state_size
from wm_jax.normalizer import normalize
from wm_jax.observe import observe_step
from wm_jax.sharding import placed_like
from wm_jax.types import Params


@flax.struct.dataclass
class ActCarry:
    """What acting remembers between env steps, per env."""

    state: chex.Array  # [N, S]  the state the last observation was read into
    action: chex.Array  # [N, A]  the action taken from it
    is_first: chex.Array  # [N]   True where the next observation starts an episode
    # [N, A] the exploration noise z_{t-1}; None unless actor.explore_correlation > 0 (so the
    # carry, and checkpoints of runs without it, keep their arrays).
    noise: chex.Array | None = None


@functools.partial(jax.jit, static_argnums=2)
def acting_key(seed_key: chex.PRNGKey, env_step, process_index: int | None = None) -> chex.Array:
    """The key of the training run's acting call at ``env_step`` (a ``uint32`` count):
    ``fold_in(fold_in(seed_key, 2), env_step)``, then ``process_index`` in multi-process runs.
    One jitted call: as two eager ``fold_in``s it cost ~0.3 ms per vector step on a 2-core CPU."""
    key = jax.random.fold_in(jax.random.fold_in(seed_key, 2), env_step)
    return key if process_index is None else jax.random.fold_in(key, process_index)


def initial_carry(agent, num_envs: int) -> ActCarry:
    """Every env at the start of an episode."""
    action = np.zeros((num_envs, agent.spec.action_dim), np.float32)
    return ActCarry(
        state=np.zeros((num_envs, state_size(agent.config)), np.float32),
        action=action,
        is_first=np.ones(num_envs, bool),
        noise=action.copy() if explore_correlation(agent.config) > 0 else None,
    )


def explore_correlation(config) -> float:
    """ρ of the exploration noise (0: independent samples)."""
    return float(config.actor.get("explore_correlation", 0.0))


def greedy_envs(config, envs: int) -> int:
    """``actor.greedy_envs``: how many of a training loop's ``envs`` (per process) act with the
    mode; refused where it would leave none sampling (the config's rule sees the global
    ``num_envs`` only)."""
    greedy = int(config.actor.get("greedy_envs", 0))
    if greedy and greedy >= envs:
        raise ConfigError(
            f"config.actor.greedy_envs: {greedy} would leave none of each process's {envs} "
            f"envs sampling its actions; use at most {envs - 1}"
        )
    return greedy


def mode_actions(dist, discrete: bool) -> chex.Array:
    """The policy's mode: the arg-max one-hot, or ``tanh(μ)`` of the squashed Normal."""
    if discrete:
        return jax.nn.one_hot(jnp.argmax(dist.logits, -1), dist.logits.shape[-1])
    return jnp.tanh(dist.distribution.loc)


def correlated_at(config, env_step):
    """Whether the policy's samples at ``env_step`` (an int, or traced in the on-device loop)
    are drawn from the correlated noise: ρ > 0 and before ``actor.explore_correlation_steps``
    (0: the whole run)."""
    until = int(config.actor.get("explore_correlation_steps", 0))
    if explore_correlation(config) == 0:
        return False
    return True if until == 0 else env_step < until


def _next_noise(carry: ActCarry, key: chex.PRNGKey, rho: float) -> chex.Array:
    """``z_t`` [N, A]: N(0, 1) at every step, correlation ρ with ``z_{t-1}`` within an episode."""
    eps = jax.random.normal(key, carry.action.shape, jnp.float32)
    if carry.noise is None:
        return eps
    z = rho * carry.noise + np.float32(np.sqrt(1.0 - rho * rho)) * eps
    return jnp.where(jnp.asarray(carry.is_first)[:, None], eps, z)


def noise_actions(logits_or_loc, scale, z, discrete: bool) -> chex.Array:
    """Actions drawn with standard-normal noise ``z`` by inverse transform: a one-hot
    ``argmax(logits + G)`` with ``G = -log(-log Φ(z))`` ~ Gumbel(0, 1) (so the action is a sample
    of ``softmax(logits)``), or ``tanh(loc + scale·z)``."""
    if discrete:
        gumbel = -jnp.log(-jax.scipy.special.log_ndtr(z))
        idx = jnp.argmax(logits_or_loc + gumbel, -1)
        return jax.nn.one_hot(idx, z.shape[-1], dtype=jnp.float32)
    return jnp.tanh(logits_or_loc + scale * z)


@functools.partial(jax.jit, static_argnums=(2, 3))
def correlated_random_actions(carry: ActCarry, key: chex.PRNGKey, discrete: bool, rho: float):
    """The prefill's uniform random actions drawn from the correlated noise (uniform logits; a
    uniform ``[-1, 1]`` as ``2Φ(z) - 1``), and the carry with the noise advanced."""
    z = _next_noise(carry, key, rho)
    if discrete:
        actions = noise_actions(jnp.zeros_like(z), None, z, True)
    else:
        actions = 2.0 * jax.scipy.special.ndtr(z) - 1.0
    return actions, carry.replace(noise=z)


def episode_starts(carry: ActCarry, done) -> ActCarry:
    """Marks the envs whose episode ended (``done [N]``): their next observation is a reset."""
    return carry.replace(is_first=np.asarray(done, bool))


def prefill_actions(config, spec, carry: ActCarry, key, np_seed) -> tuple[np.ndarray, ActCarry]:
    """The host loop's uniform random actions for ``carry``'s envs before the policy acts:
    correlated draws from ``key`` when ``actor.explore_correlation`` > 0, else independent
    draws of numpy's generator seeded with ``np_seed``."""
    rho = explore_correlation(config)
    if rho > 0:
        actions, carry = correlated_random_actions(carry, key, spec.discrete, rho)
        return np.asarray(actions), carry
    n = carry.action.shape[0]
    rng = np.random.default_rng(np_seed)
    if spec.discrete:
        idx = rng.integers(0, spec.action_dim, n)
        return np.eye(spec.action_dim, dtype=np.float32)[idx], carry
    return rng.uniform(-1, 1, (n, spec.action_dim)).astype(np.float32), carry


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
    correlated=True,
    greedy: int = 0,
) -> tuple[chex.Array, ActCarry]:
    """Actions ``[N, A]`` for raw observations ``[N, *obs_shape]``, and the carry to pass with
    the next observations (``is_first`` cleared: mark new episodes with :func:`episode_starts`).

    ``deterministic=True`` takes the mode: the arg-max one-hot, or ``tanh(μ)`` of the squashed
    Normal (and posterior modes of an RSSM); otherwise a sample of the policy (exploration comes
    from its entropy), drawn from the carry's correlated noise where ``correlated`` (a bool, or a
    traced one; see :func:`correlated_at`) and ``actor.explore_correlation`` > 0.  The first
    ``greedy`` rows take the mode even then (the training loops pass ``actor.greedy_envs``).
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
    rho = explore_correlation(agent.config)
    noise = carry.noise
    if rho > 0 and not deterministic and correlated is not False:
        noise = _next_noise(carry, action_key, rho)
        if agent.spec.discrete:
            actions = noise_actions(dist.logits, None, noise, True)
        else:
            base = dist.distribution
            actions = noise_actions(base.loc, base.scale_diag, noise, False)
        if correlated is not True:  # traced (the on-device loop): after the window, i.i.d.
            independent = dist.sample(seed=action_key).astype(actions.dtype)
            actions = jnp.where(correlated, actions, independent)
            noise = jnp.where(correlated, noise, carry.noise)
    elif deterministic:
        actions = mode_actions(dist, agent.spec.discrete)
    elif agent.spec.discrete:
        actions = jax.lax.stop_gradient(dist.sample(seed=action_key))
    else:
        actions = dist.sample(seed=action_key)
    if greedy and not deterministic:
        # The first k envs play the mode, as the evaluation does (their noise still advances).
        first = (jnp.arange(actions.shape[0]) < greedy)[:, None]
        actions = jnp.where(first, mode_actions(dist, agent.spec.discrete), actions)
    actions = actions.astype(jnp.float32)
    return actions, ActCarry(states, actions, jnp.zeros_like(carry.is_first), noise)


class ActFn:
    """``act`` bound to ``agent`` and jitted (``deterministic`` and ``correlated`` static);
    ``initial_carry(n)`` starts ``n`` envs."""

    def __init__(self, agent, training_envs: int | None = None):
        self.agent = agent
        self._fn = jax.jit(
            functools.partial(act, agent),
            static_argnames=("deterministic", "correlated", "greedy"),
        )
        # A training run's envs: its first actor.greedy_envs play the mode (never a user's).
        self.greedy = 0 if training_envs is None else greedy_envs(agent.config, training_envs)

    def __call__(
        self, wm_params, actor_params, carry: ActCarry, *args, **kwargs
    ) -> tuple[chex.Array, ActCarry]:
        # One jit signature (one program) whatever the carry came from: the memory placed like
        # the parameters once (a fresh carry is numpy, jit's outputs come back committed) and
        # ``is_first`` always numpy (the loop sets it from the envs' done flags every step).
        memory = (carry.state, carry.action, carry.noise)
        if not all(x is None or (isinstance(x, jax.Array) and x.committed) for x in memory):
            state, action, noise = placed_like(memory, actor_params)
            carry = carry.replace(state=state, action=action, noise=noise)
        if self.greedy:
            kwargs["greedy"] = self.greedy
        actions, carry = self._fn(wm_params, actor_params, carry, *args, **kwargs)
        return actions, carry.replace(is_first=np.zeros(carry.is_first.shape, bool))

    def initial_carry(self, num_envs: int) -> ActCarry:
        return initial_carry(self.agent, num_envs)

    def correlated_at(self, env_step: int) -> bool:
        return correlated_at(self.agent.config, env_step)


def make_act_fn(agent, training_envs: int | None = None) -> ActFn:
    """``act`` bound to ``agent`` and jitted; ``training_envs``: the training loop's envs per
    process (their first ``actor.greedy_envs`` act with the mode)."""
    return ActFn(agent, training_envs)


def carry_to_arrays(carry: ActCarry) -> dict[str, np.ndarray]:
    """The carry as named numpy arrays, for checkpoints."""
    return {
        f.name: np.asarray(getattr(carry, f.name))
        for f in dataclasses.fields(carry)
        if getattr(carry, f.name) is not None
    }
