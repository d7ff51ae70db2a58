"""Fault injection through real processes: interrupted, killed (also mid-checkpoint-write),
terminated and corrupted runs resume to exactly the parameters of an uninterrupted run."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from conftest import DETERMINISTIC_ENV, REPO, TINY, run_cli

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
    trainer.run(stop_at=176 if mode == "stop" else None)
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
    """metrics.jsonl without the wall-clock figures (the rate and the run's wall time)."""
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    for record in records:
        record.pop("env_steps_per_s", None)
        record.pop("wall_time_s", None)
    return records


def assert_same_params(straight, workdir):
    resumed = np.load(workdir / "final_params.npy")
    assert resumed.shape == straight.shape
    assert np.array_equal(resumed, straight), f"max abs diff {np.max(np.abs(resumed - straight))}"


@pytest.mark.slow
def test_interrupted_and_resumed_run_matches_uninterrupted_run_metric_for_metric(
    tmp_path, straight_run
):
    """Stopping at 176 env steps (mid-episode, mid-schedule, between two log steps) and resuming
    from the checkpoint reaches bit-identical parameters at 320 env steps, and every logged
    metric of the two processes together equals the uninterrupted run's, step for step
    (determinism; the log row in progress at the stop is part of the checkpoint)."""
    straight_params, straight_dir = straight_run
    run = tmp_path / "interrupted"
    assert "env_step 176" in run_script(tmp_path, run, "stop")
    out = run_script(tmp_path, run, "full")
    assert "resumed_from 176" in out and "env_step 320" in out
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


def _as_in_a_terminal():
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _start_in_a_terminal(cmd) -> subprocess.Popen:
    """Starts ``cmd`` with its SIGINT/SIGTERM as a terminal's foreground command has them,
    whatever this test process inherited (a background job of a non-interactive shell ignores
    SIGINT, and the loop keeps an inherited ignore)."""
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_as_in_a_terminal,
    )


