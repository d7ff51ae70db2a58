"""One run per workdir, resumes that are checked before anything is written, logs that follow
the checkpoints, time-bounded loss and named errors (wm_jax.run_dir, issue 20)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from conftest import REPO, mounted_tmpfs, needs_tmpfs, run_cli, small_config

from wm_jax.checkpoint import CheckpointSaveError
from wm_jax.config import ConfigError, validate
from wm_jax.metrics import MetricsWriter, read_metrics, tensorboard_tag
from wm_jax.replay import ReplayBuffer
from wm_jax.run_dir import ResumeRefusedError, RunDir, WorkdirLockedError
from wm_jax.trainer import Trainer


def tiny(**overrides):
    settings = {
        "total_env_steps": 128,
        "prefill_steps": 32,
        "eval_every": 0,
        "log_every": 32,
        "checkpoint_every": 64,
        "report": False,
        "schedule.warmup_steps": 64,
        "schedule.transition_steps": 96,
        "diagnostics.open_loop_every": 0,
    }
    return small_config(**{**settings, **overrides})


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny run with checkpoints at env steps 64 and 128 (closed: its lock is free)."""
    workdir = tmp_path_factory.mktemp("trust") / "run"
    trainer = Trainer(tiny(), str(workdir))
    try:
        trainer.run()
    finally:
        trainer.close()
    return workdir


def copy_run(source, tmp_path, name="run"):
    target = tmp_path / name
    shutil.copytree(source, target)
    return target


def snapshot(directory) -> dict[str, str]:
    """Every file under ``directory`` with its content hash."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return out


HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from wm_jax.run_dir import RunDir
    run_dir = RunDir(sys.argv[1])
    run_dir.lock()
    run_dir._record_holder()
    print("locked", flush=True)
    time.sleep(600)
    """
)


def hold_lock(workdir):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(workdir)], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.slow
def test_a_second_run_on_a_locked_workdir_is_refused_and_kill_9_frees_the_lock(
    finished_run, tmp_path
):
    workdir = copy_run(finished_run, tmp_path)
    before = snapshot(workdir)
    holder = hold_lock(workdir)
    try:
        with pytest.raises(WorkdirLockedError, match=f"pid {holder.pid} on host"):
            Trainer(tiny(), str(workdir))
        # The CLI exits at once with its documented code and no traceback.
        result = run_cli(str(workdir), "--config.total_env_steps=64")
        assert result.returncode == 5, result.stderr[-2000:]
        assert f"pid {holder.pid}" in result.stderr and "Traceback" not in result.stderr
        assert {k: v for k, v in snapshot(workdir).items() if k != ".lock"} == {
            k: v for k, v in before.items() if k != ".lock"
        }
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The kernel released the lock with the killed holder: no stale lock.
    RunDir.open(str(workdir), None, None).close()


@pytest.mark.slow
def test_two_live_trainers_in_one_process_cannot_share_a_workdir(tmp_path):
    first = Trainer(tiny(checkpoint_every=0), str(tmp_path / "run"))
    try:
        with pytest.raises(WorkdirLockedError):
            Trainer(tiny(checkpoint_every=0), str(tmp_path / "run"))
    finally:
        first.close()
    Trainer(tiny(checkpoint_every=0), str(tmp_path / "run")).close()  # free once closed


@pytest.mark.parametrize(
    "change, named",
    [
        ({"model.hidden_dim": 48}, "model.hidden_dim: 32 -> 48"),
        ({"seed": 7}, "seed: 0 -> 7"),
        ({"env_id": "CartPole-v0"}, "env_id: 'CartPole-v1' -> 'CartPole-v0'"),
    ],
)
@pytest.mark.slow
def test_a_refused_resume_names_every_differing_field_and_leaves_the_workdir_byte_identical(
    finished_run, tmp_path, change, named
):
    workdir = copy_run(finished_run, tmp_path)
    before = snapshot(workdir)
    with pytest.raises(ResumeRefusedError) as refused:
        Trainer(tiny(**change), str(workdir))
    assert named in str(refused.value)
    assert "total_env_steps" in str(refused.value)  # says what may change
    assert snapshot(workdir) == before


