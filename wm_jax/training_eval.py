"""The evaluation the training loops run (host :mod:`wm_jax.trainer`, offline
:mod:`wm_jax.offline`): episodes of the deterministic policy in fresh seeded envs, the
``eval_return`` row they write, and now and then one of those episodes as a video
(:mod:`wm_jax.episode_video`).  Evaluating a saved agent from outside a run is
:mod:`wm_jax.evaluate`."""

from __future__ import annotations

import jax
import numpy as np

from wm_jax.envs import VectorEnv, make_env_spec
from wm_jax.episode_video import EpisodeRecorder
from wm_jax.shell import crossed

VIDEO_TAG = "eval/episode"


def make_envs(config, num_envs: int, seed: int, mode: str) -> VectorEnv:
    """``num_envs`` envs of ``config.env_id`` as a run makes them (its kwargs and env guard), for
    training and for evaluation."""
    return VectorEnv(
        config.env_id,
        num_envs,
        seed,
        mode,
        dict(config.env_kwargs),
        check=config.env_check,
        max_abs_reward=config.max_abs_reward,
    )


def evaluate(
    config,
    act_fn,
    state,
    normalizer,
    episodes: int,
    seed: int,
    should_stop=None,
    recorder: EpisodeRecorder | None = None,
) -> tuple[float, float, list[float]]:
    """Runs ``episodes`` episodes (one per eval env) with the deterministic policy; raises
    :class:`wm_jax.envs.EvaluationStopped` once ``should_stop()`` is true.  ``recorder`` keeps
    the first env's actions, so its :meth:`~EpisodeRecorder.clip` can replay that episode."""
    mean, std = normalizer.stats()
    key = jax.random.PRNGKey(seed)  # unused by the deterministic policy
    carry = act_fn.initial_carry(episodes)

    def policy(obs, t):
        # One episode per env: only t = 0 starts one (envs that finished idle, unscored).
        nonlocal carry
        actions, carry = act_fn(
            state.wm_params, state.actor_params, carry, obs, mean, std, key, deterministic=True
        )
        actions = np.asarray(actions)
        if recorder is not None:
            recorder.act(actions)
        return actions

    with make_envs(config, episodes, seed, "sync") as env:
        if recorder is not None:
            recorder.begin(env.spec, seed)
        values = env.run_episodes(policy, should_stop)
    return float(values.mean()), float(values.std()), [float(v) for v in values]


def eval_row(mean: float, std: float, episodes: int) -> dict[str, float]:
    """The metrics row of one evaluation (the same names in every loop)."""
    return {
        "eval_return": mean,
        "eval_return_std": std,
        "eval_return_stderr": std / np.sqrt(max(episodes, 1)),
    }


def video_due(video_every: int, eval_every: int, step: int) -> bool:
    """Whether the evaluation at ``step`` records a video: the first evaluation at or after
    each multiple of ``video_every`` (0: never).  Stateless, so a resumed run keeps the
    schedule."""
    return crossed(video_every, step - max(eval_every, 1), step)


def write_clip(writer, recorder: EpisodeRecorder | None, step: int) -> None:
    """Renders the recorded episode (if any) and writes it to ``writer`` as ``eval/episode``."""
    clip = recorder.clip() if recorder is not None else None
    if clip is not None:
        writer.write_video(VIDEO_TAG, clip, step)


def env_problem(
    env_id: str | None, env_kwargs: dict, spec, whose: str = "the dataset's"
) -> str | None:
    """Why episodes of ``env_id`` cannot evaluate an agent built for ``spec`` (``whose``
    spaces: the offline loop's dataset, a loaded policy's run), or None when they can."""
    if not env_id:
        return "the dataset names no env"
    try:
        env_spec = make_env_spec(env_id, dict(env_kwargs))
    except Exception as err:  # unregistered, unsupported spaces, a module that fails, ...
        return f"{env_id} cannot be made ({type(err).__name__}: {err})"
    mine = (tuple(spec.obs_shape), spec.action_dim, spec.discrete)
    theirs = (tuple(env_spec.obs_shape), env_spec.action_dim, env_spec.discrete)
    if mine != theirs:
        return (
            f"{env_id}'s spaces (obs shape, action dim, discrete) {theirs} differ from "
            f"{whose} {mine}"
        )
    return None
