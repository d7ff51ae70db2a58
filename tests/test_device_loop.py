"""The on-device ("Anakin") loop: device replay, gymnax boundaries, exact resume, vmapped seeds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO, SINGLE_THREAD_XLA, checkpoint_arrays, make_spec, small_config

pytest.importorskip("gymnax")

from wm_jax.config import ConfigError  # noqa: E402
from wm_jax.device_loop import (  # noqa: E402
    Cadence,
    make_task,
    normalizer_init,
    normalizer_stats,
    normalizer_update,
    replay_add,
    replay_init,
    replay_sample_flat,
    replay_sample_sequences,
    train_device,
)
from wm_jax.metrics import read_metrics  # noqa: E402
from wm_jax.normalizer import RunningMeanStd  # noqa: E402


def _filled_replay(capacity=12, num_envs=2, steps=20, episode_len=(3, 5)):
    """A ring written with ``steps`` vector steps where env e's episodes last episode_len[e]
    steps; obs encode (env, step) so every sampled value can be traced back."""
    spec = make_spec(obs_shape=(2,), action_dim=2)
    r = replay_init(capacity, num_envs, spec)
    episode = np.zeros(num_envs, np.int32)
    for t in range(steps):
        obs = np.stack([[e, t] for e in range(num_envs)]).astype(np.float32)
        next_obs = obs + np.array([0, 0.5], np.float32)  # the "final" obs differs from the reset
        ended = np.array([(t + 1) % episode_len[e] == 0 for e in range(num_envs)])
        r = replay_add(
            r,
            jnp.asarray(obs),
            jnp.zeros((num_envs, 2)),
            jnp.full((num_envs,), float(t)),
            jnp.asarray(1.0 - ended),
            jnp.asarray(next_obs),
            jnp.asarray(episode),
        )
        episode = episode + ended
    return r


def test_device_replay_sequences_never_mix_episodes_or_cross_the_write_head():
    r = _filled_replay()
    assert int(r.size) == 12 and int(r.head) == 20 % 12
    seq = jax.device_get(replay_sample_sequences(r, jax.random.PRNGKey(0), 256, 4))
    oldest = 20 - 12
    for b in range(256):
        env = int(seq.obs[b, 0, 0])
        steps = seq.reward[b].astype(int)
        # Consecutive steps of one env, all inside what the ring still holds.
        assert steps[0] >= oldest and steps[-1] <= 19
        np.testing.assert_array_equal(np.diff(steps), 1)
        length = (3, 5)[env]
        same_episode = (steps // length) == (steps[0] // length)
        np.testing.assert_array_equal(seq.mask[b], same_episode.astype(np.float32))
        # obs[k + 1] is the observation step k lands in (the final one at an episode's end).
        np.testing.assert_array_equal(seq.obs[b, 1:, 1], steps + 0.5)
        valid = seq.mask[b] > 0
        ends = ((steps + 1) % length == 0) & valid
        np.testing.assert_array_equal(seq.cont[b][valid], (~ends[valid]).astype(np.float32))


def test_device_replay_flat_samples_come_from_the_filled_slots_only():
    r = _filled_replay(capacity=50, steps=7)
    flat = jax.device_get(replay_sample_flat(r, jax.random.PRNGKey(1), 512))
    assert flat.reward.min() >= 0 and flat.reward.max() <= 6
    np.testing.assert_array_equal(flat.obs[:, 1], flat.reward)
    np.testing.assert_array_equal(flat.next_obs[:, 1], flat.reward + 0.5)


def test_device_normaliser_matches_the_host_running_mean_std():
    rng = np.random.default_rng(0)
    host, device = RunningMeanStd((3,)), normalizer_init((3,))
    for _ in range(5):
        batch = rng.normal(2.0, 3.0, size=(4, 3)).astype(np.float32)
        host.update(batch)
        device = normalizer_update(device, jnp.asarray(batch))
    mean, std = normalizer_stats(device, True)
    np.testing.assert_allclose(mean, host.stats()[0], rtol=1e-5)
    np.testing.assert_allclose(std, host.stats()[1], rtol=1e-5)


def _chan_reference(count, mean, m2, batch):
    """The update both normalisers carried as separate copies before they shared
    ``wm_jax.normalizer.chan_update`` (kept here verbatim as the reference)."""
    k = batch.shape[0]
    b_mean = batch.mean(0)
    b_m2 = ((batch - b_mean) ** 2).sum(0)
    total = count + k
    delta = b_mean - mean
    return total, mean + delta * k / total, m2 + b_m2 + delta**2 * count * k / total


def test_both_normalisers_run_the_one_shared_update_bit_for_bit():
    """Host (float64 numpy) and device (float32 jnp, jitted) normalisers give exactly what their
    former copies of Chan's update gave: sharing ``chan_update`` changed no bit."""
    rng = np.random.default_rng(1)
    host = RunningMeanStd((3,))
    device = normalizer_init((3,))
    ref_host = (0.0, np.zeros(3), np.zeros(3))
    ref_device = (jnp.zeros(()), jnp.zeros(3), jnp.zeros(3))
    update = jax.jit(normalizer_update)
    reference = jax.jit(lambda c, m, v, b: _chan_reference(c, m, v, b.astype(jnp.float32)))
    for k in (1, 4, 7):
        batch = rng.normal(2.0, 3.0, size=(k, 3)).astype(np.float32)
        host.update(batch)
        ref_host = _chan_reference(*ref_host, batch.astype(np.float64))
        device = update(device, jnp.asarray(batch))
        ref_device = reference(*ref_device, jnp.asarray(batch))
        assert host.count == ref_host[0]
        assert host.mean.tobytes() == ref_host[1].tobytes()
        assert host.m2.tobytes() == ref_host[2].tobytes()
        for got, want in zip((device.count, device.mean, device.m2), ref_device, strict=True):
            assert np.asarray(got).tobytes() == np.asarray(want).tobytes()