@pytest.mark.slow
def test_the_cli_refuses_a_changed_resume_with_exit_6_and_no_traceback(finished_run, tmp_path):
    workdir = copy_run(finished_run, tmp_path)
    config = json.loads((workdir / "config.json").read_text())
    before = snapshot(workdir)
    args = [f"--config.{k}={config[k]}" for k in ("prefill_steps", "log_every")]
    result = run_cli(str(workdir), *args, "--config.model.hidden_dim=8")
    assert result.returncode == 6, result.stderr[-2000:]
    assert "model.hidden_dim" in result.stderr and "Traceback" not in result.stderr
    assert snapshot(workdir) == before


@pytest.mark.slow
def test_resuming_with_a_longer_run_is_allowed(finished_run, tmp_path):
    workdir = copy_run(finished_run, tmp_path)
    trainer = Trainer(tiny(total_env_steps=160, log_every=16), str(workdir))
    try:
        assert trainer.resumed_from == 128
        assert trainer.run().env_steps == 160
    finally:
        trainer.close()


@pytest.mark.slow
def test_after_a_lost_checkpoint_metrics_hold_each_step_once_and_damaged_lines_are_skipped(
    finished_run, tmp_path
):
    workdir = copy_run(finished_run, tmp_path)
    # As after a kill -9 between the log row of step 128 and its checkpoint, with the last
    # line cut mid-write.
    shutil.rmtree(workdir / "checkpoints" / "128")
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write('{"env_step": 160, "dynamics_lo')
    logged = [r["env_step"] for r in read_metrics(str(workdir)) if "updates" in r]
    assert 96 in logged and 128 in logged  # rows of the lost steps are there before resume
    trainer = Trainer(tiny(total_env_steps=192), str(workdir))
    try:
        assert trainer.resumed_from == 64
        trainer.run()
    finally:
        trainer.close()
    rows = [r for r in read_metrics(str(workdir)) if "updates" in r]
    steps = [r["env_step"] for r in rows]
    assert steps == [32, 64, 96, 128, 160, 192]
    assert all(json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines())
    # The resumed rows' wall time continues from the last row kept (env step 64).
    walls = [r["wall_time_s"] for r in read_metrics(str(workdir))]
    assert walls == sorted(walls) and rows[4]["wall_time_s"] >= rows[1]["wall_time_s"] > 0


def test_every_metrics_row_gets_an_increasing_wall_time_in_the_train_group(tmp_path):
    writer = MetricsWriter(str(tmp_path), tensorboard=False)
    try:
        rows = [writer.write(step, {"loss": 1.0}) for step in (1, 2, 3)]
        rows.append(writer.write(3, {"eval_return": 5.0}))
    finally:
        writer.close()
    walls = [r["wall_time_s"] for r in read_metrics(str(tmp_path))]
    assert walls == [r["wall_time_s"] for r in rows] == sorted(walls) and walls[0] >= 0
    assert tensorboard_tag("wall_time_s") == "train/wall_time_s"


def test_a_resumed_writer_continues_the_wall_time_of_the_last_row_kept(tmp_path):
    """A resume drops the rows after its checkpoint (RunDir.continue_logs) and then opens
    the writer: its rows count on from the last row kept, not from 0."""
    with open(tmp_path / "metrics.jsonl", "w") as f:
        f.write(json.dumps({"env_step": 64, "loss": 1.0, "wall_time_s": 1000.0}) + "\n")
        f.write(json.dumps({"env_step": 64, "eval_return": 3.0}) + "\n")  # (an old row)
    writer = MetricsWriter(str(tmp_path), tensorboard=False)
    try:
        row = writer.write(96, {"loss": 0.5})
    finally:
        writer.close()
    assert 1000.0 <= row["wall_time_s"] == read_metrics(str(tmp_path))[-1]["wall_time_s"]


@pytest.mark.slow
def test_the_report_is_written_from_a_damaged_metrics_file(finished_run, tmp_path):
    from wm_jax.report import write_report

    workdir = copy_run(finished_run, tmp_path)
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write("\x00\x00garbage{\n")
    with open(workdir / "metrics.jsonl", "r+") as f:  # a torn line in the middle, too
        text = f.read()
        f.seek(0)
        f.write(text.replace('"env_step": 64', '"env_st', 1))
    assert os.path.exists(write_report(str(workdir)))


