"""Imagination: roll the policy through the learned world model with ``lax.scan``
(seeds, "Step 1: imagination rollout" and "Decision 5").

For each step ``t < H``:  ``a_t ~ π(s_t)``, ``s_{t+1} = f(s_t, a_t)``, ``r_t = E[R(s_{t+1})]``,
``c_t = P(continue | s_{t+1})``, ``v_{t+1} = V(s_{t+1})``.  Rewards and continues are read from
the state a transition *lands in* (as they are trained, :mod:`wm_jax.update`), so an action changes
its own reward through the dynamics.

Dynamics models that read a context (``uses_context``, the transformer) get a rolling window of
the last ``K`` steps in the scan carry (:mod:`wm_jax.context_window`; for the transformer, the
steps' attention keys and values): each step appends ``(s_t, a_t)`` and predicts ``s_{t+1}`` from
it and the window.  The window starts from ``start_window`` (the real steps preceding each start
state) or empty.

Gradient isolation is done by the caller: it passes world-model and critic parameters through
``jax.lax.stop_gradient`` so the actor's gradient flows *through* them to the actions and never *to*
them (what the prototype's save/restore-gradients trick did).
"""

from __future__ import annotations

import chex
import distrax
import jax
import jax.numpy as jnp

from wm_jax.context_window import ContextWindow, context_length, dynamics_step, empty_windows
from wm_jax.networks import Networks
from wm_jax.types import Imagined, Params


def next_state(
    dist: distrax.Normal, key: chex.PRNGKey, sample: bool, batch_rank: int = 2
) -> chex.Array:
    """Reduces a next-state distribution to states ``[B, S]``.

    Uses the mean (or a reparameterised sample); for an ensemble (``[K, B, S]``) each batch element
    follows one member drawn uniformly at random, the usual way to let model disagreement show up
    in imagined trajectories.
    """
    sample_key, member_key = jax.random.split(key)
    states = dist.sample(seed=sample_key) if sample else dist.mean()
    if states.ndim == batch_rank:
        return states
    k, b = states.shape[0], states.shape[1]
    member = jax.random.randint(member_key, (b,), 0, k)
    return jnp.take_along_axis(states, member[None, :, None], axis=0)[0]


def policy_step(
    nets: Networks, actor_params: Params, state: chex.Array, key: chex.PRNGKey, discrete: bool
) -> tuple[chex.Array, chex.Array, chex.Array]:
    """Samples ``a ~ π(s)`` with a pathwise gradient; returns (action, log π(a|s), entropy).

    Discrete: a straight-through one-hot sample (forward: one-hot; backward: ∂probs) and the exact
    entropy.  Continuous: a reparameterised tanh-Normal sample and the single-sample entropy
    estimate ``-log π(a|s)`` (a tanh-Normal has no closed-form entropy).
    """
    dist = nets.actor.apply(actor_params, state)
    if discrete:
        action = dist.sample(seed=key)
        log_prob = dist.log_prob(jax.lax.stop_gradient(action))
        return action, log_prob, dist.entropy()
    action, log_prob = dist.sample_and_log_prob(seed=key)
    # Keep samples strictly inside (-1, 1) so log-probs of stored actions stay finite.
    return jnp.clip(action, -1 + 1e-6, 1 - 1e-6), log_prob, -log_prob


def policy_terms(
    nets: Networks,
    actor_params: Params,
    states: chex.Array,
    actions: chex.Array,
    key: chex.PRNGKey,
    discrete: bool,
) -> tuple[chex.Array, chex.Array]:
    """``(log π(a|s), entropy)`` for given states ``[..., S]`` and actions, in one batched pass.

    REINFORCE needs no gradient through the rollout, so the policy is re-scored on the finished
    trajectory instead of being differentiated through ``H`` scan steps.  Continuous entropies use
    a fresh reparameterised sample (``-log π(a'|s)``): the score of a fixed action would have a zero
    mean gradient.
    """
    dist = nets.actor.apply(actor_params, states)
    log_prob = dist.log_prob(actions)
    if discrete:
        return log_prob, dist.entropy()
    _, fresh_log_prob = dist.sample_and_log_prob(seed=key)
    return log_prob, -fresh_log_prob


