"""Evaluate a trained agent::

    python -m wm_jax.evaluate --workdir=runs/cartpole --episodes=10
    python -m wm_jax.evaluate --workdir=runs/cartpole --which=best  # the best evaluated agent
    python -m wm_jax.evaluate --workdir=runs/cartpole --gif=episode.gif   # + an episode's frames
    python -m wm_jax.evaluate --workdir=exported_bundle --env_id=CartPole-v1

Loads the newest checkpoint of a run (or ``--step``, or an exported bundle: see
:mod:`wm_jax.inference`), runs ``--episodes`` episodes with the deterministic policy (or
``--stochastic``), prints mean ± std of the return, and can write one episode as an animated GIF
of the env's ``rgb_array`` frames (classic-control envs need ``pip install pygame`` to render).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import app, flags, logging

from wm_jax import cli
from wm_jax.env_ids import GYMNAX_PREFIX
from wm_jax.env_make import make_env
from wm_jax.inference import Policy, load_policy
from wm_jax.training_eval import env_problem
from wm_jax.vector_env import UNLIMITED_EPISODE_STEPS, VectorEnv, cut_message, time_limit


def evaluate_policy(
    policy: Policy,
    episodes: int = 10,
    seed: int = 0,
    env_id: str | None = None,
    deterministic: bool = True,
) -> tuple[float, float, list[float]]:
    """Runs ``episodes`` episodes (one per env of a sync vector env) and returns
    ``(mean, std, returns)`` of their undiscounted returns."""
    if episodes < 1:
        raise ValueError(f"episodes must be at least 1, got {episodes}")
    env_kwargs = dict(policy.config.get("env_kwargs", {}))
    if env_id:  # another env than the run's: it must have the spaces the policy was built for
        problem = env_problem(env_id, env_kwargs, policy.spec, "the policy's")
        if problem is not None:
            raise ValueError(f"cannot evaluate this policy on {env_id}: {problem}")
    env_id = policy.env_id_to_make(env_id)
    policy.reset()
    with VectorEnv(env_id, episodes, seed, "sync", env_kwargs) as env:
        values = env.run_episodes(
            lambda obs, t: policy.agent_actions(
                obs, jax.random.fold_in(jax.random.PRNGKey(seed), t), deterministic
            )
        )
    return float(values.mean()), float(values.std()), [float(v) for v in values]


def record_episode(
    policy: Policy, path: str, seed: int = 0, env_id: str | None = None, fps: int = 30
) -> tuple[float, int]:
    """Plays one deterministic episode with ``render_mode="rgb_array"`` and writes its frames as
    an animated GIF to ``path``; returns ``(return, frames)``."""
    from PIL import Image

    env_id = policy.env_id_to_make(env_id)
    if env_id.startswith(GYMNAX_PREFIX):
        raise ValueError(
            f"{env_id} cannot be rendered: GIFs need a gymnasium env with rgb_array rendering "
            "(gymnax envs have none); evaluate without --gif, or pass --env_id of a gymnasium twin"
        )
    env_kwargs = dict(policy.config.get("env_kwargs", {}))
    # make_env: with env_kwargs["pixels"] the policy sees the resized render, the GIF full frames.
    env = make_env(env_id, env_kwargs, render_mode="rgb_array")
    try:
        obs, _ = env.reset(seed=seed)
        policy.reset()
        frames, total, done = [env.render()], 0.0, False
        cap = UNLIMITED_EPISODE_STEPS if time_limit(env_id, env_kwargs) is None else None
        while not done:
            if cap is not None and len(frames) > cap:  # as VectorEnv.run_episodes cuts it
                logging.warning(cut_message(env_id, cap, 1))
                break
            obs, reward, terminated, truncated, _ = env.step(policy.act(obs))
            total += float(reward)
            done = terminated or truncated
            frames.append(env.render())
    finally:
        env.close()
    images = [Image.fromarray(np.asarray(f, np.uint8)) for f in frames]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return total, len(images)


_WORKDIR = flags.DEFINE_string("workdir", None, "run directory or exported policy bundle")
_EPISODES = flags.DEFINE_integer("episodes", 10, "episodes to evaluate")
_WHICH = flags.DEFINE_enum(
    "which", "last", ["last", "best"], "a run's newest checkpoint, or its best evaluated agent"
)
_STEP = flags.DEFINE_integer("step", None, "checkpoint step (default: the newest)")
_SEED = flags.DEFINE_integer("seed", 0, "seed of the evaluation episodes")
_ENV_ID = flags.DEFINE_string("env_id", None, "environment id (default: the run's)")
_STOCHASTIC = flags.DEFINE_bool("stochastic", False, "sample actions instead of the mode")
_ALLOW_IMPORTS = flags.DEFINE_list(
    "allow_imports",
    [],
    "modules the run's files name (config.imports, a module:EnvId env) that may be imported: "
    "importing runs their code, so only name modules you trust",
)
_GIF = flags.DEFINE_string(
    "gif", None, "write one episode as a GIF here (relative paths go into --workdir)"
)


def main(argv):
    if len(argv) > 1:
        cli.usage_exit(f"unexpected arguments: {argv[1:]}")
    if not _WORKDIR.value:
        cli.usage_exit("--workdir is required")
    cli.offscreen_rendering()
    try:
        policy = load_policy(_WORKDIR.value, _STEP.value, _ALLOW_IMPORTS.value, _WHICH.value)
        mean, std, returns = evaluate_policy(
            policy, _EPISODES.value, _SEED.value, _ENV_ID.value, not _STOCHASTIC.value
        )
    except (FileNotFoundError, ValueError) as err:  # UntrustedImportError is a ValueError
        cli.usage_exit(str(err))
    print(
        f"{_ENV_ID.value or policy.config.env_id}, checkpoint {policy.step}: return "
        f"{mean:.1f} ± {std:.1f} over {len(returns)} episodes"
    )
    if _GIF.value:
        path = _GIF.value
        if not os.path.isabs(path):
            path = os.path.join(_WORKDIR.value, path)
        try:
            total, frames = record_episode(policy, path, _SEED.value, _ENV_ID.value)
        except ValueError as err:
            cli.usage_exit(str(err))
        print(f"wrote {path} ({frames} frames, return {total:.1f})")


def run():
    """Console-script entry point (``wm-jax-evaluate``)."""
    app.run(main)


if __name__ == "__main__":
    run()
