"""Offline training from fixed datasets (an online run's replay, a minari dataset) and
imagination-only fine-tuning, all without creating an environment."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import warnings

import gymnasium
import jax
import numpy as np
import pytest
from conftest import REPO, mounted_tmpfs, needs_tmpfs, small_config

import wm_jax
from wm_jax import envs, training_eval
from wm_jax.config import ConfigError
from wm_jax.inference import spec_to_json
from wm_jax.metrics import read_metrics
from wm_jax.offline import (
    DatasetError,
    episodes_to_replay,
    load_dataset,
    offline_agent_config,
    offline_counts,
    restore_run_state,
    train_offline,
)
from wm_jax.update import expected_updates

MINARI_ID = "cartpole/random-v0"


def offline_config(**overrides):
    """small_config made cheaper to compile (no hidden layers, H = 2), counted in updates."""
    settings = {
        "model.hidden_layers": 0,
        "imagination.horizon": 2,
        "report": False,
        "diagnostics.open_loop_horizon": 8,
        "offline.log_every": 10,
        "offline.checkpoint_every": 30,
        "offline.open_loop_every": 0,
    }
    settings.update(overrides)
    return small_config(**settings)


@contextlib.contextmanager
def environments_forbidden():
    """Every way wm_jax makes an environment raises while this is active."""

    def refuse(*args, **kwargs):
        raise AssertionError("an environment was created during offline training")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gymnasium, "make", refuse)
        mp.setattr(gymnasium, "make_vec", refuse)
        mp.setattr(envs, "VectorEnv", refuse)
        mp.setattr(training_eval, "VectorEnv", refuse)
        mp.setattr(training_eval, "make_env_spec", refuse)
        yield


def same(a, b) -> bool:
    leaves = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return all(np.array_equal(x, y) for x, y in leaves)


@pytest.fixture(scope="module")
def minari_dataset(tmp_path_factory):
    """Eight random-action CartPole episodes recorded with minari.DataCollector into a
    temporary MINARI_DATASETS_PATH (kept set for the module's tests)."""
    minari = pytest.importorskip("minari")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(tmp_path_factory.mktemp("minari")))
        env = minari.DataCollector(gymnasium.make("CartPole-v1"))
        env.action_space.seed(0)
        for episode in range(8):
            env.reset(seed=episode)
            done = False
            while not done:
                _, _, terminated, truncated, _ = env.step(env.action_space.sample())
                done = terminated or truncated
        with warnings.catch_warnings():  # minari asks for an author, a description, ...
            warnings.simplefilter("ignore", UserWarning)
            env.create_dataset(MINARI_ID)
        env.close()
        yield minari.load_dataset(MINARI_ID)


@pytest.fixture(scope="module")
def minari_run(minari_dataset, tmp_path_factory):
    """60 offline updates from the minari dataset: 30 world model only, then all three."""
    workdir = tmp_path_factory.mktemp("offline") / "minari_run"
    config = offline_config(
        **{
            "offline.updates": 60,
            "offline.world_model_only_updates": 30,
            "offline.transition_updates": 10,
            "offline.open_loop_every": 30,
            "world_model.lr": 1e-3,  # a clear drop within 60 updates
        }
    )
    with environments_forbidden():
        result = train_offline(config, str(workdir), f"minari:{MINARI_ID}")
    return result, workdir


@pytest.fixture(scope="module")
def online_run(tmp_path_factory):
    """An online run that only collected random-action data (its prefill outlasts it), so its
    replay is real env data in the online checkpoint layout at the cost of no compiled update."""
    workdir = tmp_path_factory.mktemp("online") / "run"
    config = small_config(
        total_env_steps=64,
        prefill_steps=10_000,
        eval_every=0,
        log_every=64,
        checkpoint_every=64,
        report=False,
        **{"diagnostics.open_loop_every": 0},
    )
    trainer = wm_jax.Trainer(config, str(workdir))
    try:
        trainer.run()
        replay = trainer.replay.state_dict()
    finally:
        trainer.close()
    return workdir, replay