def imagine(
    nets: Networks,
    wm_params: Params,
    actor_params: Params,
    critic_params: Params,
    start_states: chex.Array,
    key: chex.PRNGKey,
    horizon: int,
    discrete: bool,
    sample_dynamics: bool = False,
    detach_actions: bool = False,
    unroll: int = 1,
    continue_mode: str = "probs",
    start_window: ContextWindow | None = None,
    termination_weight: float = 1.0,
) -> Imagined:
    """Imagines ``horizon`` steps from ``start_states`` ``[B, S]``; returns a time-major
    :class:`Imagined`.  ``detach_actions=True`` blocks the pathwise gradient (REINFORCE);
    ``unroll`` is passed to ``lax.scan`` (same maths; ``unroll=horizon`` lets XLA's cost analysis
    count every step, which it does not do for a loop body).  ``continue_mode`` is "probs" (the
    seeds: c_t = P(continue)), "mode" (c_t = 1[P(continue) > 0.5]) or "calibrated"
    (c_t = sigmoid(logit + log termination_weight): the continue loss weighs terminations by
    ``termination_weight``, which moves its optimal logit by −log of it; this undoes the shift).

    For a dynamics model with ``uses_context``, ``start_window`` (``[B, K, ...]``) holds the real
    steps before each start state; ``None`` starts from an empty window of the model's
    ``context_length`` (the start state becomes its first entry).  Other models ignore it."""
    chex.assert_rank(start_states, 2)
    wm = nets.world_model

    def landing(nxt):
        """Reward and continue read from the states transitions land in (any leading axes)."""
        reward = wm.apply(wm_params, nxt, method=wm.reward).mean()
        cont_dist = wm.apply(wm_params, nxt, method=wm.cont)
        # "mode" thresholds at 0.5: a confidently safe state keeps the full γ instead of the
        # slight γ·0.97-style shrinkage a never-quite-1 probability applies at every step.
        if continue_mode == "mode":
            cont = (cont_dist.logits > 0).astype(nxt.dtype)
        elif continue_mode == "calibrated":
            cont = jax.nn.sigmoid(cont_dist.logits + jnp.log(termination_weight))
        else:
            cont = cont_dist.probs
        return reward, cont

    def act(state, policy_key):
        action, log_prob, entropy = policy_step(nets, actor_params, state, policy_key, discrete)
        if detach_actions:
            action = jax.lax.stop_gradient(action)
        return action, log_prob, entropy

    def step(state, step_key):
        policy_key, dynamics_key = jax.random.split(step_key)
        action, log_prob, entropy = act(state, policy_key)
        dist = wm.apply(wm_params, state, action, method=wm.predict_next)
        nxt = next_state(dist, dynamics_key, sample_dynamics)
        return nxt, (nxt, action, log_prob, entropy)

    def window_step(carry, step_key):
        state, window = carry
        policy_key, dynamics_key = jax.random.split(step_key)
        action, log_prob, entropy = act(state, policy_key)
        dist, window = dynamics_step(wm, wm_params, window, state, action)
        nxt = next_state(dist, dynamics_key, sample_dynamics)
        return (nxt, window), (nxt, action, log_prob, entropy)

    keys = jax.random.split(key, horizon)
    if context_length(wm.dynamics):
        if start_window is None:
            start_window = empty_windows(wm, start_states.shape[0])
        chex.assert_equal(start_window.count.shape[0], start_states.shape[0])
        _, outputs = jax.lax.scan(window_step, (start_states, start_window), keys, unroll=unroll)
    else:
        _, outputs = jax.lax.scan(step, start_states, keys, unroll=unroll)
    states, actions, log_probs, entropies = outputs
    # Only the policy and the dynamics feed the recurrence; the heads read the finished
    # trajectory in one [H·B]-row pass (bigger matmuls, a smaller scan body and its backward).
    states = jnp.concatenate([start_states[None], states], 0)
    rewards, conts = landing(states[1:])
    values = nets.critic.apply(critic_params, states)
    return Imagined(
        states=states,
        actions=actions,
        log_probs=log_probs,
        entropies=entropies,
        rewards=rewards,
        continues=conts,
        values=values,
    )
