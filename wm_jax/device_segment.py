"""The compiled pieces of the on-device loop (:mod:`wm_jax.device_loop` drives them): the loop
state (:class:`LoopState`), one vector step of acting and gymnax env stepping, one train step,
a *segment* (``n`` iterations in one jitted ``lax.scan``, vmapped over seeds) and deterministic
evaluation episodes, all built once per config by :class:`DeviceLoop`.

Loop semantics, per iteration: ``env_repeat`` vector steps of ``num_envs`` envs (random actions
before ``prefill_steps``, policy samples after), then ``updates_per_iteration`` train steps, with
``env_repeat · num_envs · train_ratio == updates_per_iteration`` (the host loop's train ratio,
:class:`Cadence`).  Transitions never cross episodes: gymnax reports the pre-reset observation
as ``info["final_observation"]``, ``terminated`` sets ``cont = 0`` and a time-limit
``truncated`` does not.  The envs are :class:`wm_jax.gymnax_env.GymnaxTask`, the replay
:mod:`wm_jax.replay_device`, the normaliser :class:`wm_jax.normalizer.DeviceNormalizer`, the
update the host loop's :func:`wm_jax.update.train_step`.
"""

from __future__ import annotations

import dataclasses
import functools
from fractions import Fraction
from typing import Any

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np

from wm_jax.config import ConfigError, validate, validate_for_env
from wm_jax.env_ids import GYMNAX_PREFIX
from wm_jax.env_make import make_env_spec
from wm_jax.gymnax_env import GymnaxTask, make_gymnax
from wm_jax.normalizer import (
    DeviceNormalizer,
    normalizer_init,
    normalizer_stats,
    normalizer_update,
)
from wm_jax.open_loop import make_open_loop_fn
from wm_jax.policy import (
    ActCarry,
    act,
    correlated_at,
    correlated_random_actions,
    explore_correlation,
    greedy_envs,
    initial_carry,
)
from wm_jax.replay_device import (
    DeviceReplay,
    replay_add,
    replay_init,
    replay_sample_flat,
    replay_sample_sequences,
)
from wm_jax.schedule import critic_real_mix
from wm_jax.shell import episode_return_gamma, prepare_batch, record_open_loop
from wm_jax.types import TrainState
from wm_jax.update import init_state, make_agent, train_step

__all__ = ["Cadence", "DeviceLoop", "LoopState", "make_task"]


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
        self.greedy = greedy_envs(c, c.num_envs)  # one process: all its envs are local
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
            replay=replay_init(self.capacity, c.num_envs, self.spec, episode_return_gamma(c)),
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

    def _random_actions(self, key, carry: ActCarry):
        """The prefill's uniform random actions (correlated when ``actor.explore_correlation``
        > 0, as the host loop's ``prefill_actions``) and the carry."""
        rho = explore_correlation(self.config)
        if rho > 0:  # the same correlated noise the policy will explore with
            return correlated_random_actions(carry, key, self.spec.discrete, rho)
        n = carry.action.shape[0]
        if self.spec.discrete:
            idx = jax.random.randint(key, (n,), 0, self.spec.action_dim)
            return jax.nn.one_hot(idx, self.spec.action_dim), carry
        actions = jax.random.uniform(key, (n, self.spec.action_dim), minval=-1.0, maxval=1.0)
        return actions, carry

    def _vector_step(self, prefill: bool, ls: LoopState, _=None):
        c = self.config
        key, act_key, env_key = jax.random.split(ls.key, 3)
        if prefill:
            actions, carry = self._random_actions(act_key, ls.act_carry)
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
                correlated=correlated_at(c, ls.env_step),
                greedy=self.greedy,
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

    def evaluate(self, ls: LoopState, seeds: list[int], num_seeds: int) -> np.ndarray:
        """Returns ``[num_seeds, eval_episodes]`` (or ``[eval_episodes]`` for one seed).

        ``seeds``: each run's evaluation seed, so a vmapped run evaluates on the episodes the
        same run alone would (its own seed's, not the first run's)."""
        episodes = self.config.eval_episodes
        keys = jnp.stack([jax.random.PRNGKey(seed) for seed in seeds])
        if num_seeds > 1:
            fn = jax.vmap(self._evaluate, in_axes=(0, 0, 0, None))
            return np.asarray(fn(ls.train, ls.norm, keys, episodes))
        (key,) = keys
        return np.asarray(self._evaluate(ls.train, ls.norm, key, episodes))


def _round_up(x: int, step: int) -> int:
    return -(-x // step) * step