@pytest.mark.slow
def test_report_md_escapes_the_strings_it_embeds(finished_run, tmp_path):
    from wm_jax.report import write_report

    workdir = copy_run(finished_run, tmp_path)
    config = json.loads((workdir / "config.json").read_text())
    config["env_id"] = "evil <img src=x onerror=alert(1)> [link](http://x) *b*"
    (workdir / "config.json").write_text(json.dumps(config))
    write_report(str(workdir))
    md = (workdir / "report" / "report.md").read_text()
    # The config section is a fenced code block (rendered literally); the rest is markup.
    markup, _, config_block = md.partition("## Config")
    assert "<img" not in markup and "](http" not in markup and "*b*" not in markup
    assert "&lt;img" in markup
    assert config_block.strip().startswith("```json") and config_block.strip().endswith("```")


@pytest.mark.slow
def test_a_time_interval_checkpoints_between_step_intervals(tmp_path):
    trainer = Trainer(tiny(checkpoint_every=10_000, checkpoint_seconds=1e-3), str(tmp_path / "r"))
    try:
        trainer.run()
        steps = trainer.checkpointer.all_steps()
    finally:
        trainer.close()
    # The 3 kept are those of the last three vector steps (4 envs): saved by time alone.
    assert steps == [120, 124, 128]


