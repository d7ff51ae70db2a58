"""The config of an offline run (:mod:`wm_jax.offline`): the schedule counted in updates instead of
env steps (its warmup is ``offline.world_model_only_updates``, world model only, and
``critic_real_mix`` anneals over the next ``offline.transition_updates``), the config the update
steps are built from, and the checks of a config and workdir against the dataset it trains on.
"""

from __future__ import annotations

import copy
import os

import ml_collections

from wm_jax.config import ConfigError, get_config, validate, validate_for_env
from wm_jax.offline_data import Dataset, read_json
from wm_jax.run_dir import has_checkpoint
from wm_jax.safe_load import check_env_id
from wm_jax.schedule import UpdateCounts, update_counts


def offline_schedule(config) -> ml_collections.ConfigDict:
    """``config.schedule`` with its thresholds counted in updates: warmup (world model only) for
    ``offline.world_model_only_updates`` (none with a frozen world model, which also gets no
    world-model updates), then ``critic_real_mix`` anneals over ``offline.transition_updates``.
    ``schedule.early_late_boundary`` (multi_update) is read as an update count as well."""
    o = config.offline
    s = ml_collections.ConfigDict(config.schedule.to_dict())
    s.warmup_steps = 0 if o.freeze_world_model else o.world_model_only_updates
    s.transition_steps = s.warmup_steps + o.transition_updates
    if o.freeze_world_model:
        s.wm_updates = s.early_wm_updates = 0
    return s


def offline_agent_config(config) -> ml_collections.ConfigDict:
    """The config the update steps are built from: the offline schedule in place of the online
    one and one "env step" per update, so what :func:`wm_jax.update.expected_updates` derives
    from a run's length (the ``lr_final_scale`` anneal) spans the offline run's updates."""
    a = copy.deepcopy(config)
    with a.unlocked():
        a.schedule = offline_schedule(config)
        a.total_env_steps = config.offline.updates
        a.prefill_steps = 0
        a.train_ratio = 1.0
    return a


def offline_counts(update: int, config, schedule=None) -> UpdateCounts:
    """Updates per batch at offline update ``update`` (:func:`wm_jax.schedule.update_counts`);
    with ``offline.train_world_model=False`` the world model stops after its own phase."""
    schedule = offline_schedule(config) if schedule is None else schedule
    counts = update_counts(update, schedule)
    if not config.offline.train_world_model and update >= schedule.warmup_steps:
        counts = counts._replace(world_model=0)
    return counts


def prepare_config(
    config, data: Dataset, allow_imports: str | list[str] | None = None
) -> ml_collections.ConfigDict:
    """A validated copy of ``config`` that records the dataset's env (for evaluation) and fits
    the dataset; raises :class:`ConfigError` naming the field otherwise, and
    :class:`UntrustedImportError` if the dataset's env id names a module not allowed."""
    c = validate(copy.deepcopy(config))
    # The dataset's file names the env: its module is never imported unless allowed.
    check_env_id(data.env_id, allow_imports, f"dataset {data.source}: its env id")
    with c.unlocked():
        if "offline" not in c:  # e.g. a config.json written before the section existed
            c.offline = get_config().offline
        if data.env_id is not None:
            c.env_id = data.env_id
            c.env_kwargs = ml_collections.ConfigDict(data.env_kwargs)
    o = c.offline
    if o.freeze_world_model and data.run_dir is None:
        raise ConfigError(
            f"config.offline.freeze_world_model: fine-tuning needs a run's world model, but "
            f"{data.source} is not a run; use --dataset=run:<workdir of that run>"
        )
    if not o.freeze_world_model and o.world_model_only_updates == 0 and not o.train_world_model:
        raise ConfigError(
            "config.offline.train_world_model: with offline.world_model_only_updates=0 the "
            "world model would never be trained; raise world_model_only_updates, set "
            "train_world_model=True, or fine-tune a run with freeze_world_model=True"
        )
    check = copy.deepcopy(c)
    check.diagnostics.open_loop_every = 0  # offline.open_loop_every is checked below
    validate_for_env(check, data.spec.max_episode_steps)
    slots = data.replay.slots_per_env
    if c.sequence_mode and c.sequence_length > slots:
        raise ConfigError(
            f"config.sequence_length: {c.sequence_length} is longer than the dataset's "
            f"{slots} transitions per ring ({data.source}); use at most {slots}"
        )
    if o.open_loop_every and c.diagnostics.open_loop_horizon > slots:
        raise ConfigError(
            f"config.diagnostics.open_loop_horizon: {c.diagnostics.open_loop_horizon} is longer "
            f"than the dataset's {slots} transitions per ring ({data.source}); lower it or set "
            "config.offline.open_loop_every=0"
        )
    return c


def check_workdir(workdir: str, data: Dataset) -> None:
    """Refuses a workdir that holds an online run or an offline run of another dataset:
    resuming there would mix two runs' checkpoints."""
    meta = os.path.join(workdir, "offline.json")
    if os.path.exists(meta):
        previous = read_json(meta).get("dataset")
        if previous != data.source:
            raise ConfigError(
                f"--workdir: {workdir} holds an offline run of {previous}, not "
                f"{data.source}; use a new --workdir or the same dataset to resume"
            )
    elif has_checkpoint(workdir):
        raise ConfigError(
            f"--workdir: {workdir} holds checkpoints of an online run; write the offline "
            "run to a new --workdir"
        )
