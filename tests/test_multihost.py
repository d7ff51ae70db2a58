"""Multi-process (multi-host) training on localhost: two real processes joined with
``jax.distributed`` (gloo collectives on the CPU) train one run through the CLI entry point;
their replicated parameters stay identical, one sharded train step equals the same global batch
on one device, and every process reloads its own part of the checkpoint."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, SINGLE_THREAD_XLA

FLAGS = [
    "--config.model.feature_dim=32",
    "--config.model.state_dim=8",
    "--config.model.hidden_dim=32",
    "--config.model.hidden_layers=1",
    "--config.imagination.horizon=5",
    "--config.batch_size=16",
    "--config.total_env_steps=96",
    "--config.prefill_steps=64",
    "--config.eval_every=96",
    "--config.eval_episodes=2",
    "--config.log_every=32",
    "--config.checkpoint_every=64",
    "--config.report=False",
    "--config.schedule.warmup_steps=0",
    "--config.schedule.transition_steps=0",
    "--config.diagnostics.open_loop_every=0",
]

# One process of the job: argv = out dir, process id, coordinator port.
_SCRIPT = r"""
import json, sys
import numpy as np

out, pid, port, flags = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
import importlib
from absl import app
import wm_jax.trainer as trainer_lib
import wm_jax.shell as shell
cli = importlib.import_module("wm_jax.train")  # the module (wm_jax.train is also a function)

trained = {}
_close = trainer_lib.Trainer.close


def close(self):  # keep the trainer of the CLI run for the checks below
    trained["trainer"] = self
    _close(self)


trainer_lib.Trainer.close = close
argv = ["wm_jax.train", f"--coordinator_address=localhost:{port}", "--num_processes=2",
        f"--process_id={pid}", f"--workdir={out}/run", *flags]
try:
    app.run(cli.main, argv=argv)  # parses the flags, joins the job, trains, exits
except SystemExit as stop:
    assert not stop.code, stop.code

import jax
sys.path.insert(0, "tests")
from conftest import random_transitions
from wm_jax.schedule import UpdateCounts
from wm_jax.sharding import local_copy, shard_batch

assert jax.process_count() == 2 and jax.process_index() == pid
t = trained["trainer"]
result = {"process": pid, "local_envs": t.local_envs, "env_step": t.env_step,
          "updates": t.updates, "eval_returns": t.eval_returns}


def flat(tree):
    return np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.device_get(tree))])


np.save(f"{out}/params_{pid}.npy", flat(local_copy(
    (t.state.wm_params, t.state.actor_params, t.state.critic_params))))

# One train step on a known global batch of 16 rows, 8 from each process, against the same
# 16 rows on one device (process 0 computes that reference on its own device).
batch = random_transitions(jax.random.PRNGKey(7), t.spec, batch=16)
mine = jax.tree.map(lambda x: np.asarray(x)[8 * pid: 8 * (pid + 1)], batch)
counts, names = UpdateCounts(1, 1, 1), ("world_model_loss", "actor_loss", "critic_loss")
prep = lambda b: shell.prepare_batch_jit(  # as in training (identity on these values)
    b, np.zeros(4, np.float32), np.ones(4, np.float32), np.float32(1.0))
state, m = t.steps.train_step(t.state, prep(shard_batch(mine, t.mesh)), counts, np.float32(0.5))
result["sharded_losses"] = [float(m[k]) for k in names]
result["sharded_params"] = flat(local_copy(state.wm_params)).tolist()
if pid == 0:
    state, m = t.steps.train_step(local_copy(t.state), prep(batch), counts, np.float32(0.5))
    result["single_losses"] = [float(m[k]) for k in names]
    result["single_params"] = flat(state.wm_params).tolist()