@pytest.mark.slow
def test_a_failed_checkpoint_save_stops_the_run_naming_the_cause_and_the_last_good_step(
    tmp_path, monkeypatch
):
    trainer = Trainer(tiny(), str(tmp_path / "run"))
    try:
        trainer.run(stop_at=64)
        trainer.checkpointer.wait()

        def disk_full(*args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(trainer.checkpointer.manager, "save", disk_full)
        with pytest.raises(
            CheckpointSaveError, match="disk is full.*last complete checkpoint is step 64"
        ):
            trainer.run()
        assert trainer.env_step == 128  # stopped at the failed save, not later
    finally:
        monkeypatch.undo()
        trainer.close()
    resumed = Trainer(tiny(), str(tmp_path / "run"))
    try:
        assert resumed.resumed_from == 64
    finally:
        resumed.close()


@pytest.mark.slow
def test_start_up_refuses_a_replay_that_cannot_fit_in_memory_and_an_infinite_learning_rate():
    with pytest.raises(ConfigError, match="replay_capacity.*GiB"):
        ReplayBuffer(10**9, 1, (64, 64, 3), np.uint8, 1)
    with pytest.raises(ConfigError, match="actor.lr: must be a finite number"):
        validate(small_config(**{"actor.lr": float("inf")}))
    with pytest.raises(ConfigError, match="checkpoint_seconds"):
        validate(small_config(checkpoint_seconds=-1.0))


@pytest.mark.slow
def test_lock_holder_and_time_are_recorded_only_after_the_resume_check(finished_run, tmp_path):
    workdir = copy_run(finished_run, tmp_path)
    lock = workdir / ".lock"
    before = lock.read_bytes()
    with pytest.raises(ResumeRefusedError):
        Trainer(tiny(seed=5), str(workdir))
    assert lock.read_bytes() == before
    time.sleep(0.01)
    trainer = Trainer(tiny(), str(workdir))
    try:
        assert f"pid {os.getpid()}" in lock.read_text()
    finally:
        trainer.close()


def _register_exploding_env():
    """A CartPole whose step() raises at its 20th step."""
    import gymnasium
    from gymnasium.envs.classic_control import CartPoleEnv

    class Exploding(CartPoleEnv):
        def step(self, action):
            self.steps = getattr(self, "steps", 0) + 1
            if self.steps >= 20:
                raise RuntimeError("simulator crashed")
            return super().step(action)

    if "WmJaxExploding-v0" not in gymnasium.registry:
        gymnasium.register("WmJaxExploding-v0", entry_point=Exploding, max_episode_steps=500)


@pytest.mark.slow
def test_an_environment_that_raises_inside_step_stops_the_run_with_a_named_error(tmp_path):
    from wm_jax.envs import EnvStepError

    _register_exploding_env()
    # The crash comes during the random prefill: nothing is compiled.
    config = tiny(env_id="WmJaxExploding-v0", prefill_steps=96, checkpoint_every=32)
    trainer = Trainer(config, str(tmp_path / "run"))
    try:
        with pytest.raises(
            EnvStepError,
            match="WmJaxExploding-v0 raised RuntimeError inside step.*simulator crashed.*at env "
            "step 7[26].*last good checkpoint is env step 64",
        ):
            trainer.run()
    finally:
        trainer.close()


@pytest.mark.slow
def test_a_signal_during_an_evaluation_abandons_it_and_saves(tmp_path, monkeypatch):
    import wm_jax.trainer as trainer_lib

    trainer = Trainer(tiny(eval_every=64, eval_episodes=4), str(tmp_path / "run"))
    real_evaluate = trainer_lib.evaluate
    steps_seen = []

    def evaluate_with_signal(*args, should_stop=None, **kwargs):
        # SIGTERM arrives while the evaluation runs (the handler only sets a flag).
        os.kill(os.getpid(), signal.SIGTERM)

        def counting_stop():
            steps_seen.append(1)
            return should_stop()

        return real_evaluate(*args, should_stop=counting_stop, **kwargs)

    monkeypatch.setattr(trainer_lib, "evaluate", evaluate_with_signal)
    try:
        result = trainer.run()
    finally:
        trainer.close()
    assert result.interrupted_by == signal.SIGTERM
    assert result.env_steps == 64 and result.eval_returns == []
    assert len(steps_seen) == 1  # stopped at its first vector step, not after 4 episodes
    assert trainer.checkpointer.latest_step() == 64


@needs_tmpfs
@pytest.mark.slow
def test_a_full_disk_stops_the_run_with_a_named_error_and_leaves_a_resumable_workdir(tmp_path):
    from wm_jax.errors import WorkdirError

    with mounted_tmpfs(tmp_path / "small_disk", "size=32m") as disk:
        workdir = disk / "run"
        config = tiny(replay_capacity=2_000)
        trainer = Trainer(config, str(workdir))
        try:
            trainer.run(stop_at=64)
            trainer.checkpointer.wait()
            fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
            try:
                while True:
                    os.write(fd, b"\0" * 65536)
            except OSError as err:
                assert err.errno == errno.ENOSPC
            finally:
                os.close(fd)
            with pytest.raises((WorkdirError, CheckpointSaveError), match="disk is full"):
                trainer.run()
        finally:
            trainer.close()
        os.remove(disk / "filler")
        resumed = Trainer(config, str(workdir))
        try:
            assert resumed.resumed_from == 64
            assert resumed.run().env_steps == 128
        finally:
            resumed.close()


@needs_tmpfs
@pytest.mark.slow
def test_a_read_only_or_too_small_workdir_is_refused_at_start_up_with_a_named_error(tmp_path):
    from wm_jax.errors import WorkdirError

    with (
        mounted_tmpfs(tmp_path / "ro", "ro,size=1m") as read_only,
        mounted_tmpfs(tmp_path / "small", "size=1m") as small,
    ):
        with pytest.raises(WorkdirError, match="read-only"):
            Trainer(tiny(), str(read_only / "run"))
        result = run_cli(str(read_only / "run"), "--config.total_env_steps=64")
        assert result.returncode == 7, result.stderr[-2000:]
        assert "read-only" in result.stderr and "Traceback" not in result.stderr
        # A 100k-transition replay does not fit on 1 MiB: refused before any step.
        with pytest.raises(WorkdirError, match="a checkpoint needs about"):
            Trainer(tiny(replay_capacity=100_000), str(small / "run"))
        assert not os.path.exists(small / "run" / "config.json")
        # From the CLI: the one line, and no traceback of orbax's clean-up thread at exit; the
        # device loop checks the same before its first step (it wrote 1000 lines of orbax
        # errors when its first save filled the disk).
        device = ["--config.loop=device", "--config.env_id=gymnax:CartPole-v1"]
        for name, loop in (("cli", []), ("device", device)):
            result = run_cli(str(small / name), *loop, "--config.replay_capacity=100000")
            assert result.returncode == 7, result.stderr[-2000:]
            assert "a checkpoint needs about" in result.stderr
            assert "Traceback" not in result.stderr, result.stderr[-2000:]


@needs_tmpfs
def test_a_save_that_fills_the_disk_or_cannot_fit_raises_the_named_error(tmp_path):
    from wm_jax.checkpoint import Checkpointer

    with mounted_tmpfs(tmp_path / "disk", "size=1m") as disk:
        checkpointer = Checkpointer(str(disk / "checkpoints"))
        try:
            too_big = {"w": np.arange(1 << 20, dtype=np.float32)}  # 4 MiB on a 1 MiB disk
            with pytest.raises(CheckpointSaveError, match="the disk is full"):
                checkpointer.save(1, too_big, {"x": np.zeros(3)})
                checkpointer.wait()  # orbax raises the background save's own error here
        finally:
            checkpointer.close()
        shutil.rmtree(disk / "checkpoints")
        # Once a checkpoint exists, a save the free space cannot hold is refused before orbax
        # starts writing it (whose failure in its threads prints hundreds of tracebacks).
        checkpointer = Checkpointer(str(disk / "checkpoints"))
        try:
            fits = {"w": np.arange(100_000, dtype=np.float32)}  # ~0.4 MiB
            checkpointer.save(1, fits, {"x": np.zeros(3)})
            checkpointer.wait()
            with open(disk / "filler", "wb") as filler:
                filler.write(b"\1" * (shutil.disk_usage(disk).free - 100_000))
            with pytest.raises(CheckpointSaveError, match="checkpoint 1 takes"):
                checkpointer.save(2, fits, {"x": np.zeros(3)})
            assert os.listdir(disk / "checkpoints") == ["1"]  # no partial step 2 begun
            assert checkpointer.latest_step() == 1
        finally:
            checkpointer.close()


@pytest.mark.slow
def test_after_kill_9_the_run_resumes_from_a_checkpoint_no_older_than_the_time_interval(
    tmp_path,
):
    workdir = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "wm_jax.train", f"--workdir={workdir}",
        "--config.total_env_steps=1000000", "--config.checkpoint_every=1000000",
        "--config.checkpoint_seconds=3", "--config.eval_every=0", "--config.log_every=32",
        "--config.prefill_steps=64", "--config.batch_size=16", "--config.report=False",
        "--config.model.feature_dim=16", "--config.model.state_dim=8",
        "--config.model.hidden_dim=16", "--config.model.hidden_layers=1",
        "--config.imagination.horizon=4",
        "--config.diagnostics.open_loop_every=0",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    checkpoints = workdir / "checkpoints"
    try:
        deadline = time.time() + 400
        # Run until checkpoints have been written by time for a while (the step interval never
        # comes), then kill at an arbitrary moment.
        while time.time() < deadline:
            steps = [int(n) for n in os.listdir(checkpoints) if n.isdigit()] if (
                checkpoints.exists()
            ) else []
            if len(steps) >= 3:
                break
            time.sleep(0.5)
        assert len(steps) >= 3, "no time-based checkpoints were written"
        time.sleep(1.7)
    finally:
        killed_at = time.time()
        proc.kill()
        proc.wait()
    steps = sorted(int(n) for n in os.listdir(checkpoints) if n.isdigit())
    newest_written = os.path.getmtime(checkpoints / str(steps[-1]))
    # No older than the interval (3 s) plus one vector step and the save itself (slack 5 s).
    assert killed_at - newest_written < 3 + 5
    rerun = [a for a in cmd if "total_env_steps" not in a]
    rerun.append(f"--config.total_env_steps={steps[-1] + 8}")  # run length may change
    result = subprocess.run(rerun, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resumed from checkpoint at env step {steps[-1]}" in result.stderr


def test_a_run_older_than_a_config_field_resumes_when_the_field_keeps_its_default():
    """A field the stored config.json lacks (added after the run started) is no difference at
    its default, the behaviour the run had; set to anything else it is refused, and a field
    the new config lacks is still reported."""
    from wm_jax.run_dir import base_defaults, config_differences

    new = json.loads(small_config().to_json_best_effort())
    stored = json.loads(json.dumps(new))
    del stored["critic"]["slow_reg"], stored["actor"]["center_advantages"]
    assert config_differences(stored, new, base_defaults()) == ([], [])
    # Without the defaults (the env spec's comparison) an absent field is a difference.
    assert len(config_differences(stored, new)[0]) == 2
    new["critic"]["slow_reg"] = 1.0
    refused, _ = config_differences(stored, new, base_defaults())
    assert refused == ["critic.slow_reg: '<absent>' -> 1.0"]
    gone = json.loads(json.dumps(new))
    del gone["critic"]["bins"]
    assert "critic.bins: 0 -> '<absent>'" in config_differences(new, gone, base_defaults())[0]
