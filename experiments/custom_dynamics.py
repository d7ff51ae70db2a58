"""A gated (GRU-style) dynamics model, registered as ``"gated"`` when this module is imported.

The worked example of docs/custom_dynamics.md.  Train with it from the repository root::

    python -m wm_jax.train --config.imports=experiments.custom_dynamics \\
        --config.model.dynamics=gated --workdir=runs/gated

The residual MLP of ``wm_jax.networks.dynamics`` predicts a change to every state dimension at
every step; this model instead predicts, per dimension, *how much* of the state is replaced
(an update gate ``z`` in ``[0, 1]``, as in a GRU) and by what:
``μ = (1 - z) ⊙ s + z ⊙ candidate``.  Dimensions that describe slowly changing quantities can
then be carried forward by closing their gate instead of being re-predicted each step.
"""

from __future__ import annotations

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp

from wm_jax.networks import register_dynamics
from wm_jax.types import SequenceContext


class GatedDynamics(nn.Module):
    """``(state [..., S], action [..., A], context) -> distrax.Normal`` over the next state,
    batch shape ``[..., S]``."""

    state_dim: int
    hidden_dim: int = 256
    min_std: float = 0.05
    max_std: float = 2.0

    @nn.compact
    def __call__(
        self, state: jax.Array, action: jax.Array, context: SequenceContext | None = None
    ) -> distrax.Normal:
        # A single-step model: the sequence context (given only in sequence mode, never during
        # imagination) is not needed.
        del context
        x = nn.Dense(self.hidden_dim, name="trunk")(jnp.concatenate([state, action], -1))
        x = nn.elu(nn.LayerNorm(name="trunk_norm")(x))
        # Bias +1: gates start mostly open (sigmoid(1) ≈ 0.73), so early predictions follow the
        # candidate and the dynamics loss trains it from the first update.
        gate = jax.nn.sigmoid(nn.Dense(self.state_dim, name="gate")(x) + 1.0)
        candidate = nn.Dense(self.state_dim, name="candidate")(x)
        mean = (1.0 - gate) * state + gate * candidate
        raw_std = nn.Dense(self.state_dim, name="std")(x)
        std = self.min_std + (self.max_std - self.min_std) * jax.nn.sigmoid(raw_std + 2.0)
        return distrax.Normal(mean, std)


# The builder receives config.model and the environment spec; it returns an unbound module.
register_dynamics("gated", lambda m, spec: GatedDynamics(m.state_dim, m.hidden_dim))