def test_gymnax_steps_keep_the_final_observation_and_tell_truncation_from_termination():
    task = make_task("gymnax:CartPole-v1", {"max_steps_in_episode": 3})
    assert task.max_episode_steps == 3 and task.spec.action_dim == 2
    _, state = task.reset(jax.random.PRNGKey(0), 2)
    actions = jax.nn.one_hot(jnp.array([0, 1]), 2)
    for t in range(3):
        out = task.step(jax.random.PRNGKey(t), state, actions)
        if t < 2:  # mid-episode: the next obs is the obs the step landed in
            np.testing.assert_array_equal(out.obs, out.final_obs)
            assert not out.truncated.any()
        state = out.env_state
    # The third step hits the 3-step limit: truncated (cont stays 1), not terminated, and the
    # returned obs is a fresh reset while final_obs is where the episode ended.
    assert out.truncated.all() and not out.terminated.any()
    assert not np.allclose(out.obs, out.final_obs)
    assert (np.abs(np.asarray(out.obs)) <= 0.05).all()  # CartPole resets in [-0.05, 0.05]


def test_gymnax_termination_sets_terminated():
    task = make_task("gymnax:CartPole-v1")
    _, state = task.reset(jax.random.PRNGKey(0), 1)
    push = jax.nn.one_hot(jnp.array([1]), 2)
    for t in range(100):  # always pushing right topples the pole within ~10 steps
        out = task.step(jax.random.PRNGKey(t), state, push)
        if bool(out.terminated[0]):
            break
        state = out.env_state
    assert bool(out.terminated[0]) and not bool(out.truncated[0]) and t < 60
    assert abs(float(out.final_obs[0, 2])) > 0.2  # the pole angle past the 12° limit


