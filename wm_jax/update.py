"""The three update steps — world model, actor, critic — and the train step that composes them
(seeds, "Three separate optimization phases").

Each step is a pure function ``(agent, state, batch, ...) -> (state, metrics)`` with its own optax
state (Adam after ``clip_by_global_norm``).  Gradient isolation is functional:

* ``world_model_update`` differentiates only the world-model loss w.r.t. world-model parameters;
* ``actor_update`` differentiates the actor loss w.r.t. actor parameters only, reading world-model
  and critic parameters through ``jax.lax.stop_gradient`` (the gradient flows *through* the
  dynamics, reward and continue predictors to the actions, never *into* their parameters);
* ``critic_update`` regresses the value on ``stop_gradient`` return targets.

That is what the PyTorch prototype reached by saving and restoring world-model gradients around
a second ``backward()``: here nothing needs restoring because nothing else is ever written.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from wm_jax import losses
from wm_jax.config import validate
from wm_jax.context_window import (
    ContextWindow,
    context_length,
    dynamics_step,
    empty_windows,
    start_windows,
)
from wm_jax.imagination import imagine, policy_terms
from wm_jax.networks import COMPONENTS, Networks, build_networks, state_size
from wm_jax.networks.common import matmul_precision
from wm_jax.networks.encoders import normalize_image
from wm_jax.observe import observe_sequence
from wm_jax.returns import discount_weights, lambda_returns, return_percentiles, td_targets
from wm_jax.schedule import UpdateCounts
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


def make_optimizer(group, anneal_updates: int = 1) -> optax.GradientTransformation:
    """``clip_by_global_norm(grad_clip)`` then Adam(lr, eps): one per optimiser group.

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
    inner = optax.chain(optax.clip_by_global_norm(group.grad_clip), optax.adam(lr, eps=group.eps))
    return optax.apply_if_finite(inner, max_consecutive_errors=2**30)


def _scaled(updates: Params, scale: chex.Array) -> Params:
    """An optimiser's step times its ``TrainState.lr_scale`` entry (x 1.0 is exact)."""
    return jax.tree.map(lambda u: u * scale.astype(u.dtype), updates)


def nonfinite_streak(opt_state) -> chex.Array:
    """Consecutive skipped (non-finite) updates of one optimiser, from its state."""
    return opt_state.notfinite_count


def _skip_metrics(opt_state, prefix: str) -> Metrics:
    return {
        f"{prefix}_update_skipped": 1.0 - opt_state.last_finite.astype(jnp.float32),
        f"{prefix}_nonfinite_total": opt_state.total_notfinite.astype(jnp.float32),
    }


def _in_precision(step):
    """Traces ``step(agent, ...)`` under ``agent.config.precision``
    (:func:`wm_jax.networks.common.matmul_precision`)."""

    @functools.wraps(step)
    def wrapped(agent, *args, **kwargs):
        with matmul_precision(agent.config.get("precision", "float32")):
            return step(agent, *args, **kwargs)

    return wrapped


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


# --------------------------------------------------------------------------------------------
# World model
# --------------------------------------------------------------------------------------------


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


def _grad_norms(grads: Params, prefix: str, components: tuple[str, ...] = ()) -> Metrics:
    metrics = {f"{prefix}_grad_norm": optax.global_norm(grads)}
    for name in components:
        metrics[f"{name}_grad_norm"] = optax.global_norm(grads["params"][name])
    return metrics


@_in_precision
def world_model_update(agent: Agent, state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    """One optimiser step on ``L_WM`` for the world-model parameters only."""
    key, loss_key = jax.random.split(state.key)
    grads, metrics = jax.grad(world_model_loss, argnums=1, has_aux=True)(
        agent, state.wm_params, batch, loss_key
    )
    updates, opt_state = agent.wm_optimizer.update(grads, state.wm_opt_state, state.wm_params)
    metrics.update(_grad_norms(grads, "world_model", COMPONENTS))
    metrics.update(_skip_metrics(opt_state, "world_model"))
    updates = _scaled(updates, state.lr_scale[0])
    return (
        state.replace(
            wm_params=optax.apply_updates(state.wm_params, updates),
            wm_opt_state=opt_state,
            key=key,
            wm_updates=state.wm_updates + 1,
        ),
        metrics,
    )


# --------------------------------------------------------------------------------------------
# Actor
# --------------------------------------------------------------------------------------------


class BatchStates(NamedTuple):
    """A batch's observations read into states (no gradient, no sampling): ``states`` of the
    observations the actions were taken from and ``next_states`` of those they led to —
    ``[B, T, S]`` each for sequences, ``[B, S]`` for flat batches."""

    states: chex.Array
    next_states: chex.Array


def observe_batch(agent: Agent, wm_params: Params, batch: Batch) -> BatchStates:
    """Reads ``batch`` into states with the world model's current parameters (posterior modes /
    means).  :func:`train_step` does it once, after the world-model updates, for both the
    actor's start states and the critic's real-data targets (for an RSSM it is a T-step scan)."""
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
    )
    return loss, (metrics, imagined, weights, sg(return_range))


