"""The loss each of the three update steps differentiates, built from a batch:
:func:`world_model_loss` (the world model's terms on real data), :func:`actor_loss_fn`
(imagination from the batch's states, λ-returns, the actor objective) and :func:`critic_loss_fn`
(the value regression on imagined and real-data targets).

The terms themselves are the pure functions of :mod:`wm_jax.losses`; this module reads the
batch into states, starts imagination and composes the terms with the config's scales.
:mod:`wm_jax.update` takes their gradients and applies the optimisers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from wm_jax import losses
from wm_jax.agent import Agent
from wm_jax.context_window import (
    ContextWindow,
    context_length,
    dynamics_step,
    empty_windows,
    start_windows,
)
from wm_jax.imagination import imagine, policy_terms
from wm_jax.networks.encoders import normalize_image
from wm_jax.observe import observe_sequence
from wm_jax.returns import discount_weights, lambda_returns, return_percentiles, td_targets
from wm_jax.types import (
    Batch,
    Imagined,
    Metrics,
    Params,
    Sequence,
    SequenceContext,
    TrainState,
    make_causal_mask,
)

sg = jax.lax.stop_gradient


def _merge_bt(dist, b: int, t: int):
    """Reshapes a distribution over ``[..., B, T, S]`` to ``[..., B*T, S]``."""
    loc, scale = dist.loc, dist.scale
    lead = loc.shape[:-3]
    return type(dist)(loc.reshape((*lead, b * t, -1)), scale.reshape((*lead, b * t, -1)))


def world_model_loss(
    agent: Agent, wm_params: Params, batch: Batch, key: chex.PRNGKey
) -> tuple[chex.Array, Metrics]:
    """``L_WM = Σ_i scale_i·L_i`` over dynamics, reward, continue, decoder and representation
    losses, plus the multi-step loss in sequence mode (seeds, "Path 1: world model gradients").

    Rewards and continues are predicted from the state a transition lands in (``s'``).
    """
    cfg = agent.config.world_model
    wm = agent.nets.world_model
    apply = functools.partial(wm.apply, wm_params, rngs={"sample": key})

    observed = None
    if isinstance(batch, Sequence):
        b, t = batch.reward.shape
        observed = observe_sequence(wm, wm_params, batch.obs, batch.action, key)
        features, rep, states = observed.features, observed.rep, observed.states  # [B, T+1, ...]
        if not wm.recurrent:
            context = SequenceContext(
                features=features[:, :-1],
                states=states[:, :-1],
                actions=batch.action,
                rewards=batch.reward,
                continues=batch.cont,
                causal_mask=make_causal_mask(t),
                padding_mask=batch.mask > 0,
            )
            dist = _merge_bt(
                apply(states[:, :-1], batch.action, context, method=wm.predict_next), b, t
            )
        flat = batch.to_transitions()
        next_states = states[:, 1:].reshape((b * t, -1))
        # obs[:, k + 1] is real when transition k is: the last real step's true next observation
        # counts, the padding after it does not.
        obs_mask = jnp.concatenate([batch.mask[:, :1], batch.mask], 1)
        all_obs, all_states, all_mask = batch.obs, states, obs_mask
    else:
        flat = batch
        b = batch.reward.shape[0]
        all_obs = jnp.concatenate([batch.obs, batch.next_obs], 0)
        features, rep = apply(all_obs, True, method=wm.embed)
        all_states, all_mask = rep.states, jnp.concatenate([batch.mask, batch.mask], 0)
        next_states = all_states[b:]
        dist = apply(all_states[:b], batch.action, method=wm.predict_next)

    if wm.recurrent:  # the prior must predict the posterior (KL), the RSSM's Loss 1
        dynamics_term = losses.latent_kl_loss(
            observed.post_logits[:, 1:],
            observed.prior_logits,
            batch.mask,
            cfg.kl_balance,
            cfg.kl_free_bits,
        )
    else:
        target = next_states if cfg.dynamics_target_grad else sg(next_states)
        dynamics_term = losses.dynamics_loss(dist, target, flat.mask, cfg.dynamics_loss)
    terms = {
        "dynamics": dynamics_term,
        "reward": losses.reward_loss(apply(next_states, method=wm.reward), flat.reward, flat.mask),
        "continue": losses.continue_loss(
            apply(next_states, method=wm.cont), flat.cont, flat.mask, cfg.termination_weight
        ),
        "decoder": losses.decoder_loss(
            apply(all_states, method=wm.decode), normalize_image(all_obs), all_mask
        ),
    }
    if rep is not None:  # the RSSM's posterior is trained by the KL and the heads instead
        terms["representation"] = losses.representation_loss(
            features, rep.recon_features, all_mask, rep.mean, rep.std, cfg.vae_beta
        )
    if isinstance(batch, Sequence) and cfg.multi_step_scale > 0:

        def predict_mean(s, a):
            mean = apply(s, a, method=wm.predict_next).mean()
            return mean.mean(0) if mean.ndim > 2 else mean

        def predict_window(window, s, a):  # context models roll on their own last K steps
            dist, window = dynamics_step(wm, wm_params, window, s, a, rngs={"sample": key})
            return dist.mean(), window

        uses_context = context_length(wm.dynamics) > 0
        seq_target = states[:, 1:] if cfg.dynamics_target_grad else sg(states[:, 1:])
        terms["multi_step"] = losses.multi_step_loss(
            predict_window if uses_context else predict_mean,
            jnp.concatenate([states[:, :1], seq_target], 1),
            batch.action,
            batch.cont,
            batch.mask,
            empty_windows(wm, b) if uses_context else None,
        )
    total = sum(cfg[f"{name}_scale"] * loss for name, (loss, _) in terms.items())
    metrics: Metrics = {"world_model_loss": total}
    for _, term_metrics in terms.values():
        metrics.update(term_metrics)
    state_mean = losses.masked_mean(all_states, all_mask)
    metrics["state_mean"] = sg(state_mean)
    metrics["state_std"] = sg(
        jnp.sqrt(losses.masked_mean((all_states - state_mean) ** 2, all_mask))
    )
    return total, metrics


class BatchStates(NamedTuple):
    """A batch's observations read into states (no gradient, no sampling): ``states`` of the
    observations the actions were taken from and ``next_states`` of those they led to —
    ``[B, T, S]`` each for sequences, ``[B, S]`` for flat batches."""

    states: chex.Array
    next_states: chex.Array


def observe_batch(agent: Agent, wm_params: Params, batch: Batch) -> BatchStates:
    """Reads ``batch`` into states with the world model's current parameters (posterior modes /
    means).  :func:`wm_jax.update.train_step` does it once, after the world-model updates, for
    both the actor's start states and the critic's real-data targets (for an RSSM it is a T-step
    scan)."""
    wm = agent.nets.world_model
    wm_params = sg(wm_params)
    if isinstance(batch, Sequence):
        states = observe_sequence(wm, wm_params, batch.obs, batch.action, None).states
        return BatchStates(sg(states[:, :-1]), sg(states[:, 1:]))
    encode = functools.partial(wm.apply, wm_params, method=wm.encode)
    return BatchStates(sg(encode(batch.obs, False)), sg(encode(batch.next_obs, False)))


def start_states(
    agent: Agent,
    wm_params: Params,
    batch: Batch,
    key: chex.PRNGKey,
    observed: BatchStates | None = None,
) -> tuple[chex.Array, chex.Array, ContextWindow | None]:
    """Encodes the real observations of ``batch`` into imagination start states ``[N, S]`` (held
    fixed) and their weights ``[N]`` (the padding mask); optionally subsamples ``num_starts``
    of them, uniformly among the real steps (padded ones only where too few are real).
    ``observed`` (:func:`observe_batch` with the same ``wm_params``) saves reading it again.

    The third result is, for a dynamics model that reads a context, each start's window of the
    real (state, action) pairs before it in its sequence (``[N, K, ·]``; flat batches: an empty
    one-step window, since flat training only ever shows the model one step); else ``None``."""
    wm = agent.nets.world_model
    if observed is None:
        observed = observe_batch(agent, wm_params, batch)
    mask = batch.mask.reshape(-1)
    states = observed.states.reshape((mask.shape[0], -1))
    window = None
    if context_length(wm.dynamics):
        if isinstance(batch, Sequence):
            window = sg(start_windows(wm, wm_params, observed.states, batch.action, batch.mask))
        else:
            window = wm.dynamics.empty_window(states.shape[0], 1)
    n = agent.config.imagination.num_starts
    if 0 < n < states.shape[0]:
        # Among the real steps: padded ones (weight 0) only fill in when fewer than n are real.
        idx = jax.random.choice(key, states.shape[0], (n,), replace=False, p=mask)
        states, mask = states[idx], mask[idx]
        window = jax.tree.map(lambda x: x[idx], window)
    return states, mask, window


def imagine_from_batch(
    agent: Agent,
    state: TrainState,
    actor_params: Params,
    batch: Batch,
    key: chex.PRNGKey,
    observed: BatchStates | None = None,
) -> tuple[Imagined, chex.Array]:
    """Imagination with world-model and critic parameters read through ``stop_gradient``."""
    cfg = agent.config
    start_key, imagine_key = jax.random.split(key)
    starts, weights, window = start_states(agent, state.wm_params, batch, start_key, observed)
    imagined = imagine(
        agent.nets,
        sg(state.wm_params),
        actor_params,
        sg(state.critic_params),
        starts,
        imagine_key,
        cfg.imagination.horizon,
        agent.spec.discrete,
        sample_dynamics=cfg.imagination.sample_dynamics,
        detach_actions=cfg.actor.gradient == "reinforce",
        unroll=cfg.imagination.unroll,
        continue_mode=cfg.imagination.continue_mode,
        start_window=window,
        termination_weight=cfg.world_model.termination_weight,
    )
    return imagined, weights


def actor_loss_fn(
    actor_params: Params,
    agent: Agent,
    state: TrainState,
    batch: Batch,
    key: chex.PRNGKey,
    observed: BatchStates | None = None,
) -> tuple[chex.Array, tuple[Metrics, Imagined, chex.Array]]:
    """Imagine, compute λ-returns, and score them with :func:`wm_jax.losses.actor_loss`."""
    cfg = agent.config
    if cfg.actor.gradient == "reinforce":
        # Roll out without a gradient, then re-score the policy on the whole trajectory at once.
        key, terms_key = jax.random.split(key)
        imagined, weights = imagine_from_batch(agent, state, sg(actor_params), batch, key, observed)
        log_probs, entropies = policy_terms(
            agent.nets,
            actor_params,
            imagined.states[:-1],
            imagined.actions,
            terms_key,
            agent.spec.discrete,
        )
        imagined = imagined.replace(log_probs=log_probs, entropies=entropies)
    else:
        imagined, weights = imagine_from_batch(agent, state, actor_params, batch, key, observed)
    returns = lambda_returns(
        imagined.rewards,
        imagined.continues,
        imagined.values[1:],
        cfg.imagination.gamma,
        cfg.imagination.lambda_,
    )
    w = jnp.broadcast_to(weights[None], returns.shape)
    if cfg.actor.discount_weights:
        # Imagined steps past a likely termination matter less (Dreamer's weighting).
        w = w * sg(discount_weights(imagined.continues, cfg.imagination.gamma))
    return_range = state.return_range
    if cfg.actor.return_norm:
        # S = max(1, P95 - P5), of this batch or (decay > 0) of an EMA over batches (DreamerV3).
        decay = cfg.actor.return_norm_decay
        return_range = decay * state.return_range + (1.0 - decay) * return_percentiles(returns, w)
        scale = jnp.maximum(1.0, return_range[1] - return_range[0])
    else:
        scale = 1.0
    loss, metrics = losses.actor_loss(
        imagined,
        returns,
        w,
        cfg.actor.entropy_coef,
        cfg.actor.gradient,
        imagined.values[:-1],
        scale,
        cfg.actor.center_advantages,
    )
    return loss, (metrics, imagined, weights, sg(return_range))


def real_value_targets(
    agent: Agent, state: TrainState, batch: Batch, observed: BatchStates | None = None
) -> tuple[chex.Array, chex.Array, chex.Array]:
    """Return targets from *real* data for the critic_real_mix: ``(states, targets, weights)``.

    Flat batches give one-step targets ``r + γ·c·V'(s')``; sequences give λ-returns along the real
    steps of each window, bootstrapped with ``V'(s')`` of the last real step where the window's
    episode ends (truncation, termination) or its data stops: padding is never read.  ``V'`` is
    the bootstrap critic (``config.critic.bootstrap``); states are read with the current world
    model (``observed``, :func:`observe_batch`, if already made).
    """
    cfg = agent.config.imagination
    if observed is None:
        observed = observe_batch(agent, state.wm_params, batch)
    next_values = agent.nets.critic.apply(_bootstrap_params(agent, state), observed.next_states)
    if isinstance(batch, Sequence):
        swap = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731
        targets = swap(
            lambda_returns(
                swap(batch.reward),
                swap(batch.cont),
                swap(next_values),
                cfg.gamma,
                cfg.lambda_,
                mask=swap(batch.mask),
            )
        )
    else:
        targets = td_targets(batch.reward, batch.cont, next_values, cfg.gamma)
    if batch.return_known is not None:
        # A terminated episode's own discounted return: exact, however far the termination is
        # beyond the window (bootstrapped targets reach it only through chains of bootstraps).
        targets = jnp.where(batch.return_known > 0, batch.return_to_go, targets)
    return observed.states, sg(targets), batch.mask


def _bootstrap_params(agent: Agent, state: TrainState) -> Params:
    """The critic parameters λ-return targets bootstrap from (``config.critic.bootstrap``)."""
    if agent.config.critic.bootstrap == "online":
        return sg(state.critic_params)
    return state.critic_target_params


def _critic_fit(
    critic, params, states, targets, weights, rows=slice(None)
) -> tuple[chex.Array, Metrics]:
    """:func:`wm_jax.losses.critic_loss` of ``V(states)[rows]`` against ``targets``, scalar or
    distributional (``config.critic.bins``), plus the TD-error monitor."""
    if critic.bins > 0:
        logits = critic.apply(params, states, method=critic.logits)[rows]
        values = critic.readout(logits)
        loss, metrics = losses.critic_loss(values, targets, weights, logits, critic.bin_centers)
    else:
        values = critic.apply(params, states)[rows]
        loss, metrics = losses.critic_loss(values, targets, weights)
    metrics.update(losses.td_error_monitor(values, targets, weights))
    return loss, metrics


def critic_loss_fn(
    critic_params: Params,
    agent: Agent,
    state: TrainState,
    imagined: Imagined,
    weights: chex.Array,
    real: Callable[[], tuple[chex.Array, chex.Array, chex.Array]] | None,
    real_mix: chex.Array | float,
    reuse_values: bool = False,
) -> tuple[chex.Array, Metrics]:
    """``L_V = mix·MSE(V(s_real), R_real) + (1 − mix)·[MSE(V(s_imag), R_imag) + ρ·MSE(V(s_imag),
    V_slow(s_imag))]``; the imagined λ-returns are recomputed with the bootstrap critic
    (``config.critic.bootstrap``: the target critic, or the online one as DreamerV3) so repeated
    critic updates stay consistent.  ρ is ``config.critic.slow_reg`` (DreamerV3's slow-critic
    regulariser, ``V_slow`` the target critic; 0 builds nothing of it).

    ``real`` makes the real-data ``(states, targets, weights)`` (:func:`real_value_targets`);
    ``None`` when ``real_mix`` is statically 0, and then nothing of the real term is computed.
    A traced ``real_mix`` computes the term under ``lax.cond`` only when it is non-zero.
    ``critic_loss_real`` reads 0 whenever the term was skipped.

    ``reuse_values``: the bootstrap critic's values of ``imagined.states[1:]`` are
    ``imagined.values[1:]`` (the caller knows the bootstrap parameters equal the critic
    parameters imagination ran with: no critic update since, and τ = 1 or an online
    bootstrap), so they are not evaluated again.
    """
    cfg = agent.config.imagination
    critic = agent.nets.critic
    if reuse_values:
        bootstrap = imagined.values[1:]
    else:
        bootstrap = critic.apply(_bootstrap_params(agent, state), imagined.states[1:])
    returns = sg(
        lambda_returns(imagined.rewards, imagined.continues, bootstrap, cfg.gamma, cfg.lambda_)
    )
    w = jnp.broadcast_to(weights[None], returns.shape)
    # V over all H + 1 states, the last row dropped: for the first critic update after
    # imagination this is the very forward pass imagination ran (same parameters, same states),
    # which XLA then computes once for both steps; later updates pay 1/H more rows.
    imag_loss, metrics = _critic_fit(
        critic, critic_params, imagined.states, returns, w, slice(None, -1)
    )
    slow_reg = agent.config.critic.slow_reg
    if slow_reg > 0:
        # The slow critic's read-out as a second target (a two-hot one for a distributional
        # critic); XLA computes V(states) once for both fits.
        slow = sg(critic.apply(state.critic_target_params, imagined.states[:-1]))
        reg_loss, _ = _critic_fit(critic, critic_params, imagined.states, slow, w, slice(None, -1))
        imag_loss = imag_loss + slow_reg * reg_loss
        metrics["critic_slow_reg_loss"] = reg_loss

    def real_term(params):
        return _critic_fit(critic, params, *real())[0]

    if real is None:
        real_loss, loss = jnp.zeros((), imag_loss.dtype), imag_loss
    elif isinstance(real_mix, (int, float, np.number)):  # statically non-zero
        real_loss = real_term(critic_params)
        loss = real_mix * real_loss + (1.0 - real_mix) * imag_loss
    else:
        real_loss = jax.lax.cond(
            jnp.asarray(real_mix) != 0,
            real_term,
            lambda params: jnp.zeros((), imag_loss.dtype),
            critic_params,
        )
        loss = real_mix * real_loss + (1.0 - real_mix) * imag_loss
    metrics.update(
        critic_loss=loss,
        critic_loss_imagined=imag_loss,
        critic_loss_real=real_loss,
        critic_real_mix=jnp.asarray(real_mix, jnp.float32),
    )
    return loss, metrics
