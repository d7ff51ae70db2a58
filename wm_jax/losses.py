"""One pure function per loss of the seeds, each returning ``(loss, metrics)``.

World-model phase: Loss 1 dynamics, Loss 2 reward, Loss 3 continue, Loss 4 decoder, Loss 5
multi-step, plus the representation learner's own loss.  Policy phase: Loss 6 actor (with
entropy), Loss 7 critic, and the TD-error monitor.

Every reduction is a masked mean (``mask`` = 1 for real data, 0 for padding), so padded entries
contribute neither loss nor gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import chex
import distrax
import jax
import jax.numpy as jnp

from wm_jax.context_window import ContextWindow, clear
from wm_jax.returns import symlog, two_hot
from wm_jax.types import Imagined, Metrics

sg = jax.lax.stop_gradient


def masked_mean(x: chex.Array, mask: chex.Array) -> chex.Array:
    """``Σ x·m / max(Σ m, 1)``; ``mask`` broadcasts against ``x`` from the left."""
    mask = jnp.broadcast_to(mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim)), x.shape)
    return jnp.sum(x * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _member_mean(x: chex.Array, batch_rank: int) -> chex.Array:
    """Averages a leading ensemble axis away if there is one."""
    return x.mean(0) if x.ndim > batch_rank else x


def dynamics_loss(
    next_state_dist: distrax.Normal,
    next_states: chex.Array,
    mask: chex.Array,
    kind: str = "mse",
) -> tuple[chex.Array, Metrics]:
    """Loss 1 — how well ``f(s, a)`` predicts ``s'``::

        mse: L = mean_b mean_d (μ_d(s, a) - s'_d)²
        nll: L = mean_b -log N(s' | μ(s, a), σ(s, a))  (summed over state dimensions)

    ``next_state_dist`` has batch shape ``[B, S]`` or, for an ensemble, ``[K, B, S]``; every
    member is trained on every transition.  Metrics: ``dynamics_loss``, ``dynamics_mse``,
    ``dynamics_nll``, ``dynamics_std``.
    """
    chex.assert_rank(next_states, 2)
    mean = next_state_dist.loc
    if mean.shape[-2:] != next_states.shape:
        raise ValueError(
            f"dynamics prediction {mean.shape} does not match target states {next_states.shape}"
        )
    sq = jnp.mean((mean - next_states) ** 2, -1)  # [(K,) B]
    nll = -jnp.sum(next_state_dist.log_prob(next_states), -1)
    mse = masked_mean(_member_mean(sq, 1), mask)
    nll = masked_mean(_member_mean(nll, 1), mask)
    if kind == "mse":
        loss = mse
    elif kind == "nll":
        loss = nll
    else:
        raise ValueError(f"unknown dynamics loss {kind!r}; choose 'mse' or 'nll'")
    return loss, {
        "dynamics_loss": loss,
        "dynamics_mse": mse,
        "dynamics_nll": nll,
        "dynamics_std": masked_mean(_member_mean(jnp.mean(next_state_dist.scale, -1), 1), mask),
    }


def categorical_kl(p_logits: jax.Array, q_logits: jax.Array) -> jax.Array:
    """``KL(p || q)`` of categoricals given as log-probabilities ``[..., K, C]``, summed over the
    ``K`` latents: ``Σ_k Σ_c p_kc (log p_kc - log q_kc)``."""
    return jnp.sum(jnp.exp(p_logits) * (p_logits - q_logits), axis=(-2, -1))


def latent_kl_loss(
    post_logits: chex.Array,
    prior_logits: chex.Array,
    mask: chex.Array,
    balance: float = 0.8,
    free_bits: float = 1.0,
) -> tuple[chex.Array, Metrics]:
    """Loss 1 for the RSSM — the prior ``p(z | h)`` must predict the posterior ``q(z | h, e)``::

        KL_dyn = KL(sg(q) || p),   KL_rep = KL(q || sg(p))      (summed over the K latents)
        L = α·mean max(KL_dyn, b) + (1 - α)·mean max(KL_rep, b)

    The balance ``α`` trains the prior toward the posterior faster than it regularises the
    posterior toward the prior (DreamerV2); free bits ``b`` stop both once the KL is below ``b``
    nats, so the representation is not squeezed into carrying nothing (DreamerV3).  Inputs are
    log-probabilities ``[B, T, K, C]``; ``mask`` ``[B, T]``.  Metrics: ``dynamics_loss`` (this
    loss: the seeds' name for how well the dynamics predicts the next state), ``kl_dynamics``,
    ``kl_representation`` (the same KL, before clipping), ``prior_entropy``,
    ``posterior_entropy``.
    """
    chex.assert_equal_shape([post_logits, prior_logits])
    chex.assert_rank(mask, 2)
    kl_dyn = categorical_kl(sg(post_logits), prior_logits)  # [B, T]
    kl_rep = categorical_kl(post_logits, sg(prior_logits))
    loss = balance * masked_mean(jnp.maximum(kl_dyn, free_bits), mask) + (
        1.0 - balance
    ) * masked_mean(jnp.maximum(kl_rep, free_bits), mask)

    def entropy(logits):
        return masked_mean(-jnp.sum(jnp.exp(logits) * logits, (-2, -1)), mask)

    return loss, {
        "dynamics_loss": loss,
        "kl_dynamics": masked_mean(kl_dyn, mask),
        "kl_representation": masked_mean(kl_rep, mask),
        "prior_entropy": sg(entropy(prior_logits)),
        "posterior_entropy": sg(entropy(post_logits)),
    }


def reward_loss(
    reward_dist: distrax.Normal, rewards: chex.Array, mask: chex.Array
) -> tuple[chex.Array, Metrics]:
    """Loss 2 — Gaussian negative log-likelihood of the observed reward::

        L = mean_b [ ½·log(2πσ²) + (r - μ)² / (2σ²) ]

    Metrics: ``reward_loss`` (= ``reward_nll``), ``reward_mae`` = mean |μ - r|, ``reward_std``,
    ``reward_correlation`` = Pearson corr(μ, r) over the batch (NaN when the batch's rewards are
    constant, e.g. CartPole's, where correlation is undefined).
    """
    chex.assert_equal_shape([reward_dist.loc, rewards])
    nll = masked_mean(-reward_dist.log_prob(rewards), mask)
    pred = sg(reward_dist.loc)
    dp = pred - masked_mean(pred, mask)
    dr = rewards - masked_mean(rewards, mask)
    var_r = masked_mean(dr**2, mask)
    corr = masked_mean(dp * dr, mask) / jnp.sqrt(masked_mean(dp**2, mask) * var_r + 1e-12)
    return nll, {
        "reward_loss": nll,
        "reward_nll": nll,
        "reward_mae": masked_mean(jnp.abs(reward_dist.loc - rewards), mask),
        "reward_std": masked_mean(reward_dist.scale, mask),
        "reward_correlation": jnp.where(var_r > 1e-10, corr, jnp.nan),
    }


def continue_loss(
    continue_dist: distrax.Bernoulli,
    continues: chex.Array,
    mask: chex.Array,
    termination_weight: float = 1.0,
) -> tuple[chex.Array, Metrics]:
    """Loss 3 — binary cross-entropy of the continue flag ``c = 1 - terminated``::

        L = -mean_b w_b·[ c·log p + (1 - c)·log(1 - p) ],   p = sigmoid(logit(s'))
        w_b = termination_weight if c = 0 else 1

    ``termination_weight`` = 1 is the seeds' loss; > 1 counters the class imbalance the seeds warn
    about (terminations are rare, and rarer still as the policy improves).

    Metrics: ``continue_loss``, ``continue_accuracy`` (threshold 0.5), and the counts of the
    *termination* class (``continue_true_terminations``, ``continue_predicted_terminations``,
    ``continue_correct_terminations``) from which precision and recall are aggregated: the seeds
    warn that accuracy alone hides a predictor that always says "continue".
    """
    chex.assert_equal_shape([continue_dist.logits, continues])
    weights = jnp.where(continues > 0.5, 1.0, termination_weight)
    bce = masked_mean(-continue_dist.log_prob(continues) * weights, mask)
    predicted_continue = continue_dist.logits > 0
    actual_continue = continues > 0.5
    correct = (predicted_continue == actual_continue).astype(jnp.float32)
    pred_term = (~predicted_continue).astype(jnp.float32) * mask
    true_term = (~actual_continue).astype(jnp.float32) * mask
    return bce, {
        "continue_loss": bce,
        "continue_accuracy": masked_mean(correct, mask),
        "continue_true_terminations": jnp.sum(true_term),
        "continue_predicted_terminations": jnp.sum(pred_term),
        "continue_correct_terminations": jnp.sum(true_term * pred_term),
    }


def decoder_loss(
    reconstruction: chex.Array, target: chex.Array, mask: chex.Array
) -> tuple[chex.Array, Metrics]:
    """Loss 4 — observation reconstruction from states::

        L = mean_b mean_pixels (decoder(s) - o)²

    ``target`` is the observation as the encoder sees it (images scaled to [-0.5, 0.5]).
    Metrics: ``decoder_loss``.
    """
    chex.assert_equal_shape([reconstruction, target])
    per_item = jnp.mean((reconstruction - target).reshape(mask.shape + (-1,)) ** 2, -1)
    loss = masked_mean(per_item, mask)
    return loss, {"decoder_loss": loss}


def representation_loss(
    features: chex.Array,
    recon_features: chex.Array,
    mask: chex.Array,
    posterior_mean: chex.Array | None = None,
    posterior_std: chex.Array | None = None,
    vae_beta: float = 1.0,
) -> tuple[chex.Array, Metrics]:
    """The representation learner's own loss::

        autoencoder: L = mean (decode(encode(f)) - sg(f))²
        VAE:         L = mean (decode(s) - sg(f))² + β·KL(N(μ, σ) || N(0, I)),  s ~ N(μ, σ)

    The feature target is held fixed (``stop_gradient``) so the encoder cannot satisfy the
    bottleneck by shrinking its features.  Metrics: ``representation_loss``,
    ``representation_recon``, ``representation_kl`` (VAE only).
    """
    chex.assert_equal_shape([features, recon_features])
    recon = masked_mean(jnp.mean((recon_features - sg(features)) ** 2, -1), mask)
    metrics = {"representation_recon": recon}
    loss = recon
    if posterior_mean is not None:
        kl = distrax.Normal(posterior_mean, posterior_std).kl_divergence(
            distrax.Normal(jnp.zeros_like(posterior_mean), jnp.ones_like(posterior_std))
        )
        kl = masked_mean(jnp.sum(kl, -1), mask)
        metrics["representation_kl"] = kl
        loss = loss + vae_beta * kl
    metrics["representation_loss"] = loss
    return loss, metrics


def open_loop_rollout(
    predict_mean: Callable[..., chex.Array],
    states: chex.Array,
    actions: chex.Array,
    continues: chex.Array,
    window: ContextWindow | None = None,
) -> chex.Array:
    """Rolls the dynamics open-loop along real sequences: ``ŝ_0 = s_0``, ``ŝ_{t+1} = f(ŝ_t, a_t)``;
    after a termination (``c_t = 0``) the rollout restarts from the true ``s_{t+1}``.

    Given a ``window`` (a dynamics model that reads a context; usually empty) the rollout carries
    it: ``ŝ_{t+1} = f((ŝ_{t-K+1}, a_{t-K+1}) … (ŝ_t, a_t))`` over its own predictions; a
    termination empties it.

    Args:
      predict_mean: ``(state [B, S], action [B, A]) -> next-state mean [B, S]``, or with a
        ``window``, ``(window, state, action) -> (next-state mean [B, S], window)``.
      states: ``[B, T + 1, S]`` true states; actions ``[B, T, A]``; continues ``[B, T]``.

    Returns:
      ``[B, T, S]`` predictions ``ŝ_1 … ŝ_T``.
    """
    chex.assert_rank([states, actions, continues], [3, 3, 2])
    b, t = continues.shape
    chex.assert_shape(states, (b, t + 1, states.shape[-1]))

    def step(current, inputs):
        action, target, cont = inputs
        predicted = predict_mean(current, action)
        # Keep rolling our own prediction while the episode goes on; reset to the truth after.
        return jnp.where(cont[:, None] > 0.5, predicted, target), predicted

    def window_step(carry, inputs):
        current, window = carry
        action, target, cont = inputs
        predicted, window = predict_mean(window, current, action)
        alive = cont > 0.5
        current = jnp.where(alive[:, None], predicted, target)
        return (current, clear(window, ~alive)), predicted

    swap = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731  time-major for the scan
    inputs = (swap(actions), swap(states[:, 1:]), swap(continues))
    if window is not None:
        _, predictions = jax.lax.scan(window_step, (states[:, 0], window), inputs)
    else:
        _, predictions = jax.lax.scan(step, states[:, 0], inputs)
    return swap(predictions)


def multi_step_loss(
    predict_mean: Callable[..., chex.Array],
    states: chex.Array,
    actions: chex.Array,
    continues: chex.Array,
    mask: chex.Array,
    window: ContextWindow | None = None,
) -> tuple[chex.Array, Metrics]:
    """Loss 5 — open-loop prediction error along real sequences::

        ŝ_0 = s_0,   ŝ_{t+1} = f(ŝ_t, a_t)
        L = Σ_t w_t·mean_d (ŝ_{t+1} - s_{t+1})² / Σ_t w_t,   w_t = m_t·Π_{k<t} c_k·m_k

    After a termination (``c_t = 0``) the rollout restarts from the true state (see
    :func:`open_loop_rollout`) and the weights of every later step are zero, so errors never
    compound across an episode end and nothing after it is penalised.

    Args:
      predict_mean: ``(state [B, S], action [B, A]) -> next-state mean [B, S]``, or a window
        predictor when a ``window`` is given (see :func:`open_loop_rollout`).
      states: ``[B, T + 1, S]`` encoded real states (the targets; held fixed by the caller if
        wanted).
      actions: ``[B, T, A]``; continues, mask: ``[B, T]``.
      window: for a context-reading model, the (empty) window the rollout carries.

    Metrics: ``multi_step_loss`` and ``multi_step_final_mse`` (error at each window's last
    weighted step: where its episode ends or its data stops, if before the window's end).
    """
    chex.assert_rank(mask, 2)
    predictions = open_loop_rollout(predict_mean, states, actions, continues, window)
    errors = jnp.mean((predictions - states[:, 1:]) ** 2, -1)  # [B, T]
    alive_before = jnp.cumprod(
        jnp.concatenate([jnp.ones_like(mask[:, :1]), (continues * mask)[:, :-1]], 1), 1
    )
    weights = alive_before * mask
    loss = jnp.sum(errors * weights) / jnp.maximum(jnp.sum(weights), 1.0)
    alive = weights > 0  # a prefix of each window
    final = alive & ~jnp.concatenate([alive[:, 1:], jnp.zeros_like(alive[:, :1])], 1)
    return loss, {
        "multi_step_loss": loss,
        "multi_step_final_mse": masked_mean(errors, final.astype(errors.dtype)),
    }


def actor_loss(
    imagined: Imagined,
    returns: chex.Array,
    weights: chex.Array,
    entropy_coef: float,
    gradient: str = "dynamics",
    baseline: chex.Array | None = None,
    return_scale: chex.Array | float = 1.0,
    center: bool = False,
) -> tuple[chex.Array, Metrics]:
    """Loss 6 — maximise imagined λ-returns, with an entropy bonus::

        dynamics:  L = -mean_{t,b} w·R_t / S − α·mean_{t,b} w·H[π(·|s_t)]
        reinforce: L = -mean_{t,b} w·log π(a_t|s_t)·sg(A_t) / S − α·mean w·H,
                   A_t = R_t − V(s_t)   (center: A_t − mean_{t,b} w·A_t)

    With ``gradient="dynamics"`` the gradient of ``R_t`` reaches the policy through the
    differentiable world model (reparameterised or straight-through actions); REINFORCE treats
    the model as a black box and uses the value as baseline.  ``weights`` ``[H, B]`` mask padded
    start states (the seeds' version is a plain mean: all ones).  ``return_scale`` ``S`` is 1 in
    the seeds' version; :func:`wm_jax.returns.return_scale` makes α independent of the reward
    scale (DreamerV3's return normalisation).  ``center`` subtracts the batch's mean advantage:
    a critic that lags its targets by a common offset then adds no noise of its own to the
    REINFORCE estimate (PPO's advantage centring).

    Metrics: ``actor_loss``, ``mean_imagined_return``, ``entropy``, ``imagined_reward_mean``,
    ``imagined_continue_mean``.
    """
    chex.assert_equal_shape([returns, weights, imagined.entropies])
    entropy = masked_mean(imagined.entropies, weights)
    scale = sg(return_scale)
    if gradient == "dynamics":
        objective = masked_mean(returns / scale, weights)
    elif gradient == "reinforce":
        advantage = sg(returns - baseline)
        if center:
            advantage = advantage - masked_mean(advantage, weights)
        advantage = advantage / scale
        objective = masked_mean(imagined.log_probs * advantage, weights)
    else:
        raise ValueError(f"unknown actor gradient {gradient!r}; choose 'dynamics' or 'reinforce'")
    loss = -objective - entropy_coef * entropy
    return loss, {
        "actor_loss": loss,
        "mean_imagined_return": masked_mean(sg(returns), weights),
        "entropy": sg(entropy),
        "imagined_reward_mean": masked_mean(sg(imagined.rewards), weights),
        "imagined_continue_mean": masked_mean(sg(imagined.continues), weights),
        "return_scale": jnp.asarray(scale, jnp.float32),
    }


def critic_loss(
    values: chex.Array,
    targets: chex.Array,
    weights: chex.Array,
    logits: chex.Array | None = None,
    bin_centers: chex.Array | None = None,
) -> tuple[chex.Array, Metrics]:
    """Loss 7 — regress ``V(s)`` on held-fixed return targets::

        L = mean w·(V(s) − sg(R))²                                  (scalar critic, the seeds)
        L = mean w·(−Σ_k twohot(symlog(sg(R)))_k · log softmax(logits)_k)   (``logits`` given)

    The second form is DreamerV3's distributional critic (``values`` are then its read-out).

    Metrics: ``critic_loss``, ``critic_value_mean``, ``critic_value_std``.
    """
    chex.assert_equal_shape([values, targets, weights])
    if logits is None:
        loss = masked_mean((values - sg(targets)) ** 2, weights)
    else:
        chex.assert_shape(logits, (*values.shape, bin_centers.shape[0]))
        target_probs = two_hot(symlog(sg(targets)), bin_centers)
        nll = -jnp.sum(target_probs * jax.nn.log_softmax(logits, -1), -1)
        loss = masked_mean(nll, weights)
    mean = masked_mean(values, weights)
    std = jnp.sqrt(masked_mean((values - mean) ** 2, weights))
    return loss, {"critic_loss": loss, "critic_value_mean": sg(mean), "critic_value_std": sg(std)}


def td_error_monitor(values: chex.Array, targets: chex.Array, weights: chex.Array) -> Metrics:
    """The TD-error monitor — tracked, never optimised::

        δ = V(s) − R,   explained variance = 1 − Var[δ] / Var[R]

    Metrics: ``critic_td_error_mean``, ``critic_td_error_abs_mean``, ``critic_explained_variance``.
    """
    values, targets = sg(values), sg(targets)
    td = values - targets
    td_mean = masked_mean(td, weights)
    target_mean = masked_mean(targets, weights)
    var_td = masked_mean((td - td_mean) ** 2, weights)
    var_target = masked_mean((targets - target_mean) ** 2, weights)
    return {
        "critic_td_error_mean": td_mean,
        "critic_td_error_abs_mean": masked_mean(jnp.abs(td), weights),
        "critic_explained_variance": 1.0 - var_td / jnp.maximum(var_target, 1e-8),
    }
