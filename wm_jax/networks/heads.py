"""Heads that read states: reward, continue, policy and value (seeds, "Interfaces 3-6")."""

from __future__ import annotations

from collections.abc import Sequence

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp

from wm_jax.networks.common import MLP, Dense
from wm_jax.returns import symexp


class RewardPredictor(nn.Module):
    """``p(r | s) = N(μ(s), σ(s))`` — the seeds' Gaussian reward predictor (Loss 2).

    ``fixed_std`` (a float) replaces the learned ``σ(s)`` with a constant, so Loss 2 is a scaled
    squared error (DreamerV1/2).  Sparse rewards want it: on the many zero-reward steps a learned
    σ shrinks to ``min_std`` and the rare ±1 then gives the mean a gradient ``(r - μ)/σ²`` of
    ~10⁴, which dominates the world model's clipped global gradient norm (BUILD_NOTES.md, Catch).
    """

    hidden: Sequence[int] = (256, 256)
    activation: str = "elu"
    layer_norm: bool = True
    min_std: float = 0.01
    max_std: float = 5.0
    fixed_std: float | None = None

    @nn.compact
    def __call__(self, state: jax.Array) -> distrax.Normal:
        learned = self.fixed_std is None
        out = MLP(self.hidden, 2 if learned else 1, self.activation, self.layer_norm,
                  output_scale=0.1)(state)  # fmt: skip
        mean = out[..., 0]
        if not learned:
            return distrax.Normal(mean, jnp.full_like(mean, self.fixed_std))
        std = self.min_std + (self.max_std - self.min_std) * jax.nn.sigmoid(out[..., 1])
        return distrax.Normal(mean, std)


class ContinuePredictor(nn.Module):
    """``p(c = 1 | s) = sigmoid(logit(s))`` — a Bernoulli over "the episode goes on" (Loss 3).

    The final bias starts at +3 (p ≈ 0.95): most steps continue, and an untrained predictor that
    says 0.5 would halve every imagined return from the first update on.
    """

    hidden: Sequence[int] = (256, 256)
    activation: str = "elu"
    layer_norm: bool = True
    initial_logit: float = 3.0

    @nn.compact
    def __call__(self, state: jax.Array) -> distrax.Bernoulli:
        x = MLP(self.hidden, activation=self.activation, layer_norm=self.layer_norm)(state)
        logit = Dense(
            1,
            kernel_init=nn.initializers.variance_scaling(0.1, "fan_avg", "uniform"),
            bias_init=nn.initializers.constant(self.initial_logit),
        )(x)[..., 0]
        return distrax.Bernoulli(logits=logit)


class PolicyHead(nn.Module):
    """``π(a | s)``: a categorical over ``action_dim`` choices with straight-through one-hot samples
    (discrete), or a tanh-squashed diagonal Normal in ``[-1, 1]^A`` (continuous)."""

    action_dim: int
    discrete: bool
    hidden: Sequence[int] = (256, 256)
    activation: str = "elu"
    layer_norm: bool = True
    min_std: float = 0.1
    max_std: float = 1.0
    unimix: float = 0.0  # mix this much of a uniform distribution into the categorical

    @nn.compact
    def __call__(self, state: jax.Array) -> distrax.Distribution:
        if self.discrete:
            logits = MLP(
                self.hidden, self.action_dim, self.activation, self.layer_norm, output_scale=0.1
            )(state)
            if self.unimix > 0:
                probs = jax.nn.softmax(logits, -1)
                probs = (1 - self.unimix) * probs + self.unimix / self.action_dim
                logits = jnp.log(probs)
            return distrax.straight_through_wrapper(distrax.OneHotCategorical)(logits=logits)
        out = MLP(
            self.hidden, 2 * self.action_dim, self.activation, self.layer_norm, output_scale=0.1
        )(state)
        mean, raw = jnp.split(out, 2, axis=-1)
        std = self.min_std + (self.max_std - self.min_std) * jax.nn.sigmoid(raw + 2.0)
        base = distrax.MultivariateNormalDiag(mean, std)
        return distrax.Transformed(base, distrax.Block(distrax.Tanh(), 1))


class ValueFunction(nn.Module):
    """``V(s)``: one scalar per state (Loss 7).

    ``bins = 0`` regresses the value directly (the seeds).  ``bins > 0`` makes it DreamerV3's
    distributional critic: logits over ``bins`` equally spaced points of symlog space, read out
    as ``V = symexp(Σ_k softmax(logits)_k · b_k)`` and trained by cross-entropy against the
    two-hot encoding of ``symlog(target)`` (:func:`wm_jax.losses.critic_loss`).  Its gradients do
    not grow with the size of the returns, which keeps a critic of 0–500 returns trainable.
    """

    hidden: Sequence[int] = (256, 256)
    activation: str = "elu"
    layer_norm: bool = True
    bins: int = 0
    bin_range: float = 20.0  # symlog(±20) ≈ ±4.9e8: far beyond any return

    def setup(self):
        # A zero-initialised output starts every value at exactly 0 (uniform logits for bins).
        self.net = MLP(
            self.hidden, max(self.bins, 1), self.activation, self.layer_norm, output_scale=0.0
        )

    @property
    def bin_centers(self) -> jax.Array:
        return jnp.linspace(-self.bin_range, self.bin_range, self.bins)

    def logits(self, state: jax.Array) -> jax.Array:
        """``[..., bins]`` logits of the symlog-space value distribution (``bins > 0`` only)."""
        if self.bins <= 0:
            raise ValueError("ValueFunction.logits needs bins > 0 (config.critic.bins)")
        return self.net(state)

    def readout(self, logits: jax.Array) -> jax.Array:
        """The value ``symexp(E[b])`` of ``[..., bins]`` logits (needs no parameters)."""
        return symexp(jnp.sum(jax.nn.softmax(logits, -1) * self.bin_centers, -1))

    def __call__(self, state: jax.Array) -> jax.Array:
        out = self.net(state)
        return out[..., 0] if self.bins <= 0 else self.readout(out)