def test_the_device_loop_refuses_a_multi_process_run(monkeypatch, tmp_path):
    from conftest import small_config

    from wm_jax import loops

    # The check comes first: no env, compile or workdir is touched.
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    config = small_config(env_id="gymnax:CartPole-v1", loop="device")
    for run in (train_device, loops.train):
        with pytest.raises(ConfigError, match="needs loop=host"):
            run(config, str(tmp_path))


def test_ids_and_train_ratios_the_device_loop_cannot_run_are_refused():
    with pytest.raises(ValueError, match="Registered gymnax ids"):
        make_task("gymnax:NoSuchEnv-v0")
    with pytest.raises(ValueError, match="loop=host"):
        make_task("CartPole-v1")
    from conftest import small_config

    assert Cadence.from_config(small_config(num_envs=4, train_ratio=0.25)) == Cadence(1, 1)
    assert Cadence.from_config(small_config(num_envs=4, train_ratio=0.125)) == Cadence(2, 1)
    assert Cadence.from_config(small_config(num_envs=8, train_ratio=0.5)) == Cadence(1, 4)
    with pytest.raises(ConfigError, match="train_ratio"):
        Cadence.from_config(small_config(num_envs=4, train_ratio=17.0))


# The runs below go through a subprocess with single-threaded XLA, the setting under which
# CPU results are bit-reproducible (BUILD_NOTES, "Determinism guarantee").
_SCRIPT = r"""
import json, sys, time
sys.path.insert(0, "tests")
from conftest import small_config
from wm_jax.device_loop import train_device

def config(**kw):
    c = small_config(env_id="gymnax:CartPole-v1", loop="device", total_env_steps=480,
                     prefill_steps=160, eval_every=240, log_every=80, checkpoint_every=240,
                     report=False, **{"schedule.warmup_steps": 160,
                     "schedule.transition_steps": 320, "diagnostics.open_loop_every": 0})
    for k, v in kw.items():
        setattr(c, k, v)
    return c

root = sys.argv[1]
out, seconds = {}, {}
# Seeds 0 and 1 x actor lrs 3e-5 and 1e-4 (4 runs vmapped), interrupted at 240 and resumed;
# the same uninterrupted; then each of the four alone (the config's actor.lr set, no sweep).
sweep = dict(num_seeds=2, lr_sweep="actor=3e-5,1e-4")
start = time.time()
train_device(config(**sweep), root + "/resumed", stop_at=240)
resumed = train_device(config(**sweep), root + "/resumed")
straight = train_device(config(**sweep), root + "/straight")
seconds["vmapped"] = time.time() - start
alone = []
# lr-major: the seed is not part of the compiled programs (one DeviceLoop serves both seeds),
# the lr is a constant in them (a second DeviceLoop, compiled once, for the second lr).
for lr in (3e-5, 1e-4):
    start = time.time()
    for seed in (0, 1):
        alone_config = config(seed=seed)
        alone_config.actor.lr = lr
        alone += train_device(alone_config, f"{root}/alone/seed_{seed}-actor_lr_{lr:g}")
    seconds[f"alone lr {lr:g}"] = time.time() - start
for name, runs in (("resumed", resumed), ("straight", straight), ("alone", alone)):
    for r in runs:
        out[name + "/" + r.workdir.rsplit("/", 1)[-1]] = {
            "workdir": r.workdir, "evals": r.eval_returns, "resumed_from": r.resumed_from,
            "steps": r.env_steps}
out["seconds"] = seconds
json.dump(out, open(root + "/out.json", "w"))
"""


@pytest.fixture(scope="module")
def device_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("device_loop")
    env = dict(
        os.environ,
        XLA_FLAGS=SINGLE_THREAD_XLA,
    )
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(root)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads((root / "out.json").read_text())
    print("device_runs seconds:", out.pop("seconds"))
    return root, out


RUNS = [f"seed_{seed}-actor_lr_{lr}" for seed in (0, 1) for lr in ("3e-05", "0.0001")]


