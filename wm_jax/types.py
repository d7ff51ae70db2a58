"""The pytrees that flow through wm_jax.

Conventions (shared by every module):

* Real data comes in two layouts.  A *flat* batch (:class:`Transition`) holds ``B`` independent
  transitions ``(obs, action) -> (reward, next_obs, cont)``.  A *sequence* batch (:class:`Sequence`)
  holds ``B`` windows of ``T`` consecutive transitions of one episode: ``obs`` has ``T + 1`` entries
  (``obs[:, t + 1]`` is the observation transition ``t`` lands in).
* ``action`` is always a float vector: one-hot for discrete action spaces, values in ``[-1, 1]`` for
  continuous boxes (the environment adapter rescales to the box bounds).
* ``cont`` is the continue flag ``c_t = 1 - terminated_t``; a time-limit truncation keeps
  ``c_t = 1``.
* ``mask`` marks real (1) versus padded (0) transitions; every loss reduction honours it.
* Imagined trajectories are time-major (``[H, B, ...]``), following rlax, because ``lax.scan``
  produces them.
"""

from __future__ import annotations

from typing import Any

import chex
import flax.struct
import jax.numpy as jnp

Params = Any
PRNGKey = chex.PRNGKey
Metrics = dict[str, chex.Array]


@flax.struct.dataclass
class Transition:
    """A flat batch of ``B`` independent transitions."""

    obs: chex.Array  # [B, *obs_shape]
    action: chex.Array  # [B, A]
    reward: chex.Array  # [B]
    next_obs: chex.Array  # [B, *obs_shape]
    cont: chex.Array  # [B]   1 - terminated
    mask: chex.Array  # [B]   1 = real transition, 0 = padding
    # As in Sequence: the discounted return to a stored termination, where known.
    return_to_go: chex.Array | None = None  # [B]
    return_known: chex.Array | None = None  # [B]

    @property
    def batch_size(self) -> int:
        return self.reward.shape[0]


@flax.struct.dataclass
class Sequence:
    """A batch of ``B`` windows of ``T`` consecutive transitions from single episodes."""

    obs: chex.Array  # [B, T + 1, *obs_shape]
    action: chex.Array  # [B, T, A]
    reward: chex.Array  # [B, T]
    cont: chex.Array  # [B, T]
    mask: chex.Array  # [B, T]
    # Discounted return to the episode's termination, where known (1 in return_known): only
    # replays built with a return_gamma fill them (config.critic.real_targets = "episode").
    return_to_go: chex.Array | None = None  # [B, T]
    return_known: chex.Array | None = None  # [B, T]

    @property
    def batch_size(self) -> int:
        return self.reward.shape[0]

    @property
    def length(self) -> int:
        return self.reward.shape[1]

    def to_transitions(self) -> Transition:
        """Flattens the windows into ``B * T`` independent transitions."""
        b, t = self.reward.shape
        obs_shape = self.obs.shape[2:]
        return Transition(
            obs=self.obs[:, :-1].reshape((b * t, *obs_shape)),
            action=self.action.reshape((b * t, -1)),
            reward=self.reward.reshape(b * t),
            next_obs=self.obs[:, 1:].reshape((b * t, *obs_shape)),
            cont=self.cont.reshape(b * t),
            mask=self.mask.reshape(b * t),
            return_to_go=None if self.return_to_go is None else self.return_to_go.reshape(b * t),
            return_known=None if self.return_known is None else self.return_known.reshape(b * t),
        )


Batch = Transition | Sequence


@flax.struct.dataclass
class SequenceContext:
    """What sequence-aware components may look at, built once per sequence batch.

    The PyTorch prototype attached a context dict to every module; here it is an immutable
    argument.  Components that ignore it (the MLP dynamics) simply accept ``context=None``.
    """

    features: chex.Array  # [B, T, F]   encoder features of obs[:, :T]
    states: chex.Array  # [B, T, S]     representation states of obs[:, :T]
    actions: chex.Array  # [B, T, A]
    rewards: chex.Array  # [B, T]
    continues: chex.Array  # [B, T]
    causal_mask: chex.Array  # [1, T, T]  True where step i may attend to step j (j <= i)
    padding_mask: chex.Array  # [B, T]    True for real steps

    @property
    def length(self) -> int:
        return self.states.shape[1]


def make_causal_mask(length: int) -> chex.Array:
    """``[1, T, T]`` boolean mask, True where query step ``i`` may attend key step ``j <= i``."""
    return jnp.tril(jnp.ones((length, length), dtype=bool))[None]


@flax.struct.dataclass
class Imagined:
    """A time-major imagined trajectory of horizon ``H`` from ``B`` start states.

    Index ``t`` of ``rewards``/``continues`` belongs to the transition
    ``states[t] -> states[t + 1]``;
    ``values`` has ``H + 1`` entries so that ``values[H]`` bootstraps the λ-return.
    """

    states: chex.Array  # [H + 1, B, S]
    actions: chex.Array  # [H, B, A]
    log_probs: chex.Array  # [H, B]
    entropies: chex.Array  # [H, B]
    rewards: chex.Array  # [H, B]
    continues: chex.Array  # [H, B]   predicted continue probabilities
    values: chex.Array  # [H + 1, B]


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training: one immutable pytree.

    Three parameter sets with three optax states (the seeds' three optimizers), the RNG key and
    the counters.  ``critic_target_params`` is a slow EMA copy of the critic used for bootstrapping
    when ``config.critic.target_update_rate < 1`` (equal to ``critic_params`` otherwise).
    """

    wm_params: Params
    actor_params: Params
    critic_params: Params
    critic_target_params: Params
    wm_opt_state: Any
    actor_opt_state: Any
    critic_opt_state: Any
    key: chex.Array  # raw uint32 key data: checkpoints cleanly, vmaps over seeds
    wm_updates: chex.Array  # int32 counters of applied updates
    actor_updates: chex.Array
    critic_updates: chex.Array
    # [2] EMA of the imagined returns' 5th and 95th percentiles (actor.return_norm_decay > 0).
    return_range: chex.Array
    # [3] multipliers of the world-model, actor and critic learning rates (1: the config's).
    # Adam's step is linear in the lr, so scaling the update is changing the lr; being an array,
    # it lets one vmapped program train a learning-rate sweep (config.lr_sweep).
    lr_scale: chex.Array
