"""Replay on the device, for the on-device loop (:mod:`wm_jax.device_loop`): a fixed-size ring
of vector steps held in one pytree (:class:`DeviceReplay`), written and sampled inside jitted
code.  The host loop's twin is :class:`wm_jax.replay.ReplayBuffer` (numpy, on the host); both
hand the update the same :class:`~wm_jax.types.Transition` / :class:`~wm_jax.types.Sequence`
batches.  Where the host replay pads a window past an episode's end by repeating its last step,
this ring leaves the next episode's data in the window and masks it out (``mask = 0``).
"""

from __future__ import annotations

import chex
import flax
import jax
import jax.numpy as jnp

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

    @property
    def capacity(self) -> int:
        return self.reward.shape[0]


def replay_init(capacity: int, num_envs: int, spec) -> DeviceReplay:
    obs = jnp.zeros((capacity, num_envs, *spec.obs_shape), spec.obs_dtype)
    zeros = jnp.zeros((capacity, num_envs), jnp.float32)
    return DeviceReplay(
        obs=obs,
        action=jnp.zeros((capacity, num_envs, spec.action_dim), jnp.float32),
        reward=zeros,
        cont=zeros,
        next_obs=obs,
        episode=jnp.zeros((capacity, num_envs), jnp.int32),
        head=jnp.zeros((), jnp.int32),
        size=jnp.zeros((), jnp.int32),
    )


def replay_add(r: DeviceReplay, obs, action, reward, cont, next_obs, episode) -> DeviceReplay:
    """Writes one vector step (``[N, ...]`` each) at the head of the ring."""
    put = lambda buf, x: buf.at[r.head].set(x.astype(buf.dtype))  # noqa: E731
    return r.replace(
        obs=put(r.obs, obs),
        action=put(r.action, action),
        reward=put(r.reward, reward),
        cont=put(r.cont, cont),
        next_obs=put(r.next_obs, next_obs),
        episode=put(r.episode, episode),
        head=(r.head + 1) % r.capacity,
        size=jnp.minimum(r.size + 1, r.capacity),
    )


def _oldest(r: DeviceReplay) -> chex.Array:
    return (r.head - r.size) % r.capacity


def replay_sample_flat(r: DeviceReplay, key: chex.PRNGKey, batch_size: int) -> Transition:
    """``batch_size`` transitions, uniform over the filled slots and envs."""
    t_key, e_key = jax.random.split(key)
    age = jax.random.randint(t_key, (batch_size,), 0, r.size)
    t = (_oldest(r) + age) % r.capacity
    e = jax.random.randint(e_key, (batch_size,), 0, r.reward.shape[1])
    return Transition(
        obs=r.obs[t, e],
        action=r.action[t, e],
        reward=r.reward[t, e],
        next_obs=r.next_obs[t, e],
        cont=r.cont[t, e],
        mask=jnp.ones((batch_size,), jnp.float32),
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
        obs=obs, action=r.action[t, e], reward=r.reward[t, e], cont=r.cont[t, e], mask=mask
    )
