"""The whole training loop as one compiled program, for JAX-native (gymnax) environments.

This is the "Anakin" layout of Hessel et al. (2021, *Podracer architectures*): environment
stepping, replay insertion and sampling, observation normalisation and the three update steps
all run inside one jitted ``lax.scan`` over loop iterations, so the host only wakes up to log,
evaluate and checkpoint.  Select it with ``--config.loop=device`` and a ``gymnax:`` id::

    python -m wm_jax.train --config=experiments/configs/cartpole.py \\
        --config.env_id=gymnax:CartPole-v1 --config.loop=device

``--config.num_seeds=8`` trains eight independent seeds (``seed, seed+1, …``) in the same
program with ``jax.vmap``; each gets its own ``seed_<s>/`` workdir with metrics, checkpoints and
report.  ``--config.lr_sweep=actor=1e-4,3e-4`` adds a learning-rate axis: one run per seed and
value (``seed_<s>-actor_lr_<v>/``), the value carried in ``TrainState.lr_scale``.  The update
steps, schedule, metrics and checkpoint format are the host loop's (:mod:`wm_jax.update`,
:mod:`wm_jax.schedule`, :mod:`wm_jax.checkpoint`), so
``wm_jax.load_policy`` and ``python -m wm_jax.evaluate`` read a device-loop workdir as well.

Loop semantics, per iteration: ``env_repeat`` vector steps of ``num_envs`` envs (random actions
before ``prefill_steps``, policy samples after), then ``updates_per_iteration`` train steps, with
``env_repeat · num_envs · train_ratio == updates_per_iteration`` (the host loop's train ratio).
Transitions never cross episodes: gymnax reports the pre-reset observation as
``info["final_observation"]``, ``terminated`` sets ``cont = 0`` and a time-limit ``truncated``
does not.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from fractions import Fraction
from typing import Any, NamedTuple

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from wm_jax import metrics as metrics_lib
from wm_jax.checkpoint import Checkpointer
from wm_jax.config import (
    ConfigError,
    check_known_fields,
    parse_lr_sweep,
    validate,
    validate_for_env,
)
from wm_jax.diagnostics import Detector, Thresholds
from wm_jax.envs import GYMNAX_PREFIX, EnvSpec, make_env_spec
from wm_jax.gymnax_env import board_to_uint8, make_gymnax
from wm_jax.inference import best_return, keep_if_best, spec_to_json
from wm_jax.open_loop import make_open_loop_fn
from wm_jax.policy import ActCarry, act, initial_carry
from wm_jax.run_dir import RunDir
from wm_jax.schedule import critic_real_mix, phase, update_counts
from wm_jax.sharding import make_mesh, shard_batch
from wm_jax.shell import (
    Clock,
    NonFiniteError,
    RunResult,
    StopOnSignal,
    all_finite,
    check_nonfinite,
    prepare_batch,
    record_open_loop,
    write_config_text,
)
from wm_jax.types import Sequence, TrainState, Transition
from wm_jax.update import init_state, make_agent, train_step

# --------------------------------------------------------------------------------------------
# gymnax environments, stepped on the device
# --------------------------------------------------------------------------------------------


class EnvOutput(NamedTuple):
    obs: chex.Array  # [N, ...] the next observation (a reset one where an episode ended)
    env_state: Any
    reward: chex.Array  # [N]
    terminated: chex.Array  # [N] bool
    truncated: chex.Array  # [N] bool: the time limit, which keeps cont = 1
    final_obs: chex.Array  # [N, ...] the observation the step landed in, before any reset


@dataclasses.dataclass(frozen=True)
class GymnaxTask:
    """A gymnax environment with its params and wm_jax's :class:`~wm_jax.envs.EnvSpec`,
    stepped inside jitted code (the host loop's twin: :class:`wm_jax.gymnax_env.GymnaxVectorEnv`).
    """

    env: Any
    params: Any
    spec: EnvSpec

    @property
    def max_episode_steps(self) -> int:
        return int(self.params.max_steps_in_episode)

    def env_actions(self, actions: chex.Array) -> chex.Array:
        """The agent's float actions ``[N, A]`` as gymnax actions (jnp twin of
        :func:`wm_jax.envs.to_env_action`)."""
        spec = self.spec
        if spec.discrete:
            return jnp.argmax(actions, -1).astype(jnp.int32) + spec.action_start
        low, high = jnp.asarray(spec.action_low), jnp.asarray(spec.action_high)
        unit = jnp.clip(actions, -1.0, 1.0)
        return jnp.clip(low + (unit + 1.0) * 0.5 * (high - low), low, high)

    def step(self, key: chex.PRNGKey, env_state, actions: chex.Array) -> EnvOutput:
        """Steps ``N`` envs (auto-resetting the finished ones) with agent actions ``[N, A]``."""
        keys = jax.random.split(key, actions.shape[0])
        obs, env_state, reward, terminated, truncated, info = jax.vmap(
            self.env.step, in_axes=(0, 0, 0, None)
        )(keys, env_state, self.env_actions(actions), self.params)
        return EnvOutput(
            obs=self.observation(obs),
            env_state=env_state,
            reward=reward.astype(jnp.float32),
            terminated=terminated.astype(bool),
            truncated=truncated.astype(bool) & ~terminated.astype(bool),
            final_obs=self.observation(info["final_observation"]),
        )

    def observation(self, obs: chex.Array) -> chex.Array:
        """gymnax observations ``[N, ...]`` in the spec's shape and dtype (2-D boards get
        their channel axis, ``[0, 1]`` boards become uint8 ``{0, 255}``: the host adapter's
        :func:`wm_jax.gymnax_env.board_to_uint8`)."""
        return board_to_uint8(obs, self.spec.obs_shape, self.spec.obs_dtype)

    def reset(self, key: chex.PRNGKey, num_envs: int):
        obs, env_state = jax.vmap(self.env.reset, in_axes=(0, None))(
            jax.random.split(key, num_envs), self.params
        )
        return self.observation(obs), env_state


def make_task(env_id: str, env_kwargs: dict[str, Any] | None = None) -> GymnaxTask:
    """A ``"gymnax:Name"`` id as a :class:`GymnaxTask`, with the same spaces, params and
    ``env_kwargs`` handling as the host loop's :class:`wm_jax.gymnax_env.GymnaxVectorEnv`."""
    if not env_id.startswith(GYMNAX_PREFIX):
        raise ValueError(
            f"the device loop steps gymnax envs on the device: use a 'gymnax:<name>' id (e.g. "
            f"'gymnax:CartPole-v1'), or --config.loop=host for the gymnasium id {env_id!r}"
        )
    env, params = make_gymnax(env_id, env_kwargs)
    return GymnaxTask(env=env, params=params, spec=make_env_spec(env_id, env_kwargs))


