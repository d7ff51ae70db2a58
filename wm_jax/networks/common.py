"""Building blocks shared by every component."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS = {
    "elu": nn.elu,
    "silu": nn.silu,
    "relu": nn.relu,
    "tanh": jnp.tanh,
    "gelu": nn.gelu,
}


def get_activation(name: str):
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}"
        ) from None


class MLP(nn.Module):
    """Dense layers with an activation (and optional LayerNorm) between them.

    ``output_dim=None`` ends on a hidden layer (with its activation); otherwise a final linear
    layer of ``output_dim`` units follows, initialised with ``output_scale`` so heads start
    near zero (small initial predictions keep early losses and imagined returns tame).
    """

    hidden: Sequence[int]
    output_dim: int | None = None
    activation: str = "elu"
    layer_norm: bool = True
    output_scale: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = get_activation(self.activation)
        for width in self.hidden:
            x = nn.Dense(width)(x)
            if self.layer_norm:
                x = nn.LayerNorm()(x)
            x = act(x)
        if self.output_dim is not None:
            init = nn.initializers.variance_scaling(self.output_scale, "fan_avg", "uniform")
            x = nn.Dense(self.output_dim, kernel_init=init)(x)
        return x