def stop_with_signal_and_resume(tmp_path, signum, rerun=True):
    """Starts the CLI, sends ``signum`` once it has logged a few rows, and checks the graceful
    stop (final checkpoint at the stop step, exit 128 + signal, no traceback) and, with
    ``rerun``, that the rerun resumes from it."""
    name = signal.Signals(signum).name
    workdir = tmp_path / f"{name.lower()} run"  # a space: printed commands must quote it
    # Start the CLI and signal it once it has logged a few hundred env steps.
    cmd = [sys.executable, "-m", "wm_jax.train", f"--workdir={workdir}", *TINY]
    cmd += ["--config.total_env_steps=100000", "--config.checkpoint_every=100000"]
    proc = _start_in_a_terminal(cmd)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 500
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            proc.send_signal(signum)
            break
        time.sleep(0.05)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signum, stderr[-3000:]
    assert "Traceback" not in stderr
    assert f"interrupted by {name} at env step" in stderr
    step = int(stderr.split(f"interrupted by {name} at env step ")[1].split(";")[0])
    assert (workdir / "checkpoints" / str(step)).is_dir()  # saved although not a save step
    if not rerun:
        return

    # The rerun (to a reachable end) resumes from that checkpoint.
    result = run_cli(str(workdir), f"--config.total_env_steps={step + 64}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from checkpoint at env step {step}" in result.stderr
    assert f"trained {step + 64} env steps" in result.stdout
    # Evaluations restored from the checkpoint keep integer steps (it printed "160.0").
    best = re.search(r"best eval return .* at env step \d+, kept in .*: (.*)", result.stdout)
    assert best, result.stdout
    # The printed command runs as pasted, the space in the workdir quoted.
    assert shlex.split(best.group(1))[3] == f"--workdir={workdir}", best.group(1)


@pytest.mark.slow
def test_sigterm_saves_a_final_checkpoint_exits_cleanly_and_the_rerun_resumes(tmp_path):
    stop_with_signal_and_resume(tmp_path, signal.SIGTERM)


@pytest.mark.slow
def test_sigint_saves_a_final_checkpoint_and_exits_130(tmp_path):
    """Ctrl-C (SIGINT) is handled like SIGTERM: the README's status 130.  (The rerun from the
    saved checkpoint is the SIGTERM test's; the same path, not repeated here.)"""
    stop_with_signal_and_resume(tmp_path, signal.SIGINT, rerun=False)


def test_a_signal_inherited_as_ignored_stays_ignored_while_the_loop_runs():
    """Under nohup or as a non-interactive shell's background job SIGINT arrives ignored: the
    loop's graceful-stop handler leaves it so (as CPython does at start-up) and still takes
    SIGTERM."""
    script = textwrap.dedent(
        """
        import os, signal
        from wm_jax.shell import StopOnSignal
        with StopOnSignal() as stop:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.signum is None, stop.signum
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.signum == signal.SIGTERM, stop.signum
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        print("kept")
        """
    )

    def ignore_sigint():
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO,
        preexec_fn=ignore_sigint,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0 and result.stdout.strip() == "kept", result.stderr[-2000:]


def test_a_second_signal_whose_exit_a_finalizer_swallowed_still_ends_the_loop_at_once():
    """Python runs a signal handler in whatever frame is current, a finalizer's included, where
    the exception it raises (the CLI's SIGTERM: ``SystemExit(143)``) is only printed: the
    loop's next look at the stop request ends it as the second signal would have, instead of
    going on to the graceful stop the first one asked for."""
    script = textwrap.dedent(
        """
        import signal
        from wm_jax.shell import StopOnSignal

        def terminate(signum, frame):  # what wm_jax.cli installs for SIGTERM
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, terminate)

        class SignalledInAFinalizer:
            def __del__(self):
                signal.raise_signal(signal.SIGTERM)  # the first: stop after this step
                signal.raise_signal(signal.SIGTERM)  # the second: its SystemExit is only printed

        with StopOnSignal() as stop:
            SignalledInAFinalizer()
            print("swallowed", flush=True)
            if stop.signum is not None:  # what the loop reads every step
                print("went on to the graceful stop")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert "Exception ignored" in result.stderr, result.stderr[-2000:]
    assert result.stdout.split() == ["swallowed"], (result.stdout, result.stderr[-2000:])
    assert result.returncode == 143, (result.returncode, result.stderr[-2000:])


# The CLI where what is left of the step after a first SIGTERM/SIGINT takes minutes (as a long
# train step, a slow env or a big replay would): the loop's handler does its work, writes argv[1]
# (a marker file) and sleeps, still inside the loop's signal handling.
_SLOW_STOP = textwrap.dedent(
    """
    import importlib, sys, time
    from absl import app
    import wm_jax.shell as shell
    from wm_jax import cli as cli_lib
    train = importlib.import_module("wm_jax.train")  # (wm_jax.train is also a function)

    marker, argv = sys.argv[1], sys.argv[2:]
    handle = shell.StopOnSignal._handle

    def handle_then_work(self, signum, frame):
        handle(self, signum, frame)
        open(marker, "w").close()
        time.sleep(600)

    shell.StopOnSignal._handle = handle_then_work
    app.run(train.main, argv=["wm_jax.train", *argv], flags_parser=cli_lib.parse_flags)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_second_signal_during_the_graceful_stop_ends_the_run_at_once(tmp_path, signum):
    """The first signal starts the graceful stop (finish the step, save); a second one while
    the step is still being finished is not deferred: it ends the process at once, as the
    signal does by default (SIGINT: KeyboardInterrupt, which Python ends by the signal itself;
    SIGTERM: status 143), without the final checkpoint or the "interrupted by" line."""
    workdir, marker = tmp_path / "run", tmp_path / "stopping"
    script = tmp_path / "slow_stop.py"
    script.write_text(_SLOW_STOP)
    cmd = [sys.executable, str(script), str(marker), f"--workdir={workdir}", *TINY]
    cmd += [
        "--config.total_env_steps=100000",
        "--config.checkpoint_every=100000",
        "--config.checkpoint_seconds=0",  # no save by time: the first save is the final one
    ]
    proc = _start_in_a_terminal(cmd)
    try:
        metrics = workdir / "metrics.jsonl"
        deadline = time.time() + 500
        while time.time() < deadline and proc.poll() is None:
            if metrics.exists() and metrics.read_text().count("\n") >= 2:
                break  # training, inside the loop's signal handling
            time.sleep(0.05)
        proc.send_signal(signum)  # the graceful stop begins
        while time.time() < deadline and proc.poll() is None and not marker.exists():
            time.sleep(0.05)
        if not marker.exists():
            proc.kill()
            raise AssertionError(f"no graceful stop began: {proc.communicate()[1][-3000:]}")
        proc.send_signal(signum)  # while the step is being finished (ten minutes)
        sent = time.time()
        _, stderr = proc.communicate(timeout=60)
        took = time.time() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert took < 60
    expected = (-signal.SIGINT, 128 + signal.SIGINT) if signum == signal.SIGINT else (143,)
    assert proc.returncode in expected, (proc.returncode, stderr[-3000:])
    assert "interrupted by" not in stderr
    assert not (workdir / "checkpoints").is_dir() or not [
        n for n in os.listdir(workdir / "checkpoints") if n.isdigit()
    ]
