"""Fault injection through real processes: interrupted, killed (also mid-checkpoint-write),
terminated and corrupted runs resume to exactly the parameters of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from test_train import DETERMINISTIC_ENV, REPO, TINY, run_cli

RESUME_SCRIPT = textwrap.dedent(
    """
    import pickle, sys, numpy as np, jax
    from wm_jax.config import get_config
    from wm_jax.trainer import Trainer

    def config():
        c = get_config()
        for o in sys.argv[2:]:
            key, value = o[len("--config."):].split("=")
            node = c
            *path, leaf = key.split(".")
            for p in path:
                node = node[p]
            node[leaf] = type(node[leaf])(value)
        return c

    workdir, mode = sys.argv[1].split(":")
    if mode == "nopickle":  # loading a checkpoint must never unpickle anything
        def refuse(*args, **kwargs):
            raise AssertionError("pickle used while loading a checkpoint")
        pickle.load = pickle.loads = refuse
        pickle.Unpickler = refuse
    trainer = Trainer(config(), workdir)
    print("resumed_from", trainer.resumed_from, flush=True)
    trainer.run(stop_at=192 if mode == "stop" else None)
    flat = np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(
        (trainer.state.wm_params, trainer.state.actor_params, trainer.state.critic_params,
         trainer.state.wm_opt_state, trainer.state.key))])
    np.save(workdir + "/final_params.npy", flat)
    print("env_step", trainer.env_step)
    trainer.close()
    """
)
OVERRIDES = [o for o in TINY if "checkpoint_every" not in o and "eval" not in o] + [
    "--config.eval_every=0",
    "--config.report=False",
]


def script_cmd(tmp_path, workdir, mode, checkpoint_every):
    script = tmp_path / "resume.py"
    script.write_text(RESUME_SCRIPT)
    return [
        sys.executable,
        str(script),
        f"{workdir}:{mode}",
        *OVERRIDES,
        f"--config.checkpoint_every={checkpoint_every}",
    ]


def run_script(tmp_path, workdir, mode, checkpoint_every=96):
    out = subprocess.run(
        script_cmd(tmp_path, workdir, mode, checkpoint_every),
        capture_output=True,
        text=True,
        cwd=REPO,
        env=DETERMINISTIC_ENV,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """The uninterrupted reference run (same seed, CPU, one thread): (final params, workdir)."""
    tmp = tmp_path_factory.mktemp("straight")
    assert "env_step 320" in run_script(tmp, tmp / "run", "full")
    return np.load(tmp / "run" / "final_params.npy"), tmp / "run"


@pytest.fixture(scope="module")
def straight_params(straight_run):
    return straight_run[0]


def metric_records(workdir):
    """metrics.jsonl without the one wall-clock figure."""
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    for record in records:
        record.pop("env_steps_per_s", None)
    return records


def assert_same_params(straight, workdir):
    resumed = np.load(workdir / "final_params.npy")
    assert resumed.shape == straight.shape
    assert np.array_equal(resumed, straight), f"max abs diff {np.max(np.abs(resumed - straight))}"


@pytest.mark.slow
def test_interrupted_and_resumed_run_matches_uninterrupted_run_metric_for_metric(
    tmp_path, straight_run
):
    """Stopping at 192 env steps (mid-episode, mid-schedule) and resuming from the checkpoint
    reaches bit-identical parameters at 320 env steps, and every logged metric of the two
    processes together equals the uninterrupted run's, step for step (determinism)."""
    straight_params, straight_dir = straight_run
    run = tmp_path / "interrupted"
    assert "env_step 192" in run_script(tmp_path, run, "stop")
    out = run_script(tmp_path, run, "full")
    assert "resumed_from 192" in out and "env_step 320" in out
    assert_same_params(straight_params, run)
    resumed, straight = metric_records(run), metric_records(straight_dir)
    assert [r["env_step"] for r in resumed] == [r["env_step"] for r in straight]
    for a, b in zip(resumed, straight, strict=True):
        assert a == b, {
            k: (a.get(k), b.get(k)) for k in a.keys() | b.keys() if a.get(k) != b.get(k)
        }


def checkpoint_steps(workdir):
    names = os.listdir(workdir / "checkpoints")
    return sorted(int(n) for n in names if n.isdigit()), [n for n in names if "tmp" in n]


@pytest.mark.slow
def test_sigkill_mid_checkpoint_write_and_a_truncated_checkpoint_lose_nothing(
    tmp_path, straight_params
):
    """SIGKILL while orbax is writing a checkpoint (its temporary directory exists), then
    truncate a data file of the newest complete checkpoint: the rerun skips the broken step,
    moves it aside, resumes from the one before (no pickle involved) and still reaches the
    uninterrupted run's exact parameters."""
    run = tmp_path / "killed"
    proc = subprocess.Popen(
        script_cmd(tmp_path, run, "full", checkpoint_every=32),
        cwd=REPO,
        env=DETERMINISTIC_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    caught = None
    deadline = time.time() + 500
    while proc.poll() is None and time.time() < deadline:
        if (run / "checkpoints").is_dir():
            steps, tmps = checkpoint_steps(run)
            if len(steps) >= 2 and tmps:
                proc.send_signal(signal.SIGKILL)
                caught = tmps
                break
        time.sleep(0.002)
    proc.wait(timeout=60)
    assert caught, "the run finished before a checkpoint write could be interrupted"
    assert proc.returncode == -signal.SIGKILL
    steps, tmps = checkpoint_steps(run)
    assert tmps, "the interrupted write left no partial directory behind"
    newest, previous = steps[-1], steps[-2]
    # The array data orbax reads back (the per-process "ocdbt.process_0" files are merged into
    # it when a save completes).
    data = run / "checkpoints" / str(newest) / "state" / "d"
    victim = max(data.iterdir(), key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])

    out = run_script(tmp_path, run, "nopickle", checkpoint_every=32)
    assert f"resumed_from {previous}" in out and "env_step 320" in out
    assert (run / "checkpoints_corrupt" / str(newest)).is_dir()
    assert not checkpoint_steps(run)[1], "temporary directories were not cleaned up"
    assert_same_params(straight_params, run)


@pytest.mark.slow
def test_sigterm_saves_a_final_checkpoint_exits_cleanly_and_the_rerun_resumes(tmp_path):
    workdir = tmp_path / "term"
    # Start the CLI and terminate it once it has logged a few hundred env steps.
    cmd = [sys.executable, "-m", "wm_jax.train", f"--workdir={workdir}", *TINY]
    cmd += ["--config.total_env_steps=100000", "--config.checkpoint_every=100000"]
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 500
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert "Traceback" not in stderr
    assert "interrupted by SIGTERM at env step" in stderr
    step = int(stderr.split("interrupted by SIGTERM at env step ")[1].split(";")[0])
    assert (workdir / "checkpoints" / str(step)).is_dir()  # saved although not a save step

    # The rerun (to a reachable end) resumes from that checkpoint.
    result = run_cli(str(workdir), f"--config.total_env_steps={step + 64}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from checkpoint at env step {step}" in result.stderr
    assert f"trained {step + 64} env steps" in result.stdout