# --------------------------------------------------------------------------------------------
# Replay on the device
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Observation normaliser on the device (the host loop's RunningMeanStd, in float32)
# --------------------------------------------------------------------------------------------


@flax.struct.dataclass
class DeviceNormalizer:
    count: chex.Array
    mean: chex.Array
    m2: chex.Array


def normalizer_init(shape) -> DeviceNormalizer:
    return DeviceNormalizer(
        count=jnp.zeros((), jnp.float32),
        mean=jnp.zeros(shape, jnp.float32),
        m2=jnp.zeros(shape, jnp.float32),
    )


def normalizer_update(n: DeviceNormalizer, batch: chex.Array) -> DeviceNormalizer:
    """Chan et al.'s parallel update with a batch ``[N, *shape]`` (as ``RunningMeanStd``)."""
    batch = batch.astype(jnp.float32)
    k = batch.shape[0]
    b_mean = batch.mean(0)
    total = n.count + k
    delta = b_mean - n.mean
    return DeviceNormalizer(
        count=total,
        mean=n.mean + delta * k / total,
        m2=n.m2 + ((batch - b_mean) ** 2).sum(0) + delta**2 * n.count * k / total,
    )


def normalizer_stats(n: DeviceNormalizer, enabled: bool) -> tuple[chex.Array, chex.Array]:
    if not enabled:
        return jnp.zeros_like(n.mean), jnp.ones_like(n.mean)
    std = jnp.where(n.count < 2, 1.0, jnp.sqrt(n.m2 / jnp.maximum(n.count, 1.0)) + 1e-6)
    return n.mean, std


# --------------------------------------------------------------------------------------------
# The loop state and one iteration
# --------------------------------------------------------------------------------------------


@flax.struct.dataclass
class LoopState:
    """Everything one run carries from iteration to iteration (one pytree, vmappable)."""

    train: TrainState
    env_state: Any
    obs: chex.Array  # [N, *obs_shape]
    replay: DeviceReplay
    norm: DeviceNormalizer
    episode: chex.Array  # [N] episodes finished per env (the replay's episode ids)
    episode_return: chex.Array  # [N] return of each env's running episode
    act_carry: ActCarry  # what acting remembers between steps (the RSSM's state)
    env_step: chex.Array
    updates: chex.Array
    key: chex.Array


@dataclasses.dataclass(frozen=True)
class Cadence:
    """How env steps and train steps interleave: ``env_repeat`` vector steps, then
    ``updates`` train steps, per iteration."""

    env_repeat: int
    updates: int

    @classmethod
    def from_config(cls, c) -> Cadence:
        per_vector_step = Fraction(c.train_ratio).limit_denominator(1000) * c.num_envs
        if per_vector_step <= 0 or per_vector_step.numerator > 16:
            raise ConfigError(
                f"config.train_ratio: {c.train_ratio} × num_envs={c.num_envs} gives "
                f"{float(per_vector_step):g} train steps per vector step; the device loop needs "
                "a ratio p/q with p <= 16 (e.g. 0.25 with 4 envs = one train step per vector step)"
            )
        return cls(env_repeat=per_vector_step.denominator, updates=per_vector_step.numerator)


class DeviceLoop:
    """Builds the compiled pieces for one config; :func:`train_device` drives them."""

    def __init__(self, config):
        self.config = c = validate(config)
        try:
            self.task = make_task(c.env_id, dict(c.env_kwargs))
        except ValueError as err:
            raise ConfigError(f"config.env_id={c.env_id!r}: {err}") from err
        self.spec = self.task.spec
        validate_for_env(c, self.spec.max_episode_steps)
        self.cadence = Cadence.from_config(c)
        self.agent = make_agent(c, self.spec)
        self.norm_enabled = c.obs_norm and not np.issubdtype(self.spec.obs_dtype, np.integer)
        self.capacity = max(c.replay_capacity // c.num_envs, c.sequence_length + 1)
        # Training needs a full window in the ring before the first batch.
        need = (c.sequence_length if c.sequence_mode else 1) * c.num_envs
        step = self.cadence.env_repeat * c.num_envs
        self.train_start = _round_up(max(c.prefill_steps, need), step)
        self._segments: dict[tuple, Any] = {}
        self._evaluate = jax.jit(self._evaluate_impl, static_argnums=(3,))
        self._open_loop_fn = make_open_loop_fn(self.agent)
        self._open_loop_windows = jax.jit(replay_sample_sequences, static_argnums=(2, 3))

    # -- initial state -------------------------------------------------------------------------

    def init(self, seed: int) -> LoopState:
        c = self.config
        seed_key = jax.random.PRNGKey(seed)
        obs, env_state = self.task.reset(jax.random.fold_in(seed_key, 3), c.num_envs)
        ls = LoopState(
            train=init_state(self.agent, jax.random.fold_in(seed_key, 1)),
            env_state=env_state,
            obs=obs,
            replay=replay_init(self.capacity, c.num_envs, self.spec),
            norm=normalizer_init(self.spec.obs_shape),
            episode=jnp.zeros((c.num_envs,), jnp.int32),
            episode_return=jnp.zeros((c.num_envs,), jnp.float32),
            act_carry=jax.tree.map(jnp.asarray, initial_carry(self.agent, c.num_envs)),
            env_step=jnp.zeros((), jnp.int32),
            updates=jnp.zeros((), jnp.int32),
            key=jax.random.fold_in(seed_key, 2),
        )
        # Segments donate their input; no two leaves may share a buffer (the target critic
        # starts as the critic, next_obs as obs).
        return jax.tree.map(jnp.copy, ls)

    # -- one vector step -----------------------------------------------------------------------

    def _random_actions(self, key, n):
        if self.spec.discrete:
            idx = jax.random.randint(key, (n,), 0, self.spec.action_dim)
            return jax.nn.one_hot(idx, self.spec.action_dim)
        return jax.random.uniform(key, (n, self.spec.action_dim), minval=-1.0, maxval=1.0)

    def _vector_step(self, prefill: bool, ls: LoopState, _=None):
        c = self.config
        key, act_key, env_key = jax.random.split(ls.key, 3)
        if prefill:
            actions, carry = self._random_actions(act_key, c.num_envs), ls.act_carry
        else:
            mean, std = normalizer_stats(ls.norm, self.norm_enabled)
            actions, carry = act(
                self.agent,
                ls.train.wm_params,
                ls.train.actor_params,
                ls.act_carry,
                ls.obs,
                mean,
                std,
                act_key,
                deterministic=False,
            )
        out = self.task.step(env_key, ls.env_state, actions)
        done = out.terminated | out.truncated
        running = ls.episode_return + out.reward
        ls = ls.replace(
            env_state=out.env_state,
            obs=out.obs,
            replay=replay_add(
                ls.replay,
                ls.obs,
                actions,
                out.reward,
                1.0 - out.terminated.astype(jnp.float32),
                out.final_obs,
                ls.episode,
            ),
            norm=normalizer_update(ls.norm, ls.obs) if self.norm_enabled else ls.norm,
            episode=ls.episode + done.astype(jnp.int32),
            episode_return=jnp.where(done, 0.0, running),
            act_carry=carry.replace(is_first=done),  # a finished env's next obs is a reset
            env_step=ls.env_step + c.num_envs,
            key=key,
        )
        finished = jnp.stack([jnp.sum(jnp.where(done, running, 0.0)), jnp.sum(done)])
        return ls, finished

    # -- one train step ------------------------------------------------------------------------

    def _train_step(self, counts, ls: LoopState, _=None):
        c = self.config
        key, sample_key = jax.random.split(ls.key)
        if c.sequence_mode:
            batch = replay_sample_sequences(ls.replay, sample_key, c.batch_size, c.sequence_length)
        else:
            batch = replay_sample_flat(ls.replay, sample_key, c.batch_size)
        mean, std = normalizer_stats(ls.norm, self.norm_enabled)
        batch = prepare_batch(batch, mean, std, c.reward_scale)
        mix = critic_real_mix(ls.env_step, c.schedule)
        train, metrics = train_step(self.agent, ls.train, batch, counts, mix)
        return ls.replace(train=train, updates=ls.updates + 1, key=key), metrics

    # -- a segment: n iterations in one scan ---------------------------------------------------

    def segment(self, iterations: int, counts, prefill: bool, num_seeds: int):
        """The compiled ``LoopState -> (LoopState, summary)`` for ``iterations`` iterations
        with static update ``counts`` (None: no training); vmapped over runs when
        ``num_seeds > 1`` (seeds × swept lrs).  ``summary`` holds the mean of every train
        metric and the summed return and count of the episodes that finished."""
        cache_key = (iterations, counts, prefill, num_seeds)
        if cache_key in self._segments:
            return self._segments[cache_key]
        cadence = self.cadence

        def iteration(ls, _):
            ls, finished = jax.lax.scan(
                functools.partial(self._vector_step, prefill), ls, None, cadence.env_repeat
            )
            finished = finished.sum(0)
            if counts is None:
                return ls, (finished, {})
            ls, metrics = jax.lax.scan(
                functools.partial(self._train_step, counts), ls, None, cadence.updates
            )
            return ls, (finished, jax.tree.map(lambda x: x.mean(0), metrics))

        def run(ls):
            ls, (finished, metrics) = jax.lax.scan(iteration, ls, None, iterations)
            summary = jax.tree.map(lambda x: x.mean(0), metrics)
            summary["_episodes"] = finished[:, 1].sum()
            summary["_return_sum"] = finished[:, 0].sum()
            return ls, summary

        fn = jax.jit(jax.vmap(run) if num_seeds > 1 else run, donate_argnums=0)
        self._segments[cache_key] = fn
        return fn

    # -- evaluation on the device --------------------------------------------------------------

    def _evaluate_impl(self, train: TrainState, norm: DeviceNormalizer, key, episodes: int):
        """``episodes`` deterministic episodes on fresh envs; returns their returns ``[M]``."""
        reset_key, step_key = jax.random.split(key)
        obs, env_state = self.task.reset(reset_key, episodes)
        mean, std = normalizer_stats(norm, self.norm_enabled)

        def step(carry, k):
            obs, env_state, alive, total, memory = carry
            actions, memory = act(
                self.agent, train.wm_params, train.actor_params, memory, obs, mean, std, k, True
            )
            out = self.task.step(k, env_state, actions)
            total = total + jnp.where(alive, out.reward, 0.0)
            alive = alive & ~(out.terminated | out.truncated)
            return (out.obs, out.env_state, alive, total, memory), None

        alive = jnp.ones((episodes,), bool)
        memory = jax.tree.map(jnp.asarray, initial_carry(self.agent, episodes))
        init = (obs, env_state, alive, jnp.zeros((episodes,)), memory)
        keys = jax.random.split(step_key, self.task.max_episode_steps)
        (_, _, _, total, _), _ = jax.lax.scan(step, init, keys)
        return total

    def open_loop_check(
        self, ls: LoopState, seed: int, workdir: str, writer=None
    ) -> dict[str, Any] | None:
        """The host loop's open-loop check (:func:`wm_jax.trainer.open_loop_check`) for one
        run's ``ls`` (not vmapped): windows from its device replay, ``open_loop.jsonl`` and, for
        images, the PNG strip in ``workdir``; ``writer`` gets its TensorBoard image.  None
        while the ring holds no full window."""
        c = self.config
        d = c.diagnostics
        step = int(ls.env_step)
        if int(ls.replay.size) < d.open_loop_horizon + 1:
            return None
        key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), step), 13)
        windows = self._open_loop_windows(ls.replay, key, d.open_loop_batch, d.open_loop_horizon)
        mean, std = normalizer_stats(ls.norm, self.norm_enabled)
        batch = prepare_batch(windows, mean, std, c.reward_scale)
        out = jax.device_get(self._open_loop_fn(ls.train.wm_params, batch))
        windows, mean, std = jax.device_get((windows, mean, std))
        return record_open_loop(out, windows, mean, std, step, workdir, writer)

    def evaluate(self, ls: LoopState, seed: int, num_seeds: int) -> np.ndarray:
        """Returns ``[num_seeds, eval_episodes]`` (or ``[eval_episodes]`` for one seed)."""
        episodes = self.config.eval_episodes
        key = jax.random.PRNGKey(seed)
        if num_seeds > 1:
            fn = jax.vmap(self._evaluate, in_axes=(0, 0, None, None))
            return np.asarray(fn(ls.train, ls.norm, key, episodes))
        return np.asarray(self._evaluate(ls.train, ls.norm, key, episodes))


