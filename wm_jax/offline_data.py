"""The datasets of offline training (:mod:`wm_jax.offline`): ``run:<workdir>`` restores only the
replay (and normaliser) of an earlier run's newest checkpoint, a partial orbax restore, never
pickle; ``minari:<id>`` converts a local minari dataset's episodes (termination -> ``cont = 0``,
truncation keeps ``cont = 1``; every episode's last step ends sequence windows).  Either fills a
:class:`~wm_jax.replay.ReplayBuffer`, so batches are sampled exactly as in the online loop, and
the spaces come from the dataset (the run's ``env_spec.json``, the minari dataset's spaces): no
env is created.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from wm_jax.env_spec import EnvSpec, UnsupportedSpaceError, from_env_action, spec_from_spaces
from wm_jax.inference import _partial, spec_from_json
from wm_jax.replay import ReplayBuffer
from wm_jax.types import TrainState

__all__ = [
    "Dataset",
    "DatasetError",
    "episodes_to_replay",
    "load_dataset",
    "load_minari_dataset",
    "load_run_dataset",
    "parse_dataset",
    "restore_run_state",
    "stored_observations",
]

SOURCES = ("run", "minari")
MINARI_HINT = 'minari datasets need the minari package: pip install "minari[hdf5]"'


class DatasetError(ValueError):
    """A dataset that cannot be found, read or used; the message names it and the fix."""


@dataclasses.dataclass
class Dataset:
    """A fixed dataset ready to train on: the replay it fills and what it was recorded in."""

    source: str  # the dataset argument, e.g. "run:/abs/workdir" or "minari:cartpole/random-v0"
    replay: ReplayBuffer
    spec: EnvSpec
    env_id: str | None  # the env it was recorded in (for evaluation), when known
    env_kwargs: dict[str, Any]
    run_dir: str | None = None  # run: sources only
    run_step: int | None = None  # the run checkpoint the replay came from
    run_normalizer: dict[str, np.ndarray] | None = None  # run: sources only


def parse_dataset(dataset: str) -> tuple[str, str]:
    """``"run:<workdir>"`` or ``"minari:<dataset_id>"`` -> ``(source, value)``."""
    source, sep, value = str(dataset).partition(":")
    if not sep or source not in SOURCES or not value:
        raise DatasetError(
            f"dataset {dataset!r}: expected run:<workdir of an earlier wm_jax run> or "
            "minari:<minari dataset id>, e.g. run:runs/cartpole or minari:cartpole/random-v0"
        )
    return source, value


def read_json(path: str) -> dict[str, Any]:
    """A run directory's JSON file (``config.json``, ``env_spec.json``) as a dict."""
    with open(path) as f:
        return json.load(f)


def _run_manager(run_dir: str) -> ocp.CheckpointManager:
    """A reading manager for another run's checkpoints: unlike :class:`Checkpointer` it never
    cleans temporary directories, which may belong to a save of that run still in progress."""
    return ocp.CheckpointManager(
        os.path.join(run_dir, "checkpoints"),
        item_handlers={
            "state": ocp.PyTreeCheckpointHandler(),
            "extras": ocp.PyTreeCheckpointHandler(),
        },
        options=ocp.CheckpointManagerOptions(create=False),
    )


def _check_run_dir(run_dir: str) -> None:
    for name in ("config.json", "env_spec.json", "checkpoints"):
        if not os.path.exists(os.path.join(run_dir, name)):
            raise DatasetError(
                f"dataset run:{run_dir}: not a wm_jax run directory with checkpoints ({name} is "
                "missing); give the --workdir of an earlier wm_jax.train or wm_jax.offline run"
            )


def _as_numpy(tree) -> Any:
    return jax.tree.map(np.asarray, tree)


def load_run_dataset(run_dir: str, step: int | None = None) -> Dataset:
    """The replay (and normaliser) of a run's newest checkpoint, or ``step``'s; nothing else of
    the checkpoint is read."""
    run_dir = os.path.abspath(run_dir)
    _check_run_dir(run_dir)
    config = read_json(os.path.join(run_dir, "config.json"))
    spec = spec_from_json(read_json(os.path.join(run_dir, "env_spec.json")))
    manager = _run_manager(run_dir)
    try:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise DatasetError(
                f"dataset run:{run_dir}: {run_dir}/checkpoints holds no checkpoint yet; train "
                "that run until it writes one (config.checkpoint_every)"
            )
        meta = manager.item_metadata(step)["extras"]
        wanted = {k: meta[k] for k in ("replay", "normalizer")}
        # As host numpy arrays in their saved dtypes (int64 counters stay int64 without x64).
        as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), wanted)
        args = ocp.args.PyTreeRestore(item=wanted, restore_args=as_numpy, partial_restore=True)
        restored = manager.restore(step, args=ocp.args.Composite(extras=args))["extras"]
    finally:
        manager.close()
    saved = _as_numpy(restored["replay"])
    num_envs, slots = int(saved["num_envs"]), int(saved["slots_per_env"])
    replay = ReplayBuffer(
        num_envs * slots, num_envs, spec.obs_shape, spec.obs_dtype, int(saved["action_dim"])
    )
    replay.load_state_dict(saved)
    return Dataset(
        source=f"run:{run_dir}",
        replay=replay,
        spec=spec,
        env_id=config.get("env_id"),
        env_kwargs=dict(config.get("env_kwargs") or {}),
        run_dir=run_dir,
        run_step=int(step),
        run_normalizer=_as_numpy(restored["normalizer"]),
    )