@_in_precision
def actor_update(
    agent: Agent, state: TrainState, batch: Batch, observed: BatchStates | None = None
) -> tuple[TrainState, Metrics, Imagined, chex.Array]:
    """One optimiser step of the policy head on the imagined-return objective.

    Returns the (gradient-free) imagined trajectory and its start weights for the critic.
    ``observed``: :func:`observe_batch` of ``batch`` with ``state.wm_params``, if already made.
    """
    key, loss_key = jax.random.split(state.key)
    grads, (metrics, imagined, weights, return_range) = jax.grad(actor_loss_fn, has_aux=True)(
        state.actor_params, agent, state, batch, loss_key, observed
    )
    updates, opt_state = agent.actor_optimizer.update(
        grads, state.actor_opt_state, state.actor_params
    )
    metrics.update(_grad_norms(grads, "actor"))
    metrics.update(_skip_metrics(opt_state, "actor"))
    updates = _scaled(updates, state.lr_scale[1])
    new_state = state.replace(
        actor_params=optax.apply_updates(state.actor_params, updates),
        actor_opt_state=opt_state,
        key=key,
        actor_updates=state.actor_updates + 1,
        return_range=return_range,
    )
    return new_state, metrics, sg(imagined), weights


# --------------------------------------------------------------------------------------------
# Critic
# --------------------------------------------------------------------------------------------


def real_value_targets(
    agent: Agent, state: TrainState, batch: Batch, observed: BatchStates | None = None
) -> tuple[chex.Array, chex.Array, chex.Array]:
    """Return targets from *real* data for the critic_real_mix: ``(states, targets, weights)``.

    Flat batches give one-step targets ``r + γ·c·V'(s')``; sequences give λ-returns along the real
    steps of each window, bootstrapped with ``V'(s')`` of the last real step where the window's
    episode ends (truncation, termination) or its data stops: padding is never read.  ``V'`` is
    the target critic; states are read with the current world model (``observed``,
    :func:`observe_batch`, if already made).
    """
    cfg = agent.config.imagination
    if observed is None:
        observed = observe_batch(agent, state.wm_params, batch)
    next_values = agent.nets.critic.apply(state.critic_target_params, observed.next_states)
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
    return observed.states, sg(targets), batch.mask


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


def _is_static_zero(x) -> bool:
    """True for a concrete (Python / NumPy) zero: a weight known at trace time to be 0."""
    return isinstance(x, (int, float, np.number)) and float(x) == 0.0


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
    """``L_V = mix·MSE(V(s_real), R_real) + (1 − mix)·MSE(V(s_imag), R_imag)``; the imagined
    λ-returns are recomputed with the target critic so repeated critic updates stay consistent.

    ``real`` makes the real-data ``(states, targets, weights)`` (:func:`real_value_targets`);
    ``None`` when ``real_mix`` is statically 0, and then nothing of the real term is computed.
    A traced ``real_mix`` computes the term under ``lax.cond`` only when it is non-zero.
    ``critic_loss_real`` reads 0 whenever the term was skipped.

    ``reuse_values``: the target critic's values of ``imagined.states[1:]`` are
    ``imagined.values[1:]`` (the caller knows the target parameters equal the critic parameters
    imagination ran with: τ = 1 and no critic update since), so they are not evaluated again.
    """
    cfg = agent.config.imagination
    critic = agent.nets.critic
    if reuse_values:
        bootstrap = imagined.values[1:]
    else:
        bootstrap = critic.apply(state.critic_target_params, imagined.states[1:])
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


