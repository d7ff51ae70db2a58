"""A rolling window over the last ``K`` steps, for dynamics models that read a context (the
transformer of issue 5) while a caller steps through time with ``lax.scan`` (imagination, the
multi-step loss, the open-loop check).

The window holds one *entry* per step (for the transformer: that step's attention keys and values
at every layer, ``[L, 2, H, D_h]``, a KV cache) and is left-aligned: its ``count`` valid entries
sit at slots ``0 … count-1``.  Appending to a full window drops the oldest entry (a shift left by
one).  Shapes are static (``[N, K, ...]`` plus a ``[N]`` count), so the window is a scan carry.

A dynamics module that reads a context declares ``uses_context = True`` and ``context_length``
and provides three methods, called here through the world model's parameters:

* ``empty_window(n)`` → an empty :class:`ContextWindow` of ``n`` trajectories (no parameters);
* ``step(window, state [N, S], action [N, A])`` → (next-state distribution ``[N, S]``, window with
  the step appended);
* ``sequence_window(states [B, T, S], actions [B, T, A], mask [B, T])`` → for every step
  ``(b, t)`` the window of the real steps before it, ``N = B·T`` windows.
"""

from __future__ import annotations

from typing import Any

import chex
import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class ContextWindow:
    """``count[n]`` valid entries of trajectory ``n``, oldest first."""

    entries: chex.Array  # [N, K, ...]
    count: chex.Array  # [N] int32 in 0..K

    @property
    def length(self) -> int:
        return self.entries.shape[1]

    def slots(self) -> tuple[chex.Array, chex.Array]:
        """``(distance [N, K], valid [N, K])`` of each slot from the entry appended next:
        ``distance = count - j`` (a full window drops slot 0 first, so it stays correct), valid
        where the slot holds an entry that the next step may attend to (``distance < K``)."""
        j = jnp.arange(self.length)[None]
        distance = self.count[:, None] - j
        return distance, (j < self.count[:, None]) & (distance < self.length)


def context_length(dynamics) -> int:
    """The window length a dynamics module wants (``model.context_length``), 0 for modules that
    look at one step at a time (``uses_context`` False or absent, e.g. user-registered ones)."""
    return int(dynamics.context_length) if getattr(dynamics, "uses_context", False) else 0


def empty_window(n: int, length: int, entry_shape: tuple[int, ...], dtype=jnp.float32):
    """``n`` windows of ``length`` slots holding nothing yet."""
    return ContextWindow(
        entries=jnp.zeros((n, length, *entry_shape), dtype), count=jnp.zeros((n,), jnp.int32)
    )


def push(window: ContextWindow, entry: chex.Array) -> ContextWindow:
    """Appends ``entry [N, ...]`` at slot ``min(count, K-1)``; a full window first shifts left by
    one (dropping its oldest entry)."""
    k = window.length
    extra = (1,) * (window.entries.ndim - 2)
    full = (window.count >= k).reshape((-1, 1, *extra))
    slot = (jnp.arange(k)[None] == jnp.minimum(window.count, k - 1)[:, None]).reshape(
        (-1, k, *extra)
    )
    old = window.entries
    entries = jnp.where(slot, entry[:, None], jnp.where(full, jnp.roll(old, -1, axis=1), old))
    return ContextWindow(entries=entries, count=jnp.minimum(window.count + 1, k))


def clear(window: ContextWindow, where: chex.Array) -> ContextWindow:
    """Empties the windows where ``where [N]`` is True (an episode ended: its past is gone)."""
    return window.replace(count=jnp.where(where, 0, window.count))


def sequence_windows(entries: chex.Array, mask: chex.Array, length: int) -> ContextWindow:
    """For every step ``(b, t)`` of a replayed batch, the window of the entries *preceding* it:
    steps ``t-p … t-1`` with ``p = min(run, K-1)``, where ``run`` counts the consecutive real
    steps (``mask = 1``) just before ``t``.  The step itself is appended when it is taken, so a
    window never holds more than ``K`` steps.

    Args:
      entries: ``[B, T, ...]`` one entry per step.
      mask: ``[B, T]``.
      length: the window length ``K``.

    Returns:
      A :class:`ContextWindow` of ``N = B·T`` windows in row-major ``(b, t)`` order (the order of
      ``states.reshape(B·T, S)``).
    """
    chex.assert_rank(mask, 2)
    b, t = mask.shape
    pos = jnp.arange(t)
    # Index of the last padded step at or before each step (-1 when none), then before it.
    last_pad = jax.lax.cummax(jnp.where(mask > 0, -1, pos[None]), axis=1)
    before = jnp.concatenate([jnp.full((b, 1), -1, last_pad.dtype), last_pad[:, :-1]], 1)
    past = jnp.minimum(pos[None] - 1 - before, length - 1)  # [B, T]
    idx = pos[None, :, None] - past[..., None] + jnp.arange(length)[None, None]  # [B, T, K]
    valid = jnp.arange(length)[None, None] < past[..., None]
    idx = jnp.where(valid, idx, 0)  # empty slots: any in-range index, zeroed below
    extra = entries.shape[2:]
    flat_idx = idx.reshape((b, t * length) + (1,) * len(extra))
    gathered = jnp.take_along_axis(entries, flat_idx, axis=1).reshape((b * t, length, *extra))
    gathered = jnp.where(valid.reshape((b * t, length) + (1,) * len(extra)), gathered, 0.0)
    return ContextWindow(entries=gathered, count=past.reshape(b * t).astype(jnp.int32))


# --- calling a context model through the world model ----------------------------------------


def dynamics_step(wm, wm_params, window: ContextWindow, state, action, **apply_kwargs):
    """``wm.dynamics.step`` with the world model's parameters: ``(distribution [N, S], window)``."""
    return wm.apply(
        wm_params, window, state, action, method=lambda m, *a: m.dynamics.step(*a), **apply_kwargs
    )


def start_windows(wm, wm_params, states, actions, mask, **apply_kwargs) -> ContextWindow:
    """``wm.dynamics.sequence_window``: each replayed step's window of the real steps before it."""
    return wm.apply(
        wm_params,
        states,
        actions,
        mask,
        method=lambda m, *a: m.dynamics.sequence_window(*a),
        **apply_kwargs,
    )


def empty_windows(wm, n: int) -> Any:
    """``wm.dynamics.empty_window(n)`` (needs no parameters)."""
    return wm.dynamics.empty_window(n)
