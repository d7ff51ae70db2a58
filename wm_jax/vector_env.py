"""``N`` gymnasium (or gymnax) environments stepped together in wm_jax's conventions
(:class:`VectorEnv`): float agent actions in (see :mod:`wm_jax.env_spec`), transitions that never
cross an episode boundary out, every episode started from its own seed, and exact resume from a
checkpoint by replaying the current episodes' actions.  Envs are made by :mod:`wm_jax.env_make`.

Resets: one explicit seed per episode
-------------------------------------
:class:`VectorEnv` builds its gymnasium vector env with
``autoreset_mode=gymnasium.vector.AutoresetMode.DISABLED`` and resets finished envs itself.
Episode ``e`` (counting from 0) of env ``i`` always starts with ``reset(seed=s)`` where
``s = episode_seed(seed, i, e)`` = ``np.random.SeedSequence([seed, i, e]).generate_state(1)[0]``
(see :func:`episode_seed`).  After each :meth:`VectorEnv.step`, the envs whose episode ended
(terminated or truncated) are reset in the same call, and only those, through
``vector_env.reset(seed=[...], options={"reset_mask": done})``.  The returned transition keeps
the episode's true final observation as ``next_obs`` (a transition never crosses an episode
boundary) and ``StepOutput.obs``, the observation to act on next, is the reset observation for
those envs.  Every call to ``step`` is thus a real transition for every env (no action ignored,
no step discarded, the batch stays dense); ``EnvTransition.valid`` is kept in the output (always
True) so consumers such as the replay buffer keep one interface.

Why not gymnasium's own autoreset: its autoresets are unseeded and continue each env's RNG,
whose state a checkpoint cannot hold; with one seed per episode a VectorEnv resumes exactly by
replaying the current episodes' actions (:mod:`wm_jax.vector_env_resume`).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable
from typing import Any, NamedTuple

import gymnasium
import numpy as np
from absl import logging

from wm_jax.env_guard import EnvGuard, InvalidEnvDataError
from wm_jax.env_ids import GYMNAX_PREFIX
from wm_jax.env_make import (
    UNKNOWN_ENV_ERRORS,
    agent_actions,
    async_context,
    check_no_pixels,
    env_kwargs_error,
    make_env,
    observations_as_box,
    pixel_size,
    unknown_env_error,
)
from wm_jax.env_spec import (
    EnvSpec,
    UnsupportedSpaceError,
    check_actions,
    spec_from_spaces,
    to_env_action,
)
from wm_jax.vector_env_resume import ReplayResume

__all__ = [
    "EnvStepError",
    "EnvTransition",
    "EvaluationStopped",
    "StepOutput",
    "VectorEnv",
    "episode_seed",
]

_VECTOR_MODES = ("sync", "async")


class EnvStepError(RuntimeError):
    """The environment itself raised inside ``reset()`` or ``step()``."""


class EvaluationStopped(Exception):
    """:meth:`VectorEnv.run_episodes` was asked to stop before its episodes ended."""


class EnvTransition(NamedTuple):
    """One transition per env, all ``[N, ...]`` numpy arrays.

    The field order matches :meth:`wm_jax.replay.ReplayBuffer.add`, so
    ``buffer.add(*out.transition)`` stores a step.
    """

    obs: np.ndarray  # [N, *obs_shape]  the observation the action was taken in
    action: np.ndarray  # [N, A] float32, the agent's action as given
    reward: np.ndarray  # [N] float32
    next_obs: np.ndarray  # [N, *obs_shape]  true next obs (final obs at episode end)
    terminated: np.ndarray  # [N] bool
    truncated: np.ndarray  # [N] bool
    valid: np.ndarray  # [N] bool  False for a step that is not a real transition


class StepOutput(NamedTuple):
    """What :meth:`VectorEnv.step` returns."""

    transition: EnvTransition
    obs: np.ndarray  # [N, *obs_shape]  to act on next: the reset obs where an episode just ended
    episode_returns: list[float]  # undiscounted returns of episodes that finished this step
    episode_lengths: list[int]  # their lengths in steps


def episode_seed(seed: int, env_index: int, episode: int) -> int:
    """The reset seed of episode ``episode`` (from 0) of env ``env_index`` in a :class:`VectorEnv`.

    ``int(np.random.SeedSequence([seed, env_index, episode]).generate_state(1)[0])``: a 32-bit
    seed that depends only on the three numbers, so any episode can be restarted on its own.

    Raises:
        ValueError: If any argument is negative.
    """
    if seed < 0 or env_index < 0 or episode < 0:
        raise ValueError(
            f"seed, env index and episode must be >= 0, got {(seed, env_index, episode)}."
        )
    return int(np.random.SeedSequence([seed, env_index, episode]).generate_state(1)[0])


def _check_seed(seed: int) -> int:
    seed = operator.index(seed)
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2**63), got {seed}.")
    return seed


# Where an evaluation episode of an env without a time limit is cut (:meth:`VectorEnv.run_episodes`,
# :func:`wm_jax.evaluate.record_episode`).
UNLIMITED_EPISODE_STEPS = 10_000


def time_limit(env_id: str, env_kwargs: dict[str, Any] | None) -> int | None:
    """The time limit a gymnasium ``env_id`` declares (its registration's ``max_episode_steps``,
    or ``env_kwargs["max_episode_steps"]``, which gymnasium.make turns into one), or None."""
    override = (env_kwargs or {}).get("max_episode_steps")
    if override:
        return int(override)
    try:
        return gymnasium.spec(env_id).max_episode_steps
    except gymnasium.error.Error:
        return None


def cut_message(env_id: str, steps: int, episodes: int) -> str:
    return (
        f"{env_id} declares no time limit and {episodes} evaluation episode(s) ran {steps} steps: "
        "cut there and scored with their return so far; give it one with "
        "--env_kwargs='{\"max_episode_steps\": N}'"
    )


class VectorEnv(ReplayResume):
    """``N`` copies of a gymnasium env stepped together, in wm_jax's conventions.

    Every episode starts with an explicit seeded reset: episode ``e`` of env ``i`` is reset with
    ``episode_seed(seed, i, e)`` (see :func:`episode_seed` and the module docstring), so a seed
    fixes the trajectory for a fixed sequence of actions, and :meth:`state_dict` /
    :meth:`load_state_dict` resume it exactly.

    Args:
        env_id: A registered gymnasium id, ``"module:EnvId"`` or ``"gymnax:Name"`` (see the
            module docstring).
        num_envs: Number of parallel envs ``N``.
        seed: Base seed, an integer in ``[0, 2**63)``.
        mode: ``"sync"`` (in-process) or ``"async"`` (one subprocess per env); gymnax envs
            always run in-process, vmapped on the JAX device.
        env_kwargs: Keyword arguments for ``gymnasium.make`` (e.g. ``max_episode_steps``), or
            for a gymnax id its ``EnvParams`` fields and constructor arguments.
        check: What to do with NaN/Inf or out-of-range observations and rewards: ``"raise"``,
            ``"sanitize"`` or ``"off"`` (see :mod:`wm_jax.env_guard`).
        max_abs_reward: Rewards of larger magnitude are out of range.

    Raises:
        ValueError: Unknown ``env_id`` or ``mode``, ``num_envs < 1`` or a bad ``seed``.
        UnsupportedSpaceError: If the env's spaces are not supported.
    """

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        seed: int,
        mode: str = "sync",
        env_kwargs: dict[str, Any] | None = None,
        check: str = "raise",
        max_abs_reward: float = 1e6,
    ) -> None:
        if mode not in _VECTOR_MODES:
            raise ValueError(f"mode must be one of {_VECTOR_MODES}, got {mode!r}.")
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}.")
        seed = _check_seed(seed)
        context = async_context(env_id, mode)  # spawn for JAX envs: a forked JAX hangs
        spawn = {} if context is None else {"context": context}
        try:
            if env_id.startswith(GYMNAX_PREFIX):
                from wm_jax.gymnax_env import GymnaxVectorEnv

                check_no_pixels(env_id, env_kwargs)
                self._env = GymnaxVectorEnv(env_id, num_envs, env_kwargs)
            elif pixel_size(env_kwargs)[0] is not None:
                # Wrappers go inside each sub-env; make_vec has no hook for our resize.
                vector = (
                    gymnasium.vector.SyncVectorEnv
                    if mode == "sync"
                    else gymnasium.vector.AsyncVectorEnv
                )
                make = functools.partial(make_env, env_id, dict(env_kwargs))
                make().close()  # fail here, with make_env's message, not inside a worker
                self._env = vector(
                    [make] * num_envs,
                    autoreset_mode=gymnasium.vector.AutoresetMode.DISABLED,
                    **spawn,
                )
            else:
                self._env = gymnasium.make_vec(
                    env_id,
                    num_envs=num_envs,
                    vectorization_mode=mode,
                    vector_kwargs={
                        "autoreset_mode": gymnasium.vector.AutoresetMode.DISABLED,
                        **spawn,
                    },
                    # as make_env: Discrete & co. flattened, multi-part actions joined, Box actions
                    # flat and finite
                    wrappers=[agent_actions, observations_as_box],
                    **pixel_size(env_kwargs)[1],  # "pixels": 0 / false is ours, not the env's
                )
        except UNKNOWN_ENV_ERRORS as err:
            raise unknown_env_error(env_id, err) from err
        except TypeError as err:  # the env's constructor refused env_kwargs
            raise env_kwargs_error(env_id, pixel_size(env_kwargs)[1], err) from err
        try:
            self._spec = spec_from_spaces(
                self._env.single_observation_space, self._env.single_action_space
            )
        except UnsupportedSpaceError:
            self._env.close()
            raise
        space = self._env.single_observation_space
        self.guard = EnvGuard(check, env_id, space.low, space.high, max_abs_reward)
        self._env_action_dtype = np.dtype(self._env.single_action_space.dtype)
        self._env_action_shape = tuple(self._env.single_action_space.shape)
        self.env_id = env_id
        gymnax = env_id.startswith(GYMNAX_PREFIX)  # gymnax envs always end their episodes
        self.time_limit = None if gymnax else time_limit(env_id, env_kwargs)
        self._unlimited = not gymnax and self.time_limit is None
        self.num_envs = num_envs
        self.mode = mode
        self._seed = seed
        self._obs: np.ndarray | None = None
        # Index of each env's current episode; -1 until the first reset().
        self._episodes = np.full(num_envs, -1, dtype=np.int64)
        self._returns = np.zeros(num_envs, dtype=np.float64)
        self._lengths = np.zeros(num_envs, dtype=np.int64)
        # Env actions of each env's current episode: self._history[i, :self._lengths[i]].
        self._history = np.zeros(
            (num_envs, 16, *self._env_action_shape), dtype=self._env_action_dtype
        )

    @property
    def spec(self) -> EnvSpec:
        """The validated spaces of one env."""
        return self._spec

    @property
    def seed(self) -> int:
        """The base seed of the episode seeds (the constructor's, or the last ``reset(seed)``)."""
        return self._seed

    def _episode_seeds(self) -> list[int]:
        return [episode_seed(self._seed, i, int(e)) for i, e in enumerate(self._episodes)]

    def _reset_envs(self, mask: np.ndarray) -> np.ndarray:
        """Resets the envs in ``mask`` with their current episode seeds; returns all obs.

        Every episode start goes through this one call shape (a masked reset, which passes
        ``options={}`` to the env), so an episode begins identically however it was reached.
        """
        obs, _ = self._guarded(
            self._env.reset,
            seed=self._episode_seeds(),
            options={"reset_mask": np.array(mask, dtype=np.bool_)},
        )
        obs = np.array(obs, dtype=self._spec.obs_dtype)
        return self.guard.observations(obs, "a reset")

    def _guarded(self, fn, *args, **kwargs):
        """Calls the vector env, turning gymnasium's shape errors into a message about spaces."""
        try:
            return fn(*args, **kwargs)
        except ValueError as err:
            space = self._env.single_observation_space
            raise InvalidEnvDataError(
                f"{self.env_id} returned data that does not fit its declared spaces ({err}). Its "
                f"observation_space is {space} (shape {space.shape}, dtype {space.dtype}): make "
                "reset() and step() return observations of exactly that shape, or fix the space, "
                "and step() a scalar reward (a float, not an array of shape (1,))."
            ) from err
        except (InvalidEnvDataError, KeyboardInterrupt):
            raise
        except Exception as err:  # the env's own code failed: name it, keep the cause
            raise EnvStepError(
                f"the environment {self.env_id} raised {type(err).__name__} inside "
                f"{getattr(fn, '__name__', 'a call')}() of one of its {self.num_envs} envs: {err}"
            ) from err

    def reset(self, seed: int | None = None) -> np.ndarray:
        """Starts a new episode in every env and returns the first observations ``[N, ...]``.

        With ``seed``, it becomes the base seed and every env restarts at episode 0.  Without,
        the first call starts episode 0 of the constructor's seed and later calls start each
        env's next episode.  Episodes cut short by a reset are not reported as finished.
        """
        if seed is not None:
            self._seed = _check_seed(seed)
            self._episodes[:] = 0
        else:
            self._episodes += 1
        self._obs = self._reset_envs(np.ones(self.num_envs, dtype=bool))
        self._returns[:] = 0.0
        self._lengths[:] = 0
        return self._obs.copy()

    def step(self, actions: np.ndarray) -> StepOutput:
        """Steps every env with float agent actions ``[N, A]`` (see :func:`to_env_action`).

        Envs whose episode ends are reset with their next episode's seed before returning.
        """
        if self._obs is None:
            raise RuntimeError("Call reset() before step().")
        actions = check_actions(actions, self._spec)
        if actions.shape[0] != self.num_envs:
            raise ValueError(f"Expected actions for {self.num_envs} envs, got {actions.shape[0]}.")
        env_actions = to_env_action(actions, self._spec).astype(self._env_action_dtype)
        next_obs, reward, terminated, truncated, _ = self._guarded(self._env.step, env_actions)

        where = f"episode step {int(self._lengths.max()) + 1}"
        next_obs = self.guard.observations(np.array(next_obs, dtype=self._spec.obs_dtype), where)
        terminated = np.asarray(terminated, dtype=bool)
        truncated = np.asarray(truncated, dtype=bool)
        reward = self.guard.rewards(np.asarray(reward, dtype=np.float32), where)
        self._record(env_actions)
        self._returns += reward
        self._lengths += 1

        done = terminated | truncated
        finished = np.flatnonzero(done)
        episode_returns = [float(self._returns[i]) for i in finished]
        episode_lengths = [int(self._lengths[i]) for i in finished]
        obs = next_obs.copy()
        if finished.size:
            self._episodes[finished] += 1
            self._returns[finished] = 0.0
            self._lengths[finished] = 0
            obs[finished] = self._reset_envs(done)[finished]

        transition = EnvTransition(
            obs=self._obs,
            action=actions.astype(np.float32),
            reward=reward,
            next_obs=next_obs,
            terminated=terminated,
            truncated=truncated,
            valid=np.ones(self.num_envs, dtype=bool),
        )
        self._obs = obs
        return StepOutput(
            transition=transition,
            obs=obs.copy(),
            episode_returns=episode_returns,
            episode_lengths=episode_lengths,
        )

    def _record(self, env_actions: np.ndarray) -> None:
        """Appends one env action per env to the current episodes' histories."""
        needed = int(self._lengths.max()) + 1
        if needed > self._history.shape[1]:
            grown = np.zeros(
                (self.num_envs, max(needed, 2 * self._history.shape[1]), *self._env_action_shape),
                dtype=self._env_action_dtype,
            )
            grown[:, : self._history.shape[1]] = self._history
            self._history = grown
        self._history[np.arange(self.num_envs), self._lengths] = env_actions

    def run_episodes(
        self,
        act: Callable[[np.ndarray, int], np.ndarray],
        should_stop: Callable[[], bool] | None = None,
    ) -> np.ndarray:
        """Plays one episode in every env from a fresh reset, with ``act(obs, t)`` giving the
        agent's actions ``[N, A]`` at vector step ``t``; returns each episode's undiscounted
        return ``[N]`` (envs that finish early idle until the last one is done).  Raises
        :class:`EvaluationStopped` as soon as ``should_stop()`` is true (e.g. on SIGTERM)."""
        # An env that declares no time limit (CliffWalking) can keep a deterministic policy
        # forever (into a wall): its episodes are cut, scored so far, where the loop would hang.
        cap = UNLIMITED_EPISODE_STEPS if self._unlimited else None
        obs = self.reset()
        done = np.zeros(self.num_envs, bool)
        running = np.zeros(self.num_envs)
        returns = np.zeros(self.num_envs)
        t = 0
        while not done.all():
            if cap is not None and t >= cap:
                returns[~done] = running[~done]
                logging.warning(cut_message(self.env_id, cap, int((~done).sum())))
                break
            if should_stop is not None and should_stop():
                raise EvaluationStopped(f"stopped after {t} of the evaluation's vector steps")
            out = self.step(act(obs, t))
            running += np.where(done, 0.0, out.transition.reward)
            ended = (out.transition.terminated | out.transition.truncated) & ~done
            returns[ended] = running[ended]
            done |= ended
            obs = out.obs
            t += 1
        return returns

    def close(self) -> None:
        """Closes the envs (and their worker processes in async mode)."""
        self._env.close()

    def __enter__(self) -> VectorEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