@pytest.mark.slow
def test_offline_training_lowers_the_world_model_loss_and_trains_actor_and_critic_without_an_env(
    minari_run,
):
    result, workdir = minari_run
    records = [r for r in read_metrics(workdir) if "world_model_loss" in r]
    assert [r["env_step"] for r in records] == [10, 20, 30, 40, 50, 60]  # counted in updates
    first, last = records[0]["world_model_loss"], records[-1]["world_model_loss"]
    assert last < 0.9 * first, (first, last)
    # The schedule: the world model every update, actor and critic after its own 30.
    assert int(result.state.wm_updates) == 60
    assert int(result.state.actor_updates) == int(result.state.critic_updates) == 30
    assert all("actor_loss" not in r for r in records[:3])
    assert all("actor_loss" in r and "critic_loss" in r for r in records[3:])
    assert [r["phase"] for r in records][2:4] == ["transition", "full"]
    assert "open_loop_error_step1" in records[2]
    checkpoints = sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit())
    assert checkpoints == [30, 60]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(workdir / "tensorboard"))
    events.Reload()  # each open-loop check's trajectories as an image, at its update
    assert [e.step for e in events.Images("open_loop/trajectories")] == [30, 60]


@pytest.mark.slow
def test_a_minari_trained_workdir_loads_with_load_policy_and_records_the_datasets_env(
    minari_run, minari_dataset
):
    _, workdir = minari_run
    policy = wm_jax.load_policy(str(workdir))
    assert policy.step == 60
    assert policy.config.env_id == "CartPole-v1"  # from the dataset, for wm_jax.evaluate
    assert policy.spec.obs_shape == (4,) and policy.spec.discrete
    assert policy.act(np.zeros(4, np.float32)) in (0, 1)
    # The normaliser was fitted on the dataset's observations.
    obs = np.concatenate([ep.observations[:-1] for ep in minari_dataset.iterate_episodes()])
    np.testing.assert_allclose(policy.obs_mean, obs.mean(0), rtol=1e-5, atol=1e-6)
    meta = json.load(open(workdir / "offline.json"))
    assert meta["dataset"] == f"minari:{MINARI_ID}" and meta["transitions"] == len(obs)


@pytest.mark.slow
def test_imagination_only_fine_tuning_keeps_the_world_model_bit_identical(minari_run, tmp_path):
    source_result, source = minari_run
    config = offline_config(
        **{
            "offline.updates": 10,
            "offline.transition_updates": 5,
            "offline.freeze_world_model": True,
        }
    )
    with environments_forbidden():
        result = train_offline(config, str(tmp_path / "tuned"), f"run:{source}")
    before = restore_run_state(str(source), 60, result.state)
    assert same(before.wm_params, source_result.state.wm_params)
    assert same(result.state.wm_params, before.wm_params)
    assert same(result.state.wm_opt_state, before.wm_opt_state)
    assert int(result.state.wm_updates) == 60  # none added
    assert int(result.state.actor_updates) == int(result.state.critic_updates) == 40
    assert not same(result.state.actor_params, before.actor_params)
    assert not same(result.state.critic_params, before.critic_params)
    records = read_metrics(tmp_path / "tuned")
    assert records and all("world_model_loss" not in r and "actor_loss" in r for r in records)
    # A rerun resumes from the final checkpoint and has nothing left to do.
    again = train_offline(config, str(tmp_path / "tuned"), f"run:{source}")
    assert again.resumed_from == 10 and same(again.state, result.state)