def _round_up(x: int, step: int) -> int:
    return -(-x // step) * step


# --------------------------------------------------------------------------------------------
# Checkpoints: the host loop's format (state + normaliser + loop counters) plus the device state
# --------------------------------------------------------------------------------------------


def _extras(ls: LoopState, eval_returns: list) -> dict[str, Any]:
    rest = ls.replace(train=None)
    leaves = jax.tree.leaves(jax.device_get(rest))
    return {
        # RunningMeanStd's layout, so load_policy reads a device-loop checkpoint unchanged.
        "normalizer": {
            "count": np.asarray(ls.norm.count, np.float64),
            "mean": np.asarray(ls.norm.mean, np.float64),
            "m2": np.asarray(ls.norm.m2, np.float64),
        },
        "device_loop": {f"{i:04d}": np.asarray(x) for i, x in enumerate(leaves)},
        "loop": {
            "env_step": np.asarray(ls.env_step, np.int64),
            "updates": np.asarray(ls.updates, np.int64),
            "eval_returns": np.asarray([(-1.0, 0.0, 0.0), *eval_returns], np.float64),
        },
    }


def _from_extras(template: LoopState, state: TrainState, extras) -> tuple[LoopState, list]:
    rest = template.replace(train=None)
    leaves, treedef = jax.tree.flatten(rest)
    saved = extras["device_loop"]
    if len(saved) != len(leaves):
        raise ValueError(
            f"the checkpoint's device-loop state has {len(saved)} arrays, this config expects "
            f"{len(leaves)}: it was written by a different config or environment"
        )
    restored = []
    for i, like in enumerate(leaves):
        x = np.asarray(saved[f"{i:04d}"])
        if x.shape != like.shape:
            raise ValueError(
                f"device-loop array {i} has shape {x.shape}, expected {like.shape}: the "
                "checkpoint belongs to a different config or environment"
            )
        restored.append(jnp.asarray(x, like.dtype))
    ls = jax.tree.unflatten(treedef, restored).replace(train=state)
    evals = [tuple(row) for row in np.asarray(extras["loop"]["eval_returns"])[1:].tolist()]
    return ls, evals


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------


_LOOPS: dict[str, DeviceLoop] = {}


def _device_loop(config) -> DeviceLoop:
    """One :class:`DeviceLoop` per config (seed aside), so a resumed or repeated run in the same
    process reuses its compiled segments instead of compiling them again."""
    key = config.copy_and_resolve_references()
    key.seed = 0
    key = key.to_json_best_effort(sort_keys=True)
    if key not in _LOOPS:
        _LOOPS.clear()  # keep at most one set of compiled programs alive
        _LOOPS[key] = DeviceLoop(config)
    return _LOOPS[key]


@dataclasses.dataclass
class SeedRun:
    """Host-side bookkeeping of one seed: its workdir, writer, checkpointer and detector."""

    seed: int
    workdir: str
    writer: metrics_lib.MetricsWriter | None  # opened once the logs follow the checkpoint
    checkpointer: Checkpointer | None
    detector: Detector
    run_dir: RunDir
    eval_returns: list = dataclasses.field(default_factory=list)
    best_return: float = -np.inf  # of the agent kept in <workdir>/best


def _stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _index(tree, i):
    return jax.tree.map(lambda x: x[i], tree)


def _canonical(ls: LoopState) -> LoopState:
    """Every leaf a strongly typed array committed to the first local device: a fresh state
    (with weakly typed env fields), one restored from a checkpoint (some leaves uncommitted) and
    a segment's output then give the segments one signature, so a resumed or repeated run in the
    same process reuses the compiled segments instead of compiling each of them again."""
    device = jax.local_devices()[0]
    return jax.tree.map(lambda x: jax.device_put(jnp.asarray(x, dtype=x.dtype), device), ls)


def train_device(config, workdir: str, stop_at: int | None = None) -> list:
    """Runs the on-device loop for ``config`` (``config.num_seeds`` seeds at once) and returns
    the per-seed :class:`wm_jax.trainer.RunResult` list.  Resumes from checkpoints."""
    if jax.process_count() > 1:  # a multi-process run trains through the host loop only
        raise ConfigError(
            "config.loop: the device loop runs in one process; a multi-process (multi-host) "
            "run needs loop=host"
        )
    loop = _device_loop(config)
    check_known_fields(config)
    c = validate(config)  # the loop may be cached from a run with another seed
    workdir = os.path.abspath(workdir)
    # One vmapped run per (seed, swept learning rate): seeds seed .. seed+num_seeds-1.
    sweep = parse_lr_sweep(c)
    group, lrs = sweep if sweep else (None, (None,))
    grid = [(c.seed + i, lr) for i in range(c.num_seeds) for lr in lrs]
    num_seeds = len(grid)  # the length of the vmapped axis
    spec_json = spec_to_json(loop.spec)
    seed_configs = []
    for seed, lr in grid:
        name = f"seed_{seed}" + (f"-{group}_lr_{lr:g}" if lr is not None else "")
        wd = workdir if num_seeds == 1 else os.path.join(workdir, name)
        seed_config = c.copy_and_resolve_references()
        seed_config.seed = seed
        if lr is not None:
            seed_config[group].lr = lr
            seed_config.lr_sweep = ""
        seed_configs.append((seed, wd, seed_config))
    # One run per workdir (the lock covers the seeds' subdirectories), every seed's resume
    # checked before anything is written.
    one = num_seeds == 1
    root = RunDir.open(workdir, c if one else None, spec_json if one else None)
    try:
        for _, wd, seed_config in seed_configs if num_seeds > 1 else []:
            RunDir(wd).check_resume(seed_config, spec_json)
        return _train_device(c, loop, root, seed_configs, spec_json, sweep, grid, stop_at)
    finally:
        root.close()


def _train_device(c, loop, root, seed_configs, spec_json, sweep, grid, stop_at) -> list:
    group = sweep[0] if sweep else None
    num_seeds = len(grid)
    runs = []
    for seed, wd, seed_config in seed_configs:
        run_dir = root if wd == root.path else RunDir(wd)
        run_dir.write_run_files(seed_config, spec_json)
        runs.append(
            SeedRun(
                seed=seed,
                workdir=wd,
                writer=None,
                checkpointer=Checkpointer(os.path.join(wd, "checkpoints"), c.keep_checkpoints)
                if c.checkpoint_every
                else None,
                detector=Detector(Thresholds.from_config(c)),
                run_dir=run_dir,
            )
        )

    states = [loop.init(seed) for seed, _ in grid]
    if sweep:
        index = ("world_model", "actor", "critic").index(group)
        for i, (_, lr) in enumerate(grid):
            scale = states[i].train.lr_scale.at[index].set(lr / c[group].lr)
            states[i] = states[i].replace(train=states[i].train.replace(lr_scale=scale))
    resumed = []
    try:
        for i, run in enumerate(runs):
            if run.checkpointer is None:
                resumed.append(None)
                continue

            def load(step, state, extras, i=i, run=run):
                states[i], run.eval_returns = _from_extras(states[i], state, extras)
                logging.info("resumed from checkpoint at env step %d in %s", step, run.workdir)

            resumed.append(run.checkpointer.restore_newest_valid(states[i].train, load))
        for run, step in zip(runs, resumed, strict=True):
            run.best_return = best_return(run.workdir)
            purge = run.run_dir.continue_logs(step)  # rows after the checkpoint: dropped
            run.writer = metrics_lib.MetricsWriter(run.workdir, purge_step=purge)
            if step is None:
                write_config_text(run.writer, c)
    except BaseException:
        for run in runs:
            if run.checkpointer is not None:
                run.checkpointer.close()
            if run.writer is not None:
                run.writer.close()
        raise
    try:
        return _loop(c, loop, runs, states, resumed, num_seeds, stop_at)
    finally:
        for run in runs:
            run.writer.close()
            if run.checkpointer is not None:
                run.checkpointer.close()


def _loop(c, loop, runs, states, resumed, num_seeds, stop_at) -> list:
    steps_now = {int(s.env_step) for s in states}
    if len(steps_now) != 1:
        raise RuntimeError(
            f"the seeds' checkpoints are at different env steps {sorted(steps_now)}; remove the "
            "newer ones (or the workdir) so all seeds resume from the same step"
        )
    ls = _canonical(states[0] if num_seeds == 1 else _stack(states))
    if c.data_parallel:
        # Seeds are independent: one slice of the seed axis per device, no communication.
        if num_seeds == 1:
            raise ConfigError(
                "config.data_parallel: the device loop spreads seeds over devices; set "
                "config.num_seeds to a multiple of the device count"
            )
        ls = shard_batch(ls, make_mesh(), field="config.num_seeds")
    env_step = steps_now.pop()
    end = c.total_env_steps if stop_at is None else min(stop_at, c.total_env_steps)
    s = c.schedule
    boundaries = (loop.train_start, s.warmup_steps, s.transition_steps)
    if s.multi_update:
        boundaries += (s.early_late_boundary,)
    per_iteration = loop.cadence.env_repeat * c.num_envs
    last_time, last_step = time.time(), env_step
    clock = Clock.online(c)
    signals = StopOnSignal()  # SIGTERM/SIGINT: finish the segment, save, return
    try:
        signals.__enter__()
        while env_step < end and signals.signum is None:
            stop = clock.next_stop(env_step, end, boundaries)
            iterations = max(1, -(-(stop - env_step) // per_iteration))
            prefill = env_step < loop.train_start
            counts = None if prefill else update_counts(env_step, s)
            fn = loop.segment(iterations, counts, prefill, num_seeds)
            previous = env_step
            ls, summary = fn(ls)
            summary = jax.device_get(summary)
            env_step = previous + iterations * per_iteration
            log = clock.log(previous, env_step)
            evals = None
            if clock.evaluate(previous, env_step):
                evals = loop.evaluate(ls, c.seed + 100_000 + env_step, num_seeds)
                evals = evals.reshape(num_seeds, -1)
            now = time.time()
            for i, run in enumerate(runs):
                seed_summary = summary if num_seeds == 1 else _index(summary, i)
                one = ls if num_seeds == 1 else _index(ls, i)
                if evals is not None:
                    mean, std = float(evals[i].mean()), float(evals[i].std())
                    run.eval_returns.append((env_step, mean, std))
                    row = {"eval_return": mean, "eval_return_std": std}
                    row["eval_return_stderr"] = std / np.sqrt(max(evals.shape[1], 1))
                    run.detector.update(run.writer.write(env_step, row))
                    _keep_if_best(run, one, loop, c, env_step, mean, std, evals.shape[1])
                if log:
                    record = _record(seed_summary, one, env_step, c, now - last_time, last_step)
                    if clock.open_loop(env_step) and env_step > loop.train_start:
                        check = loop.open_loop_check(one, run.seed, run.workdir, run.writer)
                        record.update(check or {})
                    run.detector.update(run.writer.write(env_step, record))
                    if i == 0:
                        if run.eval_returns and run.eval_returns[-1][0] > last_step:
                            record["eval_return"] = run.eval_returns[-1][1]  # new ones only
                        metrics_lib.log_line(env_step, record, _LOG_KEYS)
            if log:
                last_time, last_step = now, env_step
            if not prefill:  # the host loop's rule: max_nonfinite_updates skips in a row stop
                for i, run in enumerate(runs):
                    one = ls if num_seeds == 1 else _index(ls, i)
                    check_nonfinite(one.train, c, env_step, run.checkpointer)
            if clock.checkpoint(previous, env_step):
                _save(runs, ls, num_seeds)
                clock.saved()
        if c.checkpoint_every:
            if any(r.checkpointer.latest_step() != env_step for r in runs):
                _save(runs, ls, num_seeds)
    finally:
        signals.__exit__()
    if c.report and env_step >= c.total_env_steps and signals.signum is None:
        from wm_jax.report import write_report

        for run in runs:
            logging.info("report: %s", write_report(run.workdir))
    return [
        RunResult(run.workdir, env_step, list(run.eval_returns), resumed[i], signals.signum)
        for i, run in enumerate(runs)
    ]


_LOG_KEYS = ("eval_return", "train_return", "world_model_loss", "mean_imagined_return")


def _record(summary, one: LoopState, env_step, c, elapsed, last_step) -> dict[str, Any]:
    """One log row, with the host loop's names: ``updates`` and ``episodes`` count from the
    start of the run, ``train_return`` averages the episodes finished since the last row."""
    summary = dict(summary)
    episodes = float(summary.pop("_episodes"))
    total = float(summary.pop("_return_sum"))
    record = metrics_lib.aggregate([summary]) if summary else {}
    record["env_steps_per_s"] = (env_step - last_step) / max(elapsed, 1e-9)
    record["updates"] = int(one.updates)
    record["episodes"] = int(np.sum(jax.device_get(one.episode)))
    record["phase"] = phase(env_step, c.schedule)
    if episodes:
        record["train_return"] = total / episodes
    return record


def _keep_if_best(run, one: LoopState, loop, c, env_step, mean, std, episodes) -> None:
    """The host loop's best agent, per seed: a policy bundle in ``<seed workdir>/best``."""

    def bundle():
        obs_mean, obs_std = jax.device_get(normalizer_stats(one.norm, loop.norm_enabled))
        seed_config = c.copy_and_resolve_references()
        seed_config.seed = run.seed
        return dict(
            config=seed_config,
            spec=loop.spec,
            wm_params=jax.device_get(one.train.wm_params),
            actor_params=jax.device_get(one.train.actor_params),
            obs_mean=obs_mean,
            obs_std=obs_std,
            step=env_step,
        )

    run.best_return = keep_if_best(run.workdir, run.best_return, mean, std, episodes, bundle)


def _save(runs, ls: LoopState, num_seeds: int) -> None:
    for i, run in enumerate(runs):
        one = ls if num_seeds == 1 else _index(ls, i)
        if not bool(all_finite(one.train)):
            raise NonFiniteError(
                f"seed {run.seed}: the train state at env step {int(one.env_step)} holds "
                f"non-finite values; not saving it.  The last good checkpoint is env step "
                f"{run.checkpointer.latest_step()} in {run.checkpointer.directory}."
            )
        run.checkpointer.save(int(one.env_step), one.train, _extras(one, run.eval_returns))
    for run in runs:
        run.checkpointer.wait()


__all__ = [
    "Cadence",
    "DeviceLoop",
    "DeviceNormalizer",
    "DeviceReplay",
    "LoopState",
    "replay_add",
    "replay_init",
    "replay_sample_flat",
    "replay_sample_sequences",
    "train_device",
]
