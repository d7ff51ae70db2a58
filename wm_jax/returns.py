"""λ-returns (seeds, "Decision 4") and one-step TD targets.  Time-major, rlax-style."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp


def lambda_returns(
    rewards_t: chex.Array,
    continues_t: chex.Array,
    values_tp1: chex.Array,
    gamma: float,
    lambda_: float,
    mask: chex.Array | None = None,
) -> chex.Array:
    """TD(λ) returns, computed backwards with ``lax.scan``::

        R_t = r_t + γ·c_t·((1 - λ)·V_{t+1} + λ·R_{t+1}),      R_H = V_H

    With a ``mask`` (real windows: 1 for real steps, 0 for padding) the recursion stops at the
    last real step of each run of real steps and bootstraps there, whatever padding follows::

        R_t = r_t + γ·c_t·V_{t+1}            where step t + 1 is padding (m_{t+1} = 0)

    so the returns of real steps equal those of the unpadded segment: padding that repeats the
    last real step, or holds the next episode's data, is never read.

    Args:
      rewards_t: ``[H, ...]`` reward of transition ``t``.
      continues_t: ``[H, ...]`` continue flag (or probability) of the state that transition ``t``
        lands in.
      values_tp1: ``[H, ...]`` ``V(s_{t+1})``; its last entry is the bootstrap ``V_H``.
      gamma: discount γ.
      lambda_: λ; 0 gives one-step TD targets, 1 the discounted Monte Carlo return bootstrapped
        with ``V_H``.
      mask: optional ``[H, ...]`` 1 for real steps, 0 for padding.  Entries of padded steps are
        finite but meaningless (weigh them by the mask).

    Returns:
      ``[H, ...]`` returns ``R_0 … R_{H-1}``.
    """
    chex.assert_equal_shape([rewards_t, continues_t, values_tp1])
    chex.assert_rank(rewards_t, {1, 2, 3})
    if mask is not None:
        chex.assert_equal_shape([rewards_t, mask])
        # Step t may read R_{t+1} only if step t + 1 is real; the last step bootstraps anyway.
        next_real = jnp.concatenate([mask[1:] > 0, jnp.zeros_like(mask[:1], bool)], 0)

        def masked_step(next_return, inputs):
            r, c, v, real = inputs
            ahead = jnp.where(real, (1.0 - lambda_) * v + lambda_ * next_return, v)
            ret = r + gamma * c * ahead
            return ret, ret

        _, returns = jax.lax.scan(
            masked_step,
            values_tp1[-1],
            (rewards_t, continues_t, values_tp1, next_real),
            reverse=True,
        )
        return returns

    def step(next_return, inputs):
        r, c, v = inputs
        ret = r + gamma * c * ((1.0 - lambda_) * v + lambda_ * next_return)
        return ret, ret

    _, returns = jax.lax.scan(
        step, values_tp1[-1], (rewards_t, continues_t, values_tp1), reverse=True
    )
    return returns


def td_targets(
    rewards: chex.Array, continues: chex.Array, next_values: chex.Array, gamma: float
) -> chex.Array:
    """One-step targets ``y = r + γ·c·V(s')`` for flat batches of real transitions."""
    chex.assert_equal_shape([rewards, continues, next_values])
    return rewards + gamma * continues * next_values


def discount_weights(continues_t: chex.Array, gamma: float) -> chex.Array:
    """``w_t = Π_{k<t} γ·c_k`` (``w_0 = 1``): how much imagined step ``t`` is still "alive"."""
    ones = jnp.ones_like(continues_t[:1])
    return jnp.cumprod(jnp.concatenate([ones, gamma * continues_t[:-1]], 0), axis=0)


def return_percentiles(
    returns: chex.Array, weights: chex.Array, low: float = 5.0, high: float = 95.0
) -> chex.Array:
    """``[P_low(R), P_high(R)]`` over the entries with non-zero weight (stop-gradient)."""
    valid = weights > 0
    masked = jnp.where(valid, returns, jnp.nan)
    bounds = jnp.stack([jnp.nanpercentile(masked, low), jnp.nanpercentile(masked, high)])
    return jax.lax.stop_gradient(jnp.nan_to_num(bounds))


def return_scale(
    returns: chex.Array, weights: chex.Array, low: float = 5.0, high: float = 95.0
) -> chex.Array:
    """``S = max(1, P_high(R) − P_low(R))`` over the entries with non-zero weight: DreamerV3's
    return normalisation, which divides returns by their spread only when it exceeds 1 so that
    small returns are not amplified into noise."""
    lo, hi = return_percentiles(returns, weights, low, high)
    return jnp.maximum(1.0, hi - lo)


def symlog(x: jax.Array) -> jax.Array:
    """``sign(x)·log(1 + |x|)``: compresses large magnitudes, identity-like near 0."""
    return jnp.sign(x) * jnp.log1p(jnp.abs(x))


def symexp(x: jax.Array) -> jax.Array:
    """The inverse of :func:`symlog`: ``sign(x)·(exp(|x|) − 1)``."""
    return jnp.sign(x) * jnp.expm1(jnp.abs(x))


def two_hot(x: jax.Array, centers: jax.Array) -> jax.Array:
    """``[..., K]`` weights on the two bin centers that bracket ``x`` (linear interpolation),
    summing to 1, with ``Σ_k w_k·b_k = x`` for ``x`` inside the bin range (clipped outside)."""
    x = jnp.clip(x, centers[0], centers[-1])
    hi = jnp.clip(jnp.searchsorted(centers, x, side="right"), 1, centers.shape[0] - 1)
    lo = hi - 1
    frac = (x - centers[lo]) / (centers[hi] - centers[lo])
    k = centers.shape[0]
    return jax.nn.one_hot(lo, k) * (1.0 - frac)[..., None] + jax.nn.one_hot(hi, k) * frac[..., None]