# One process of the stopped-and-resumed comparison: argv = out dir, mode, dataset, overrides.
_OFFLINE_RESUME_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, "tests")
    from conftest import small_config
    from wm_jax.offline import train_offline

    out, mode, dataset, overrides = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    config = small_config(**json.loads(overrides))
    runs = {"first": [("straight", None), ("resumed", 12)], "second": [("resumed", None)]}
    for name, stop_at in runs[mode]:
        result = train_offline(config, f"{out}/{name}", dataset, stop_at=stop_at)
        print(name, "updates", result.updates, "resumed_from", result.resumed_from, flush=True)
        leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(result.state))
        np.savez(f"{out}/{name}_{result.updates}.npz",
                 **{jax.tree_util.keystr(path): np.asarray(x) for path, x in leaves})
    """
)


@pytest.mark.slow
def test_offline_training_stopped_mid_run_and_resumed_equals_the_uninterrupted_run(
    online_run, tmp_path
):
    """20 offline updates straight vs stopped at update 12 (mid-schedule, between two log rows,
    not a checkpoint step) and resumed in a fresh process: the whole final train state
    (parameters, optimiser states, counters, key) is bit-identical and so is every metrics and
    open-loop row but the wall-clock rate (single-thread XLA flags, BUILD_NOTES "Determinism
    guarantee"): the row in progress at the stop is saved and finished by the resumed run."""
    from conftest import DETERMINISTIC_ENV

    workdir, _ = online_run
    overrides = {
        "model.hidden_layers": 0,
        "imagination.horizon": 2,
        "report": False,
        "diagnostics.open_loop_horizon": 8,
        "offline.updates": 20,
        "offline.world_model_only_updates": 6,  # warmup, transition, full around the stop
        "offline.transition_updates": 8,
        "offline.log_every": 5,
        "offline.checkpoint_every": 15,
        "offline.open_loop_every": 10,
    }
    script = tmp_path / "offline_resume.py"
    script.write_text(_OFFLINE_RESUME_SCRIPT)
    outputs = []
    for mode in ("first", "second"):
        cmd = [sys.executable, str(script), str(tmp_path), mode, f"run:{workdir}"]
        out = subprocess.run(
            [*cmd, json.dumps(overrides)],
            capture_output=True, text=True, cwd=REPO, env=DETERMINISTIC_ENV, timeout=600,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        outputs.append(out.stdout)
    assert "straight updates 20 resumed_from None" in outputs[0]
    assert "resumed updates 12 resumed_from None" in outputs[0]
    assert "resumed updates 20 resumed_from 12" in outputs[1]

    straight = np.load(tmp_path / "straight_20.npz")
    resumed = np.load(tmp_path / "resumed_20.npz")
    assert sorted(straight.files) == sorted(resumed.files) and len(straight.files) > 20
    for name in straight.files:
        np.testing.assert_array_equal(resumed[name], straight[name], err_msg=name)
    stopped = np.load(tmp_path / "resumed_12.npz")
    assert int(stopped[".wm_updates"]) == 12 and int(straight[".wm_updates"]) == 20

    def rows(run, name):
        records = [json.loads(line) for line in (tmp_path / run / name).read_text().splitlines()]
        for record in records:
            record.pop("updates_per_s", None)  # the wall-clock figures
            record.pop("wall_time_s", None)
        return records

    a, b = rows("straight", "metrics.jsonl"), rows("resumed", "metrics.jsonl")
    assert [r["env_step"] for r in a] == [5, 10, 15, 20]
    assert [r["phase"] for r in a] == ["warmup", "transition", "full", "full"]
    assert "open_loop_error_step1" in a[1] and "actor_loss" in a[-1]
    for x, y in zip(a, b, strict=True):
        assert x == y, {
            k: (x.get(k), y.get(k)) for k in x.keys() | y.keys() if x.get(k) != y.get(k)
        }
    assert rows("straight", "open_loop.jsonl") == rows("resumed", "open_loop.jsonl")
    assert len(rows("straight", "open_loop.jsonl")) == 2


@pytest.mark.slow
def test_an_online_runs_replay_is_the_dataset_and_trains_offline(online_run, tmp_path):
    workdir, replay = online_run
    data = load_dataset(f"run:{workdir}")
    assert data.run_step == 64 and len(data.replay) == 64
    for key, value in replay.items():
        np.testing.assert_array_equal(data.replay.state_dict()[key], value, err_msg=key)
    config = offline_config(
        **{"offline.updates": 10, "offline.world_model_only_updates": 10, "offline.log_every": 5}
    )
    with environments_forbidden():
        result = train_offline(config, str(tmp_path / "offline"), f"run:{workdir}")
    assert int(result.state.wm_updates) == 10
    records = read_metrics(tmp_path / "offline")
    assert [r["phase"] for r in records] == ["warmup", "transition"]
    assert np.isfinite([r["world_model_loss"] for r in records]).all()


def test_the_schedule_and_the_lr_anneal_are_counted_in_offline_updates():
    config = offline_config(
        **{
            "offline.updates": 100,
            "offline.world_model_only_updates": 40,
            "offline.train_world_model": False,
        }
    )
    counts = [tuple(offline_counts(u, config)) for u in (0, 39, 40, 99)]
    assert counts == [(1, 0, 0), (1, 0, 0), (0, 1, 1), (0, 1, 1)]
    agent_config = offline_agent_config(config)
    assert expected_updates(agent_config, "actor") == expected_updates(agent_config, "critic") == 60
    with config.unlocked():
        config.offline.freeze_world_model = True  # no world-model phase, no world-model update
    assert {tuple(offline_counts(u, config)) for u in (0, 99)} == {(0, 1, 1)}


def test_minari_terminations_end_continuation_and_truncations_do_not():
    EpisodeData = pytest.importorskip("minari").EpisodeData

    def episode(i, steps, terminated=False, truncated=False):
        flags = np.zeros(steps, bool)
        return EpisodeData(
            id=i,
            # obs[..., 0] names the episode, obs[..., 1] the step: windows can be traced back.
            observations=np.tile(
                np.stack([np.full(steps + 1, i), np.arange(steps + 1)], -1), (1, 2)
            ).astype(np.float32),
            actions=np.arange(steps) % 2,
            rewards=np.ones(steps),
            terminations=np.where(np.arange(steps) == steps - 1, terminated, flags),
            truncations=np.where(np.arange(steps) == steps - 1, truncated, flags),
            infos={},
        )

    spec = envs.spec_from_spaces(
        gymnasium.spaces.Box(-9, 9, (4,), np.float32), gymnasium.spaces.Discrete(2)
    )
    episodes = [episode(0, 3, terminated=True), episode(1, 2, truncated=True), episode(2, 4)]
    replay = episodes_to_replay(episodes, spec)
    state = replay.state_dict()
    np.testing.assert_array_equal(state["cont"][0], [1, 1, 0, 1, 1, 1, 1, 1, 1])
    # Each episode's last step ends windows, also the one cut off without either flag.
    np.testing.assert_array_equal(state["episode_end"][0], [0, 0, 1, 0, 1, 0, 0, 0, 1])
    np.testing.assert_array_equal(state["next_obs"][0, 2], [0, 3, 0, 3])  # the final obs
    np.testing.assert_array_equal(state["action"][0, :3], [[1, 0], [0, 1], [1, 0]])
    windows = replay.sample_sequences(np.random.default_rng(0), 64, 4)
    for obs, mask in zip(windows.obs, windows.mask, strict=True):
        real = obs[: int(mask.sum()) + 1]  # real steps and the observation after the last
        assert (real[:, 0] == real[0, 0]).all(), "a window crossed an episode boundary"


def test_an_unknown_dataset_source_is_rejected_naming_the_accepted_forms(tmp_path):
    for bad in ("foo:bar", "no_source", "run:", "d4rl:hopper"):
        with pytest.raises(DatasetError, match="run:<workdir.*minari:<"):
            train_offline(offline_config(), str(tmp_path / "x"), bad)


def test_a_workdir_without_checkpoints_is_rejected(tmp_path):
    with pytest.raises(DatasetError, match="config.json is missing"):
        load_dataset(f"run:{tmp_path}")
    spec = envs.spec_from_spaces(
        gymnasium.spaces.Box(-1, 1, (4,), np.float32), gymnasium.spaces.Discrete(2)
    )
    (tmp_path / "config.json").write_text(json.dumps({"env_id": "CartPole-v1"}))
    (tmp_path / "env_spec.json").write_text(json.dumps(spec_to_json(spec)))
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(DatasetError, match="holds no checkpoint yet"):
        load_dataset(f"run:{tmp_path}")


def test_fine_tuning_a_minari_dataset_is_rejected_naming_the_field(minari_dataset, tmp_path):
    config = offline_config(**{"offline.freeze_world_model": True})
    with pytest.raises(ConfigError, match="config.offline.freeze_world_model"):
        train_offline(config, str(tmp_path / "x"), f"minari:{MINARI_ID}")


def test_a_missing_minari_package_is_reported_with_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "minari", None)  # makes `import minari` fail
    with pytest.raises(ImportError, match=r'pip install "minari\[hdf5\]"'):
        train_offline(offline_config(), str(tmp_path / "x"), f"minari:{MINARI_ID}")


@pytest.mark.slow
def test_cli_rejects_a_bad_dataset_naming_the_flag_without_a_traceback(tmp_path):
    cmd = [sys.executable, "-m", "wm_jax.offline", f"--workdir={tmp_path}", "--dataset=foo:bar"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode != 0
    assert "--dataset" in result.stderr and "minari:<" in result.stderr
    assert "Traceback" not in result.stderr


def test_offline_training_stops_at_the_nonfinite_limit_between_log_rows(online_run, tmp_path):
    """``max_nonfinite_updates`` skipped updates in a row stop an offline run at that update,
    not at the next log row (the CLI maps the error to exit status 3, as for online runs)."""
    from wm_jax.shell import NonFiniteError

    workdir, _ = online_run
    config = offline_config(
        **{
            "offline.updates": 60,
            "offline.world_model_only_updates": 60,
            "offline.log_every": 50,
            "world_model.lr": 1e30,  # blows the world model up; later updates are non-finite
            "max_nonfinite_updates": 3,
        }
    )
    with pytest.raises(NonFiniteError) as error:
        with environments_forbidden():
            train_offline(config, str(tmp_path / "offline"), f"run:{workdir}")
    update = int(str(error.value).split(" at update ")[1].split(" ")[0])
    assert update < 10, str(error.value)
    assert "3 consecutive world_model updates" in str(error.value)


@needs_tmpfs
def test_an_offline_run_whose_checkpoint_cannot_fit_on_the_disk_is_refused_at_start_up(
    online_run, tmp_path
):
    from wm_jax.errors import WorkdirError

    workdir, _ = online_run
    with mounted_tmpfs(tmp_path / "disk", "size=16k") as disk:
        with pytest.raises(WorkdirError, match="a checkpoint needs about"):
            train_offline(offline_config(), str(disk / "offline"), f"run:{workdir}")
        assert not os.path.exists(disk / "offline" / "checkpoints")  # refused before orbax


@pytest.mark.slow
def test_offline_training_evaluates_in_the_datasets_env_with_the_online_metric_names(
    online_run, tmp_path
):
    """Every offline.eval_every updates: the host loop's eval_return rows, at the update count,
    and the report shows them; a dataset that names no env trains without evaluating."""
    import dataclasses

    from wm_jax.report import write_report

    workdir, _ = online_run
    settings = {
        "offline.updates": 10,
        "offline.world_model_only_updates": 10,
        "offline.log_every": 5,
        "offline.eval_every": 5,
        "offline.eval_video_every": 0,
        "eval_episodes": 2,
    }
    result = train_offline(offline_config(**settings), str(tmp_path / "eval"), f"run:{workdir}")
    rows = [r for r in read_metrics(tmp_path / "eval") if "eval_return_std" in r]
    assert [r["env_step"] for r in rows] == [5, 10]  # x-axis: updates
    for row in rows:
        assert row["eval_return"] >= 1 and row["eval_return_stderr"] == pytest.approx(
            row["eval_return_std"] / np.sqrt(2)
        )
    assert result.updates == 10
    html = write_report(str(tmp_path / "eval"))
    report = open(os.path.join(os.path.dirname(html), "report.md")).read()
    assert f"final eval return: {rows[-1]['eval_return']:.1f} \\(update 10\\)" in report

    no_env = dataclasses.replace(load_dataset(f"run:{workdir}"), env_id=None)
    with environments_forbidden():
        train_offline(offline_config(**settings), str(tmp_path / "no_env"), no_env)
    records = read_metrics(tmp_path / "no_env")
    assert records and not any("eval_return" in r for r in records)
