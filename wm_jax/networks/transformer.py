"""Transformer dynamics (issue 5; the seeds' "Example: Transformer Dynamics"): causal
self-attention over the past (state, action) pairs predicts the next state.

For a stream of steps ``t = 0, 1, …``::

    x_t   = W_in [s_t, a_t]
    x     ← x + MHA(LN(x), mask, bias)  ;  x ← x + MLP(LN(x))          (× transformer_layers)
    μ_t   = s_t + W_μ LN(x_t)  ;  σ_t = σ_min + (σ_max − σ_min)·sigmoid(W_σ LN(x_t) + 2)
    p(s_{t+1} | s_{≤t}, a_{≤t}) = N(μ_t, σ_t)

    logit_h(i, j) = q_i·k_j / √d_h + B_h[i − j]        (learned relative position bias, K entries)
    mask(i, j)    = 0 ≤ i − j < K  ∧  (padding[j] ∨ i = j)

Position ``i`` attends to real steps ``j ≤ i`` at most ``K − 1 = context_length − 1`` steps back
(a banded causal mask; a query always sees itself, so a padded one never has an empty row).
Every position is a prediction, so one call on a replayed sequence gives the teacher-forced
next-state distribution at all ``T`` steps, ``[B, T, S]``; ``T`` may exceed ``K``.

Positions are *relative* (the bias ``B_h[d]``, one learned value per head and distance) rather
than learned absolute embeddings: a step's keys and values then never change once computed, so
imagination carries them in a KV cache (:mod:`wm_jax.context_window`) and computes one new token
per step instead of re-running the whole window, and the window can slide past ``K`` steps.
``step`` on the cache gives the same numbers as ``__call__`` on the whole sequence (tested).

Without a context, ``(state, action)`` is a window of one step (the seeds' single-step fallback):
batch shape ``[..., S]``.
"""

from __future__ import annotations

from typing import ClassVar

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp

from wm_jax.context_window import ContextWindow, empty_window, push, sequence_windows
from wm_jax.types import SequenceContext

_NEG = -1e30  # masked logits: exp underflows to exactly 0, finite for gradients


