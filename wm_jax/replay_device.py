"""Replay on the device, for the on-device loop (:mod:`wm_jax.device_loop`): a fixed-size ring
of vector steps held in one pytree (:class:`DeviceReplay`), written and sampled inside jitted
code.  The host loop's twin is :class:`wm_jax.replay.ReplayBuffer` (numpy, on the host); both
hand the update the same :class:`~wm_jax.types.Transition` / :class:`~wm_jax.types.Sequence`
batches.  Where the host replay pads a window past an episode's end by repeating its last step,
this ring leaves the next episode's data in the window and masks it out (``mask = 0``).
With ``return_gamma`` set it also keeps each terminated episode's discounted return to its
termination (``config.critic.real_targets = "episode"``), as the host replay does.
"""

from __future__ import annotations

import chex
import flax
import jax
import jax.numpy as jnp

from wm_jax.replay import checked_return_gamma
from wm_jax.types import Sequence, Transition

__all__ = [
    "DeviceReplay",
    "replay_add",
    "replay_init",
    "replay_sample_flat",
    "replay_sample_sequences",
]


@flax.struct.dataclass
class DeviceReplay:
    """A ring of ``capacity`` vector steps of ``N`` envs (time-major ``[C, N, ...]``).

    ``episode`` holds each slot's per-env episode number, which is what keeps sampled sequences
    inside one episode: steps of a later episode are masked out (``mask = 0``) like the host
    replay's padding.
    """

    obs: chex.Array
    action: chex.Array
    reward: chex.Array
    cont: chex.Array
    next_obs: chex.Array
    episode: chex.Array
    head: chex.Array  # next slot to write
    size: chex.Array  # filled slots (<= capacity)
    # With return_gamma: each slot's discounted return to its episode's termination and whether
    # it is known (the episode has terminated in the ring; truncated and running ones have not).
    ret: chex.Array | None = None
    known: chex.Array | None = None
    return_gamma: float | None = flax.struct.field(pytree_node=False, default=None)

    @property
    def capacity(self) -> int:
        return self.reward.shape[0]


def replay_init(
    capacity: int, num_envs: int, spec, return_gamma: float | None = None
) -> DeviceReplay:
    obs = jnp.zeros((capacity, num_envs, *spec.obs_shape), spec.obs_dtype)
    zeros = jnp.zeros((capacity, num_envs), jnp.float32)
    keep = return_gamma is not None
    return DeviceReplay(
        obs=obs,
        action=jnp.zeros((capacity, num_envs, spec.action_dim), jnp.float32),
        reward=zeros,
        cont=zeros,
        next_obs=obs,
        episode=jnp.zeros((capacity, num_envs), jnp.int32),
        head=jnp.zeros((), jnp.int32),
        size=jnp.zeros((), jnp.int32),
        ret=zeros if keep else None,
        known=jnp.zeros((capacity, num_envs), bool) if keep else None,
        return_gamma=checked_return_gamma(return_gamma) if keep else None,
    )


def replay_add(r: DeviceReplay, obs, action, reward, cont, next_obs, episode) -> DeviceReplay:
    """Writes one vector step (``[N, ...]`` each) at the head of the ring."""
    put = lambda buf, x: buf.at[r.head].set(x.astype(buf.dtype))  # noqa: E731
    slot = r.head
    r = r.replace(
        obs=put(r.obs, obs),
        action=put(r.action, action),
        reward=put(r.reward, reward),
        cont=put(r.cont, cont),
        next_obs=put(r.next_obs, next_obs),
        episode=put(r.episode, episode),
        head=(r.head + 1) % r.capacity,
        size=jnp.minimum(r.size + 1, r.capacity),
    )
    return r if r.ret is None else _backfill_returns(r, slot)


def _backfill_returns(r: DeviceReplay, slot: chex.Array) -> DeviceReplay:
    """After writing ``slot``: walks back through the episode of each env that terminated there,
    ``G_t = r_t + γ·G_{t+1}`` from ``G_T = r_T``, and marks those steps known.  The walk is as long
    as the longest such episode in the ring (none when no env terminated), so it costs about one
    pass per stored step over a run, as the host replay's write-back."""
    gamma, capacity = r.return_gamma, r.capacity
    episode = r.episode[slot]

    def walk(carry):
        k, active, g, ret, known = carry
        s = (slot - k) % capacity
        g = jnp.where(active, r.reward[s] + gamma * g, g)
        ret = ret.at[s].set(jnp.where(active, g, ret[s]))
        known = known.at[s].set(active | known[s])
        k = k + 1
        prev = (slot - k) % capacity
        return k, active & (k < r.size) & (r.episode[prev] == episode), g, ret, known

    ended = r.cont[slot] == 0
    g0 = jnp.zeros_like(r.reward[slot])
    known = r.known.at[slot].set(False)  # the slot's overwritten step was another's
    init = (jnp.zeros((), jnp.int32), ended, g0, r.ret, known)
    _, _, _, ret, known = jax.lax.while_loop(lambda c: jnp.any(c[1]), walk, init)
    return r.replace(ret=ret, known=known)


def _returns(r: DeviceReplay, t, e, mask) -> dict:
    """The batch's ``return_to_go`` / ``return_known`` fields (none without return_gamma)."""
    if r.ret is None:
        return {}
    return dict(return_to_go=r.ret[t, e], return_known=r.known[t, e].astype(jnp.float32) * mask)


def _oldest(r: DeviceReplay) -> chex.Array:
    return (r.head - r.size) % r.capacity


def replay_sample_flat(r: DeviceReplay, key: chex.PRNGKey, batch_size: int) -> Transition:
    """``batch_size`` transitions, uniform over the filled slots and envs."""
    t_key, e_key = jax.random.split(key)
    age = jax.random.randint(t_key, (batch_size,), 0, r.size)
    t = (_oldest(r) + age) % r.capacity
    e = jax.random.randint(e_key, (batch_size,), 0, r.reward.shape[1])
    mask = jnp.ones((batch_size,), jnp.float32)
    return Transition(
        obs=r.obs[t, e],
        action=r.action[t, e],
        reward=r.reward[t, e],
        next_obs=r.next_obs[t, e],
        cont=r.cont[t, e],
        mask=mask,
        **_returns(r, t, e, mask),
    )


def replay_sample_sequences(
    r: DeviceReplay, key: chex.PRNGKey, batch_size: int, length: int
) -> Sequence:
    """``batch_size`` windows of ``length`` consecutive steps of one env; starts are uniform
    over the windows that do not cross the ring's write head, and steps after the start's
    episode has ended are masked (``obs[:, k + 1]`` is always the observation step ``k`` lands
    in, the true final observation at an episode's end)."""
    t_key, e_key = jax.random.split(key)
    age = jax.random.randint(t_key, (batch_size,), 0, jnp.maximum(r.size - length + 1, 1))
    t = (_oldest(r) + age[:, None] + jnp.arange(length)[None]) % r.capacity  # [B, T]
    e = jax.random.randint(e_key, (batch_size,), 0, r.reward.shape[1])[:, None]
    written = age[:, None] + jnp.arange(length)[None] < r.size  # a ring shorter than a window
    mask = ((r.episode[t, e] == r.episode[t[:, :1], e]) & written).astype(jnp.float32)
    obs = jnp.concatenate([r.obs[t[:, :1], e], r.next_obs[t, e]], axis=1)
    return Sequence(
        obs=obs,
        action=r.action[t, e],
        reward=r.reward[t, e],
        cont=r.cont[t, e],
        mask=mask,
        **_returns(r, t, e, mask),
    )