# A fresh trainer on the same workdir resumes from the final checkpoint: each process gets its
# own replay and envs back (from checkpoints_process/) and the shared state from orbax.
fresh = trainer_lib.Trainer(cli._CONFIG.value, f"{out}/run")
result["resumed_from"] = fresh.resumed_from
result["resume_exact"] = {
    "params": bool(np.array_equal(flat(local_copy(fresh.state)), flat(local_copy(t.state)))),
    "replay": all(np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(fresh.replay.state_dict()), jax.tree.leaves(t.replay.state_dict()))),
    "obs": bool(np.array_equal(fresh.obs, t.obs)),
    "normalizer": bool(np.array_equal(fresh.normalizer.mean, t.normalizer.mean)),
    "env_seed": fresh.envs.seed == t.envs.seed,
}
result["env_seed"] = int(t.envs.seed)
fresh.close()
with open(f"{out}/result_{pid}.json", "w") as f:
    json.dump(result, f)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """The two-process CLI run (and the checks its processes made afterwards): (dir, outputs)."""
    tmp_path = tmp_path_factory.mktemp("multihost")
    # One thread per process (two processes share the 2-core CI machine; deterministic CPU maths).
    env = dict(os.environ, XLA_FLAGS=SINGLE_THREAD_XLA)
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _SCRIPT, str(tmp_path), str(i), str(port), *FLAGS],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=env,
        )
        for i in range(2)
    ]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=600))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for i, (proc, (_, stderr)) in enumerate(zip(procs, outputs, strict=True)):
        assert proc.returncode == 0, f"process {i}:\n{stderr[-4000:]}"
    return tmp_path, outputs


@pytest.mark.slow
def test_two_processes_train_one_run_with_identical_replicas(two_process_run):
    tmp_path, outputs = two_process_run
    # Process 0 alone prints the summary and writes the logs.
    assert "trained 96 env steps" in outputs[0][0] and "trained" not in outputs[1][0]
    results = [json.loads((tmp_path / f"result_{i}.json").read_text()) for i in range(2)]
    for r in results:
        # num_envs=4 is global: 2 envs per process; env steps count both processes' envs.
        assert r["local_envs"] == 2 and r["env_step"] == 96
        assert r["eval_returns"] == results[0]["eval_returns"] and len(r["eval_returns"]) == 1
        assert r["resumed_from"] == 96 and all(r["resume_exact"].values()), r["resume_exact"]
    assert results[0]["updates"] == results[1]["updates"] > 0
    assert results[0]["env_seed"] != results[1]["env_seed"]

    # The replicated parameters are bit-identical on both processes after training.
    params = [np.load(tmp_path / f"params_{i}.npy") for i in range(2)]
    assert params[0].size > 1000 and np.array_equal(params[0], params[1])

    # A train step sharded over the two processes equals the same global batch on one device
    # (up to the order of the gradient sums), and both processes agree exactly.
    r0, r1 = results
    assert r0["sharded_losses"] == r1["sharded_losses"]
    assert r0["sharded_params"] == r1["sharded_params"]
    np.testing.assert_allclose(r0["sharded_losses"], r0["single_losses"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r0["sharded_params"], r0["single_params"], rtol=1e-4, atol=1e-6)

    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["env_step"] for r in records if "world_model_loss" in r] == [64, 96]
    assert sorted(os.listdir(run / "checkpoints")) == ["64", "96"]
    assert sorted(os.listdir(run / "checkpoints_process")) == ["process_0", "process_1"]
    for i in range(2):
        assert sorted(os.listdir(run / "checkpoints_process" / f"process_{i}")) == [
            "64.npz",
            "96.npz",
        ]


def _files(run) -> dict[str, bytes]:
    """Every file of a workdir but the lock files (whose holder line a start-up rewrites)."""
    return {
        str(path.relative_to(run)): path.read_bytes()
        for path in sorted(run.rglob("*"))
        if path.is_file() and not path.name.startswith(".lock")
    }


@pytest.mark.slow
def test_resuming_a_two_process_run_with_one_process_is_refused_naming_both_counts(
    two_process_run,
):
    """The checkpoints of the two-process run name their process count: the same command
    with one process is refused like any other resume that cannot continue the run (status
    6, the counts named, no traceback), and no checkpoint is moved aside or changed."""
    tmp_path, _ = two_process_run
    run = tmp_path / "run"
    before = _files(run)
    cmd = [sys.executable, "-m", "wm_jax.train", f"--workdir={run}", *FLAGS]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 6, result.stderr[-3000:]  # errors.EXIT_RESUME_REFUSED
    assert "Traceback" not in result.stderr
    assert "written by 2 process(es), this run has 1: resume it with 2" in result.stderr
    assert not (run / "checkpoints_corrupt").exists()
    assert _files(run) == before