def restore_run_state(run_dir: str, step: int, template: TrainState) -> TrainState:
    """The full train state of a run's checkpoint ``step``, restored against ``template`` (a
    fresh init of the same networks) so ``TrainState`` and the optax states come back typed."""
    manager = _run_manager(run_dir)
    try:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        return manager.restore(step, args=ocp.args.Composite(state=_partial(abstract)))["state"]
    finally:
        manager.close()


def episodes_to_replay(episodes: Iterable[Any], spec: EnvSpec) -> ReplayBuffer:
    """Minari-style episodes (``observations`` of length ``T + 1``, ``actions``, ``rewards``,
    ``terminations``, ``truncations``) as one replay ring holding them in order.

    Termination sets ``cont = 0``, truncation keeps ``cont = 1``; every episode's last step ends
    sequence windows, also when the recording stopped mid-episode (neither flag set).  Actions
    become the agent's float vectors (one-hot, or ``[-1, 1]`` for a ``Box``).
    """
    keys = ("obs", "next", "act", "rew", "cont", "end")
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for i, ep in enumerate(episodes):
        where = f"episode {getattr(ep, 'id', i)}"
        if not isinstance(ep.observations, np.ndarray):
            raise DatasetError(
                f"{where}: observations are {type(ep.observations).__name__}, not an array; "
                "wm_jax needs a Box observation space"
            )
        rewards = np.asarray(ep.rewards, np.float32)
        steps = len(rewards)
        obs = np.asarray(ep.observations)
        if obs.shape != (steps + 1, *spec.obs_shape):
            raise DatasetError(
                f"{where}: observations have shape {obs.shape}, expected "
                f"{(steps + 1, *spec.obs_shape)} ({steps} steps + the final observation)"
            )
        if steps == 0:
            continue
        if not (np.isfinite(rewards).all() and np.isfinite(obs.astype(np.float64)).all()):
            raise DatasetError(f"{where}: holds NaN or Inf observations or rewards")
        terminated = np.asarray(ep.terminations, bool).reshape(steps)
        ended = terminated | np.asarray(ep.truncations, bool).reshape(steps)
        ended[-1] = True
        actions = np.asarray(ep.actions)
        parts["obs"].append(obs[:-1].astype(spec.obs_dtype, copy=False))
        parts["next"].append(obs[1:].astype(spec.obs_dtype, copy=False))
        parts["act"].append(from_env_action(actions.reshape(steps, -1), spec))
        parts["rew"].append(rewards)
        parts["cont"].append(1.0 - terminated.astype(np.float32))
        parts["end"].append(ended)
    total = sum(len(r) for r in parts["rew"])
    if total == 0:
        raise DatasetError("the dataset holds no transitions")
    replay = ReplayBuffer(total, 1, spec.obs_shape, spec.obs_dtype, spec.action_dim)
    replay.load_state_dict(
        {
            "obs": np.concatenate(parts["obs"])[None],
            "next_obs": np.concatenate(parts["next"])[None],
            "action": np.concatenate(parts["act"])[None],
            "reward": np.concatenate(parts["rew"])[None],
            "cont": np.concatenate(parts["cont"])[None],
            "episode_end": np.concatenate(parts["end"])[None],
            "write_pos": np.zeros(1, np.int64),  # full ring: the oldest transition is slot 0
            "count": np.full(1, total, np.int64),
            "num_envs": 1,
            "slots_per_env": total,
            "action_dim": spec.action_dim,
        }
    )
    return replay


def _import_minari():
    try:
        import minari
    except ImportError as err:
        raise ImportError(MINARI_HINT) from err
    return minari


def load_minari_dataset(dataset_id: str) -> Dataset:
    """A local minari dataset (``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets``) converted by
    :func:`episodes_to_replay`; its spaces give the spec, its env spec the env for evaluation."""
    minari = _import_minari()
    try:
        data = minari.load_dataset(dataset_id)
    except FileNotFoundError as err:
        raise DatasetError(
            f"dataset minari:{dataset_id} is not stored locally ({err}); download it first with "
            f"`minari download {dataset_id}` (or set MINARI_DATASETS_PATH to where it is)"
        ) from err
    try:
        spec = spec_from_spaces(data.observation_space, data.action_space)
    except UnsupportedSpaceError as err:
        raise DatasetError(f"dataset minari:{dataset_id}: {err}") from err
    env_spec = data.env_spec
    env_id, env_kwargs = None, {}
    if env_spec is not None:
        env_id = env_spec.id
        spec = dataclasses.replace(spec, max_episode_steps=env_spec.max_episode_steps)
        try:
            env_kwargs = json.loads(json.dumps(dict(env_spec.kwargs or {})))
        except TypeError:
            logging.warning("minari:%s: env kwargs are not JSON; not recorded", dataset_id)
    return Dataset(
        source=f"minari:{dataset_id}",
        replay=episodes_to_replay(data.iterate_episodes(), spec),
        spec=spec,
        env_id=env_id,
        env_kwargs=env_kwargs,
    )


def load_dataset(dataset: str) -> Dataset:
    """``run:<workdir>`` or ``minari:<dataset_id>`` as a :class:`Dataset`."""
    source, value = parse_dataset(dataset)
    if source == "run":
        return load_run_dataset(value)
    return load_minari_dataset(value)


def stored_observations(replay: ReplayBuffer) -> np.ndarray:
    """Every stored transition's observation (each env's ring fills from slot 0, so its first
    ``count`` slots are the stored ones)."""
    state = replay.state_dict()
    return np.concatenate([state["obs"][i, :n] for i, n in enumerate(state["count"])])