def _rows(workdir):
    """metrics.jsonl without the wall-clock fields (tests/test_crash_safety.py's reading)."""
    from test_crash_safety import metric_records

    return metric_records(Path(workdir))


@pytest.mark.slow
def test_device_loop_resumes_exactly_where_an_uninterrupted_run_would_be(device_runs):
    """Each of the four vmapped runs, interrupted at 240 (mid-schedule) and resumed, ends with
    the uninterrupted run's whole checkpoint bit for bit (train state, replay, normaliser, env
    and acting state, counters, keys, evaluations) and the same metrics rows."""
    root, out = device_runs
    for run in RUNS:
        resumed, straight = out[f"resumed/{run}"], out[f"straight/{run}"]
        assert resumed["resumed_from"] == 240 and resumed["steps"] == straight["steps"] == 480
        a, b = checkpoint_arrays(resumed["workdir"]), checkpoint_arrays(straight["workdir"])
        assert sorted(a) == sorted(b) and len(a) > 100
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=f"{run} {name}")
        assert resumed["evals"] == straight["evals"]
        assert all(type(step) is int for step, _, _ in resumed["evals"])  # not 240.0 (JSON)
        assert _rows(resumed["workdir"]) == _rows(straight["workdir"])
    # Each run has its own workdir with metrics and checkpoints.
    for run in RUNS:
        run_dir = root / "straight" / run
        steps = [r["env_step"] for r in read_metrics(str(run_dir))]
        assert max(steps) == 480 and 80 in steps


@pytest.mark.slow
def test_vmapped_seeds_and_learning_rates_equal_the_same_runs_one_at_a_time(device_runs):
    """All four runs of the vmapped sweep (seeds 0, 1 x actor lr 3e-5, 1e-4) against the same
    seed and actor.lr trained alone: every array of the final checkpoint (all parameter trees
    with the target critic, optimiser states, counters, keys, replay, normaliser, env and
    acting state), the evaluation returns and every metrics row.

    Close, not bit-equal: vmapping batches the matmuls and reductions over the runs, which may
    change XLA's float summation order, and the swept lr is the config's times a scale (3e-5 x
    3.33 for 1e-4) where the lone run has 1e-4 itself.  Integers (counters, keys, episode ids)
    and booleans must be equal."""
    _, out = device_runs
    close = dict(rtol=1e-4, atol=1e-5)
    for run in RUNS:
        vmapped, alone = out[f"straight/{run}"], out[f"alone/{run}"]
        a, b = checkpoint_arrays(vmapped["workdir"]), checkpoint_arrays(alone["workdir"])
        assert sorted(a) == sorted(b)
        trees = {name.split("]")[1] + "]" for name in a if name.startswith("['state']")}
        assert {"['wm_params']", "['actor_params']", "['critic_params']"} <= trees
        assert "['critic_target_params']" in trees
        # The sweep scales the actor's step, the lone run has the lr in its config.
        lr = float(run.rsplit("_", 1)[1])
        np.testing.assert_allclose(a["['state']['lr_scale']"], [1, lr / 3e-5, 1], rtol=1e-6)
        np.testing.assert_array_equal(b["['state']['lr_scale']"], [1, 1, 1])
        for name in a.keys() - {"['state']['lr_scale']"}:
            if np.issubdtype(a[name].dtype, np.floating):
                np.testing.assert_allclose(a[name], b[name], **close, err_msg=f"{run} {name}")
            else:
                np.testing.assert_array_equal(a[name], b[name], err_msg=f"{run} {name}")
        assert [e[0] for e in vmapped["evals"]] == [e[0] for e in alone["evals"]] == [240, 480]
        np.testing.assert_allclose(vmapped["evals"], alone["evals"], **close, err_msg=run)
        rows, alone_rows = _rows(vmapped["workdir"]), _rows(alone["workdir"])
        assert [r["env_step"] for r in rows] == [r["env_step"] for r in alone_rows]
        for x, y in zip(rows, alone_rows, strict=True):
            assert x.keys() == y.keys()
            for key in x:
                if isinstance(x[key], str) or x[key] is None:  # phase; NaN is written as null
                    assert x[key] == y[key], (run, key)
                else:
                    np.testing.assert_allclose(x[key], y[key], **close, err_msg=f"{run} {key}")
    # Different seeds, and different learning rates, really are different runs.
    final = {run: checkpoint_arrays(out[f"straight/{run}"]["workdir"]) for run in RUNS}

    def tree(run, name):
        return np.concatenate([x.ravel() for k, x in sorted(final[run].items()) if name in k])

    wm, actor = "['state']['wm_params']", "['state']['actor_params']"
    assert not np.allclose(tree("seed_0-actor_lr_3e-05", wm), tree("seed_1-actor_lr_3e-05", wm))
    assert not np.allclose(
        tree("seed_1-actor_lr_3e-05", actor), tree("seed_1-actor_lr_0.0001", actor)
    )