class TransformerBlock(nn.Module):
    """Pre-LayerNorm block, split so the KV cache can run one token at a time:
    ``qkv`` (LN then projections), ``attend`` (biased masked attention), ``finish``
    (residual, then ``x + MLP(LN(x))``)."""

    embed_dim: int
    num_heads: int
    context_length: int
    mlp_ratio: int = 2

    def setup(self):
        head_dim = self.embed_dim // self.num_heads
        self.norm_attn = nn.LayerNorm()
        self.qkv_proj = nn.DenseGeneral((3, self.num_heads, head_dim))
        self.out_proj = nn.DenseGeneral(self.embed_dim, axis=(-2, -1))
        self.rel_bias = self.param(
            "rel_bias", nn.initializers.zeros, (self.num_heads, self.context_length)
        )
        self.norm_mlp = nn.LayerNorm()
        self.mlp_in = nn.Dense(self.mlp_ratio * self.embed_dim)
        self.mlp_out = nn.Dense(self.embed_dim)

    def qkv(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``x [..., T, D]`` → q, k, v ``[..., T, H, D_h]``."""
        qkv = self.qkv_proj(self.norm_attn(x))
        return qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]

    def attend(self, q, k, v, distance: jax.Array, valid: jax.Array) -> jax.Array:
        """Queries ``[..., Tq, H, D_h]`` over keys/values ``[..., Tk, H, D_h]``; ``distance`` and
        ``valid`` ``[..., Tq, Tk]`` (broadcastable).  Returns ``[..., Tq, D]``."""
        logits = jnp.einsum("...qhd,...khd->...hqk", q, k) / jnp.sqrt(q.shape[-1])
        bias = self.rel_bias[:, jnp.clip(distance, 0, self.context_length - 1)]  # [H, ..., Tq, Tk]
        logits = logits + jnp.moveaxis(bias, 0, -3)
        logits = jnp.where(valid[..., None, :, :], logits, _NEG)
        weights = jax.nn.softmax(logits, axis=-1)
        return self.out_proj(jnp.einsum("...hqk,...khd->...qhd", weights, v))

    def finish(self, x: jax.Array, attended: jax.Array) -> jax.Array:
        x = x + attended
        return x + self.mlp_out(nn.gelu(self.mlp_in(self.norm_mlp(x))))


class TransformerDynamics(nn.Module):
    """Causal self-attention dynamics over a context (see the module docstring).

    ``__call__(state, action, context)``: with a :class:`SequenceContext`, ``state [..., T, S]``
    and ``action [..., T, A]`` are the steps to attend over (the context's own ``states`` and
    ``actions``: ``world_model_loss`` passes the same arrays) and the context supplies the causal
    and padding masks; the result has batch shape ``[..., T, S]``.  With ``context=None``:
    ``state [..., S]``, ``action [..., A]`` → ``[..., S]``, a window of one step.
    """

    # Imagination, the multi-step loss and the open-loop check carry a window for this model.
    uses_context: ClassVar[bool] = True
    num_members: ClassVar[int] = 1

    state_dim: int = 64
    embed_dim: int = 256
    num_layers: int = 2
    num_heads: int = 4
    context_length: int = 16
    residual: bool = True
    std_mode: str = "learned"  # "learned" | "fixed"
    fixed_std: float = 1.0
    min_std: float = 0.05
    max_std: float = 2.0

    def setup(self):
        if self.embed_dim % self.num_heads:
            raise ValueError(f"{self.num_heads} heads must divide embed_dim={self.embed_dim}")
        self.embed = nn.Dense(self.embed_dim)
        self.blocks = [
            TransformerBlock(self.embed_dim, self.num_heads, self.context_length)
            for _ in range(self.num_layers)
        ]
        self.out_norm = nn.LayerNorm()
        self.mean = nn.Dense(self.state_dim)
        if self.std_mode == "learned":
            self.std = nn.Dense(self.state_dim)
        elif self.std_mode != "fixed":
            raise ValueError(f"unknown std_mode {self.std_mode!r}; choose 'learned' or 'fixed'")

    # --- whole sequences ---------------------------------------------------------------------

    def __call__(
        self, state: jax.Array, action: jax.Array, context: SequenceContext | None = None
    ) -> distrax.Normal:
        if context is None:  # single step: a window of one, which attends to itself only
            flat_state, flat_action = (
                state.reshape(-1, state.shape[-1]),
                action.reshape(-1, action.shape[-1]),
            )
            dist = self.step(self.empty_window(flat_state.shape[0], 1), flat_state, flat_action)[0]
            return distrax.Normal(dist.loc.reshape(state.shape), dist.scale.reshape(state.shape))
        if state.shape[:-1] != context.padding_mask.shape or action.shape[:-1] != state.shape[:-1]:
            raise ValueError(
                f"transformer dynamics: state {state.shape} and action {action.shape} must be "
                f"the context's [..., T, ·] steps (padding mask {context.padding_mask.shape})"
            )
        return self._sequence(state, action, context.padding_mask, context.causal_mask)[0]

    def _sequence(self, state, action, padding, causal=None):
        """All positions at once: (distribution ``[..., T, S]``, KV entries ``[..., T, L, 2, H,
        D_h]``)."""
        t = state.shape[-2]
        i, j = jnp.arange(t)[:, None], jnp.arange(t)[None]
        distance = i - j
        valid = (distance >= 0) & (distance < self.context_length)
        if causal is not None:
            valid = valid & causal.reshape(causal.shape[-2:]).astype(bool)
        valid = valid & (padding.astype(bool)[..., None, :] | (distance == 0))  # [..., T, T]
        x = self.embed(jnp.concatenate([state, action], -1))
        entries = []
        for block in self.blocks:
            q, k, v = block.qkv(x)
            entries.append(jnp.stack([k, v], -3))  # [..., T, 2, H, D_h]
            x = block.finish(x, block.attend(q, k, v, distance, valid))
        return self._head(x, state), jnp.stack(entries, -4)

    def sequence_window(self, state, action, mask) -> ContextWindow:
        """For each step ``(b, t)`` of ``state [B, T, S]``, the window (KV cache) of the real
        steps before it: ``N = B·T`` windows of ``context_length`` slots."""
        _, entries = self._sequence(state, action, mask)
        return sequence_windows(entries, mask, self.context_length)

    # --- one step on a window (KV cache) -------------------------------------------------------

    def empty_window(self, n: int, length: int | None = None) -> ContextWindow:
        """An empty window of ``length`` slots (default ``context_length``) for ``n``
        trajectories.  A shorter window attends less far back (1: single steps)."""
        head_dim = self.embed_dim // self.num_heads
        return empty_window(
            n, length or self.context_length, (self.num_layers, 2, self.num_heads, head_dim)
        )

    def step(
        self, window: ContextWindow, state: jax.Array, action: jax.Array
    ) -> tuple[distrax.Normal, ContextWindow]:
        """Appends step ``(state [N, S], action [N, A])`` to ``window`` and predicts its next
        state ``[N, S]`` from it and the window's valid entries (at most ``K − 1`` back)."""
        distance, valid = window.slots()  # of the cached steps, from the new one
        distance = jnp.concatenate([distance, jnp.zeros_like(distance[:, :1])], 1)[:, None]
        valid = jnp.concatenate([valid, jnp.ones_like(valid[:, :1])], 1)[:, None]
        x = self.embed(jnp.concatenate([state, action], -1))[:, None]  # [N, 1, D]
        entries = []
        for layer, block in enumerate(self.blocks):
            q, k, v = block.qkv(x)
            keys = jnp.concatenate([window.entries[:, :, layer, 0], k], 1)
            values = jnp.concatenate([window.entries[:, :, layer, 1], v], 1)
            entries.append(jnp.stack([k[:, 0], v[:, 0]], 1))
            x = block.finish(x, block.attend(q, keys, values, distance, valid))
        dist = self._head(x[:, 0], state)
        return dist, push(window, jnp.stack(entries, 1))

    def _head(self, x: jax.Array, state: jax.Array) -> distrax.Normal:
        x = self.out_norm(x)
        mean = self.mean(x)
        if self.residual:
            mean = mean + state
        if self.std_mode == "learned":
            std = self.min_std + (self.max_std - self.min_std) * jax.nn.sigmoid(self.std(x) + 2.0)
        else:
            std = jnp.full_like(mean, self.fixed_std)
        return distrax.Normal(mean, std)
