"""Representation learners: features -> compact states, with ``encode``/``decode`` (seeds,
"Decision 2: why a separate representation learner").

Each learner returns a :class:`RepresentationOutput`; its own loss (feature reconstruction, plus a
KL term for the VAE) lives in :func:`wm_jax.losses.representation_loss`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from wm_jax.networks.common import MLP


class RepresentationOutput(NamedTuple):
    states: jax.Array  # [..., S]
    recon_features: jax.Array  # [..., F]   decode(states)
    mean: jax.Array | None = None  # VAE posterior mean  [..., S]
    std: jax.Array | None = None  # VAE posterior std   [..., S]


def _normalize_states(x: jax.Array, kind: str) -> jax.Array:
    # Unit-scale states keep the dynamics MSE comparable across training and rule out the
    # trivial "shrink every state to zero" solution of a latent-space prediction loss.
    if kind == "layernorm":
        mean = x.mean(-1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(x.var(-1, keepdims=True) + 1e-6)
    if kind == "tanh":
        return jnp.tanh(x)
    if kind == "none":
        return x
    raise ValueError(f"unknown state_norm {kind!r}; choose 'layernorm', 'tanh' or 'none'")


class AutoencoderRepresentation(nn.Module):
    """The seeds' MLP autoencoder: a deterministic bottleneck ``features -> states -> features``."""

    state_dim: int = 64
    feature_dim: int = 256
    hidden: Sequence[int] = (256,)
    activation: str = "elu"
    layer_norm: bool = True
    state_norm: str = "layernorm"

    def setup(self):
        self.encoder_mlp = MLP(self.hidden, self.state_dim, self.activation, self.layer_norm)
        self.decoder_mlp = MLP(self.hidden, self.feature_dim, self.activation, self.layer_norm)

    def encode(self, features: jax.Array, sample: bool = False) -> jax.Array:
        del sample  # deterministic
        return _normalize_states(self.encoder_mlp(features), self.state_norm)

    def decode(self, states: jax.Array) -> jax.Array:
        return self.decoder_mlp(states)

    def __call__(self, features: jax.Array, sample: bool = False) -> RepresentationOutput:
        states = self.encode(features, sample)
        return RepresentationOutput(states, self.decode(states))


class VAERepresentation(nn.Module):
    """A variational bottleneck: ``q(s|f) = N(μ(f), σ(f))``, states sampled with the
    reparameterisation trick during training and set to ``μ`` when acting.
    Its loss adds ``β·KL(q(s|f) || N(0, I))`` to the feature reconstruction.
    """

    state_dim: int = 64
    feature_dim: int = 256
    hidden: Sequence[int] = (256,)
    activation: str = "elu"
    layer_norm: bool = True
    min_std: float = 1e-3

    def setup(self):
        self.encoder_mlp = MLP(self.hidden, 2 * self.state_dim, self.activation, self.layer_norm)
        self.decoder_mlp = MLP(self.hidden, self.feature_dim, self.activation, self.layer_norm)

    def posterior(self, features: jax.Array) -> tuple[jax.Array, jax.Array]:
        mean, raw_std = jnp.split(self.encoder_mlp(features), 2, axis=-1)
        return mean, jax.nn.softplus(raw_std) + self.min_std

    def encode(self, features: jax.Array, sample: bool = False) -> jax.Array:
        mean, std = self.posterior(features)
        if not sample:
            return mean
        return mean + std * jax.random.normal(self.make_rng("sample"), mean.shape)

    def decode(self, states: jax.Array) -> jax.Array:
        return self.decoder_mlp(states)

    def __call__(self, features: jax.Array, sample: bool = False) -> RepresentationOutput:
        mean, std = self.posterior(features)
        states = mean
        if sample:
            states = mean + std * jax.random.normal(self.make_rng("sample"), mean.shape)
        return RepresentationOutput(states, self.decode(states), mean, std)