@pytest.mark.slow
def test_the_device_loop_stops_on_consecutive_nonfinite_updates_like_the_host_loop(tmp_path):
    from wm_jax.trainer import NonFiniteError

    c = small_config(
        env_id="gymnax:CartPole-v1",
        loop="device",
        total_env_steps=480,
        prefill_steps=64,
        eval_every=0,
        log_every=32,
        checkpoint_every=64,
        report=False,
        max_nonfinite_updates=3,
        **{"schedule.warmup_steps": 64, "schedule.transition_steps": 96},
        **{"diagnostics.open_loop_every": 0, "world_model.lr": 1e30},
    )
    stop = r"consecutive \w+ updates had a non-finite.*last good checkpoint"
    with pytest.raises(NonFiniteError, match=stop):
        train_device(c, str(tmp_path / "nan"))
    rows = read_metrics(str(tmp_path / "nan"))
    assert max(r["env_step"] for r in rows) < 480  # stopped, not run to the end


@pytest.mark.slow
def test_host_and_device_loops_log_the_same_metric_names_and_keep_a_best_agent(tmp_path):
    import wm_jax
    from wm_jax.trainer import Trainer

    def config(loop):
        return small_config(
            env_id="gymnax:CartPole-v1",
            loop=loop,
            total_env_steps=192,
            prefill_steps=64,
            # Segments of 64 env steps: one compiled training segment in the device loop.
            eval_every=64,
            eval_episodes=2,
            log_every=64,
            checkpoint_every=64,
            report=True,  # the device loop's report and open-loop check run here (issue 23)
            **{"schedule.warmup_steps": 64, "schedule.transition_steps": 128},
            **{"diagnostics.open_loop_every": 192, "diagnostics.open_loop_horizon": 8},
        )

    train_device(config("device"), str(tmp_path / "device"))
    host = Trainer(config("host"), str(tmp_path / "host"))
    try:
        host.run()
    finally:
        host.close()

    def names(workdir, evals):
        rows = read_metrics(str(workdir))
        rows = [r for r in rows if ("eval_return_std" in r) == evals and r["env_step"] == 192]
        return set().union(*(r.keys() for r in rows))

    assert names(tmp_path / "device", False) == names(tmp_path / "host", False)
    assert names(tmp_path / "device", True) == names(tmp_path / "host", True)
    assert {"updates", "episodes", "train_return"} <= names(tmp_path / "device", False)
    # Both loops ran the open-loop check at 192 (same summaries) and wrote the report.
    assert any(k.startswith("open_loop_") for k in names(tmp_path / "device", False))
    for loop in ("device", "host"):
        assert (tmp_path / loop / "report" / "report.html").is_file()
        (check,) = [json.loads(x) for x in (tmp_path / loop / "open_loop.jsonl").open()]
        assert check["env_step"] == 192
    best = wm_jax.load_policy(str(tmp_path / "device"), which="best")
    assert best.step in (64, 128, 192)
