"""Heads that read states: reward, continue, policy and value (seeds, "Interfaces 3-6")."""

from __future__ import annotations

from collections.abc import Sequence

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp

from wm_jax.networks.common import MLP


class RewardPredictor(nn.Module):
    """``p(r | s) = N(μ(s), σ(s))`` — the seeds' Gaussian reward predictor (Loss 2)."""

    hidden: Sequence[int] = (256, 256)
    activation: str = "elu"
    layer_norm: bool = True
    min_std: float = 0.01
    max_std: float = 5.0

    @nn.compact
    def __call__(self, state: jax.Array) -> distrax.Normal:
        out = MLP(self.hidden, 2, self.activation, self.layer_norm, output_scale=0.1)(state)
        mean, raw = out[..., 0], out[..., 1]
        std = self.min_std + (self.max_std - self.min_std) * jax.nn.sigmoid(raw)
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
        logit = nn.Dense(
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
    """``V(s)``: one scalar per state (Loss 7)."""

    hidden: Sequence[int] = (256, 256)
    activation: str = "elu"
    layer_norm: bool = True

    @nn.compact
    def __call__(self, state: jax.Array) -> jax.Array:
        return MLP(self.hidden, 1, self.activation, self.layer_norm, output_scale=0.0)(state)[
            ..., 0
        ]