@_in_precision
def critic_update(
    agent: Agent,
    state: TrainState,
    batch: Batch,
    imagined: Imagined,
    weights: chex.Array,
    real_mix: chex.Array | float = 0.0,
    observed: BatchStates | None = None,
    reuse_values: bool = False,
) -> tuple[TrainState, Metrics]:
    """One optimiser step of the value function; then the target critic moves by τ.
    ``observed``: :func:`observe_batch` of ``batch`` with ``state.wm_params``, if already made.
    ``reuse_values`` (static): bootstrap from ``imagined.values`` instead of evaluating the target
    critic again; only valid when the target critic's parameters are those imagination used
    (:func:`train_step` sets it for its first critic update when τ = 1)."""
    real = None
    if not _is_static_zero(real_mix):
        real = functools.partial(real_value_targets, agent, state, batch, observed)
    grads, metrics = jax.grad(critic_loss_fn, has_aux=True)(
        state.critic_params,
        agent,
        state,
        sg(imagined),
        weights,
        real,
        real_mix,
        reuse_values,
    )
    updates, opt_state = agent.critic_optimizer.update(
        grads, state.critic_opt_state, state.critic_params
    )
    updates = _scaled(updates, state.lr_scale[2])
    params = optax.apply_updates(state.critic_params, updates)
    tau = agent.config.critic.target_update_rate
    target = (
        params if tau == 1 else optax.incremental_update(params, state.critic_target_params, tau)
    )
    metrics.update(_grad_norms(grads, "critic"))
    metrics.update(_skip_metrics(opt_state, "critic"))
    return (
        state.replace(
            critic_params=params,
            critic_target_params=target,
            critic_opt_state=opt_state,
            critic_updates=state.critic_updates + 1,
        ),
        metrics,
    )


# --------------------------------------------------------------------------------------------
# Train step
# --------------------------------------------------------------------------------------------


@_in_precision
def train_step(
    agent: Agent,
    state: TrainState,
    batch: Batch,
    counts: UpdateCounts,
    real_mix: chex.Array | float = 0.0,
) -> tuple[TrainState, Metrics]:
    """``counts.world_model`` world-model updates, then ``counts.actor`` actor updates, then
    ``counts.critic`` critic updates, all on ``batch``.  ``counts`` is static (a few distinct
    values over a run, each compiled once); metrics are those of the last update of each kind.
    """
    metrics: Metrics = {}
    for _ in range(counts.world_model):
        state, m = world_model_update(agent, state, batch)
        metrics.update(m)
    imagined = weights = None
    # The actor and critic updates leave the world model alone: read the batch once for both.
    observed = None
    if counts.actor or counts.critic:
        observed = observe_batch(agent, state.wm_params, batch)
    for _ in range(counts.actor):
        state, m, imagined, weights = actor_update(agent, state, batch, observed)
        metrics.update(m)
    if counts.critic and imagined is None:
        key, imagine_key = jax.random.split(state.key)
        imagined, weights = imagine_from_batch(
            agent, state, state.actor_params, batch, imagine_key, observed
        )
        imagined, state = sg(imagined), state.replace(key=key)
    # At τ = 1 the target critic IS the critic imagination just used (an update sets the target
    # to the new parameters), so the first critic update reuses the imagined values.
    reuse = agent.config.critic.target_update_rate == 1
    for i in range(counts.critic):
        state, m = critic_update(
            agent, state, batch, imagined, weights, real_mix, observed, reuse and i == 0
        )
        metrics.update(m)
    return state, metrics


class Steps(NamedTuple):
    """Jitted entry points bound to one agent."""

    init: Callable[[chex.PRNGKey], TrainState]
    world_model_update: Callable[[TrainState, Batch], tuple[TrainState, Metrics]]
    actor_update: Callable[..., Any]
    critic_update: Callable[..., Any]
    train_step: Callable[..., tuple[TrainState, Metrics]]


def make_steps(agent: Agent) -> Steps:
    """Binds ``agent`` and jits the three update steps and the train step."""
    return Steps(
        init=jax.jit(functools.partial(init_state, agent)),
        world_model_update=jax.jit(functools.partial(world_model_update, agent)),
        actor_update=jax.jit(functools.partial(actor_update, agent)),
        critic_update=jax.jit(functools.partial(critic_update, agent)),
        train_step=jax.jit(functools.partial(train_step, agent), static_argnums=(2,)),
    )


__all__ = [
    "Agent",
    "Steps",
    "actor_update",
    "critic_update",
    "init_state",
    "make_agent",
    "make_optimizer",
    "make_steps",
    "train_step",
    "world_model_loss",
    "world_model_update",
]
