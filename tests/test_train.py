"""The training loop through its real entry points: the absl CLI, checkpoints and exact resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, TINY, run_cli


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cli") / "run"
    # No checkpoint by time: on a loaded machine 120 s can pass before step 160, adding one.
    result = run_cli(
        str(workdir),
        "--seed=3",
        "--config.checkpoint_seconds=0",
        config_file="experiments/configs/cartpole.py",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, result


@pytest.mark.slow
def test_cli_trains_logs_and_checkpoints(cli_run):
    workdir, result = cli_run
    assert f"results in {workdir}" in result.stdout
    records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert records[-1]["env_step"] == 320
    merged = {k for r in records for k in r}
    for name in (
        "world_model_loss",
        "dynamics_loss",
        "actor_loss",
        "critic_loss",
        "mean_imagined_return",
        "eval_return",
        "env_steps_per_s",
        "critic_td_error_mean",
        "continue_accuracy",
    ):
        assert name in merged, name
    assert "open_loop_error_step1" in merged
    checks = [json.loads(line) for line in open(workdir / "open_loop.jsonl")]
    assert [c["env_step"] for c in checks] == [128, 256]
    assert len(checks[-1]["error_by_step"]) == 8
    assert np.asarray(checks[-1]["pred"]).shape == (3, 8, 4)  # raw CartPole observations
    assert (workdir / "report" / "report.html").exists()  # written at the end of every run
    assert json.load(open(workdir / "config.json"))["env_id"] == "CartPole-v1"
    phases = {r.get("phase") for r in records}
    assert {"warmup", "transition", "full"} <= phases
    assert any(
        name.startswith("events.out.tfevents") for name in os.listdir(workdir / "tensorboard")
    )
    assert sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit()) == [160, 320]


@pytest.mark.slow
def test_the_console_log_is_one_line_per_log_row_and_no_library_chatter(cli_run):
    import re

    workdir, result = cli_run
    lines = result.stderr.splitlines()
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    wm_jax_files = {name for name in os.listdir(os.path.join(REPO, "wm_jax"))}
    sources = [re.match(r"[IWEF]\d{4} [\d:.]+ +\d+ ([\w.]+):\d+\]", line) for line in lines]
    # Every line is one of wm_jax's own log lines (no orbax/jax INFO, no SDL/ALSA noise)...
    assert all(m and m.group(1) in wm_jax_files for m in sources), "\n".join(lines)
    # ... one per metrics row, one per detector finding, and four more: the start (run
    # directory, no checkpoint, precision and allocator) and the report. A 30k-step CartPole
    # run (30 rows) stays well under 60 lines.
    row_lines = [line for line in lines if "metrics.py" in line]
    others = [line for line in lines if line not in row_lines and "failure signature" not in line]
    assert 0 < len(row_lines) <= len(rows) and len(others) == 4, "\n".join(lines)


def test_cli_rejects_a_bad_config_value_naming_the_field(tmp_path):
    result = run_cli(str(tmp_path / "bad"), "--config.imagination.horizon=0")
    assert result.returncode == 1
    # One line: the field, what is wrong and where fields are explained; no flags help dump.
    assert result.stderr.splitlines() == [
        "FATAL Flags parsing error: config.imagination.horizon: must be a positive integer, "
        "got 0 (docs/config.md explains every field)"
    ]


def test_a_missing_or_broken_config_file_and_refused_env_kwargs_are_one_line_errors(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config(:\n")
    cases = [
        ({"config_file": str(tmp_path / "missing.py")}, (), "the --config file cannot be loaded"),
        ({"config_file": str(broken)}, (), f"the config file {broken} does not parse"),
        ({}, ('--env_kwargs={"no_such_kwarg": 1}',), "could not be made with env_kwargs"),
    ]
    for kwargs, extra, message in cases:
        result = run_cli(str(tmp_path / "run"), *extra, **kwargs)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert message in result.stderr


_CHECK_IMPORTS = """
import atexit, runpy, sys
sys.argv = ["wm_jax.train", *sys.argv[1:]]
atexit.register(lambda: print("jax imported:", "jax" in sys.modules))
runpy.run_module("wm_jax.train", run_name="__main__")
"""


@pytest.mark.parametrize(
    "bad",
    [
        "--config.imagination.horizon=0",  # a value validation refuses
        "--config.imagination.horizon=abc",  # a value of the wrong type
        "--config.actor.lrr=1e-4",  # a mistyped field
        "--seeds=0,x",  # a bad flag value
        "--no_such_flag=1",
    ],
)
def test_a_bad_command_line_is_one_error_line_before_jax_is_imported(tmp_path, bad):
    # Checked before JAX is imported, so the error comes in about a second, not after the 4-13 s
    # of importing JAX and making the environment.
    env = {**os.environ, "WM_JAX_NO_ALLOCATOR_TUNING": "1"}
    cmd = [sys.executable, "-c", _CHECK_IMPORTS, bad, f"--workdir={tmp_path / 'run'}"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("FATAL Flags parsing error: ")
    assert result.stdout.strip() == "jax imported: False"
    assert not (tmp_path / "run").exists()


def test_cli_rejects_an_unknown_environment_id(tmp_path):
    result = run_cli(str(tmp_path / "bad"), "--config.env_id=NoSuchEnv-v9")
    assert result.returncode != 0
    assert "NoSuchEnv-v9" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_cli_env_kwargs_reach_the_environment_and_bad_json_is_refused(tmp_path):
    # A 12-step time limit makes the 16-step windows impossible: the env got the kwarg.
    result = run_cli(
        str(tmp_path / "short"),
        '--env_kwargs={"max_episode_steps": 12}',
        "--config.sequence_mode=True",
        "--config.sequence_length=16",
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "config.sequence_length" in result.stderr and "max_episode_steps=12" in result.stderr
    result = run_cli(str(tmp_path / "json"), "--env_kwargs={max_episode_steps: 12}")
    assert result.returncode != 0 and "--env_kwargs is not valid JSON" in result.stderr


@pytest.mark.slow
def test_cli_stops_after_consecutive_nonfinite_updates_with_a_pointer_to_the_cause(tmp_path):
    # An absurd learning rate blows the world model up; every later update is non-finite.
    result = run_cli(
        str(tmp_path / "nan"),
        "--config.world_model.lr=1e30",
        "--config.max_nonfinite_updates=3",
        "--config.checkpoint_every=64",
    )
    assert result.returncode == 3, result.stderr[-2000:]
    assert "consecutive" in result.stderr and "non-finite" in result.stderr
    assert "config.world_model.lr" in result.stderr
    assert "last good checkpoint" in result.stderr
    # The skipped updates are on record for the detector before the run stops.
    records = [json.loads(line) for line in open(tmp_path / "nan" / "metrics.jsonl")]
    assert any((r.get(k) or 0) > 0 for r in records for k in r if k.endswith("_update_skipped"))


def test_cli_names_a_mistyped_config_field_in_one_line_with_the_closest_name(tmp_path):
    result = run_cli(str(tmp_path / "typo"), "--config.actor.lrr=1e-4")
    assert result.returncode == 1
    assert "unknown config field --config.actor.lrr: did you mean 'lr'?" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) <= 3


@pytest.mark.slow
def test_tensorboard_groups_tags_by_component_and_shows_the_config_and_images(cli_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    workdir, _ = cli_run
    events = EventAccumulator(str(workdir / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in (
        "eval/eval_return",
        "train/train_return",
        "world_model/dynamics_loss",
        "world_model/reward_mae",
        "actor/entropy",
        "actor/mean_imagined_return",
        "critic/critic_loss",
        "train/wall_time_s",
    ):
        assert tag in scalars, sorted(scalars)
    assert not [t for t in scalars if "/" not in t]
    assert any("config" in t for t in events.Tags()["tensors"])
    # Each open-loop check (env steps 128, 256) as an image: CartPole's observations are
    # vectors, so the report's predicted-vs-true trajectories (an image env writes its strip).
    assert "open_loop/trajectories" in events.Tags()["images"], events.Tags()["images"]
    images = events.Images("open_loop/trajectories")
    assert [e.step for e in images] == [128, 256]
    assert all(e.width > 100 and e.height > 100 for e in images)


def test_print_config_shows_the_resolved_config_and_trains_nothing(tmp_path):
    result = run_cli(str(tmp_path / "p"), "--seed=7", "--print_config")
    assert result.returncode == 0, result.stderr[-2000:]
    printed = json.loads(result.stdout)
    assert printed["seed"] == 7 and printed["total_env_steps"] == 320  # TINY's override
    assert not (tmp_path / "p").exists()


def _terminal_lines(raw: str) -> list[str]:
    """What a terminal shows for ``raw``: each line as its carriage returns overwrite it."""
    shown = []
    for line in raw.replace("\r\n", "\n").split("\n"):
        cells: list[str] = []
        col = 0
        for char in line:
            if char == "\r":
                col = 0
                continue
            if col < len(cells):
                cells[col] = char
            else:
                cells.append(char)
            col += 1
        shown.append("".join(cells).rstrip())
    return [line for line in shown if line]


@pytest.mark.slow
def test_in_a_terminal_log_lines_print_above_the_one_line_progress_bar(tmp_path):
    import fcntl
    import pty
    import re
    import struct
    import termios

    cmd = [sys.executable, "-m", "wm_jax.train", f"--workdir={tmp_path / 'run'}", *TINY]
    cmd += ["--config.report=False"]
    # The CLI with a pty as its terminal, started by subprocess (fork + exec in C: no Python
    # runs in a forked copy of this multithreaded process).
    fd, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    proc = subprocess.Popen(
        cmd, stdin=terminal, stdout=terminal, stderr=terminal, cwd=REPO, start_new_session=True
    )
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    raw = b"".join(chunks).decode("utf-8", "replace")
    assert proc.wait(timeout=600) == 0, raw[-3000:]
    lines = _terminal_lines(raw)
    log = re.compile(r"[IWEF]\d{4} \d\d:\d\d:\d\d")
    bars = [line for line in lines if "env step" in line and "%|" in line]
    # The bar was drawn and redrawn many times, yet the terminal shows it on one line only.
    assert raw.count("%|") > 3 and len(bars) == 1, "\n".join(lines)
    for line in lines:
        found = log.search(line)
        if found:  # a log line starts its own line and holds no piece of the bar
            assert found.start() == 0 and "%|" not in line, line


def test_the_default_workdir_is_the_same_for_the_same_command_and_new_for_changed_overrides():
    from wm_jax.cli import default_workdir
    from wm_jax.config import get_config

    c = get_config()
    argv = ["train.py", "--config=experiments/configs/cartpole.py"]
    base = default_workdir("experiments/configs/cartpole.py", c, None, argv)
    assert base == os.path.join("runs", f"cartpole-CartPole-v1-seed{c.seed}")
    assert default_workdir("experiments/configs/cartpole.py", c, None, list(argv)) == base
    a = default_workdir("x/cartpole.py", c, None, [*argv, "--config.actor.lr=1", "--seed=3"])
    b = default_workdir("x/cartpole.py", c, None, [*argv, "--seed=3", "--config.actor.lr=1"])
    assert a == b and a.startswith(base + "-")  # the overrides' order does not matter
    assert default_workdir("x/cartpole.py", c, None, [*argv, "--config.actor.lr=2"]) != a
    assert default_workdir("x/cartpole.py", c, "0,1,2", argv).endswith("-seeds0-1-2")
    c.env_id = "gymnax:Catch-bsuite"
    assert default_workdir(None, c, None, ["t"]).startswith("runs/config-gymnax_Catch-bsuite-")


@pytest.mark.slow
def test_without_workdir_rerunning_the_same_command_resumes_the_same_run(tmp_path):
    cmd = [sys.executable, "-m", "wm_jax.train", *TINY, "--config.total_env_steps=128"]
    cmd += ["--config.report=False", "--config.eval_every=0", "--config.checkpoint_every=64"]
    env = {**os.environ, "PYTHONPATH": REPO}

    def run():
        result = subprocess.run(
            cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stderr

    first = run()
    (workdir,) = os.listdir(tmp_path / "runs")
    assert f"run directory runs/{workdir}: rerun the same command to resume" in first
    second = run()
    assert "resumed from checkpoint at env step 128" in second
    assert os.listdir(tmp_path / "runs") == [workdir]


def test_the_jitted_acting_key_is_the_eager_fold_in_chain_it_replaces():
    import jax

    from wm_jax.policy import acting_key

    seed_key = jax.random.PRNGKey(7)
    keys = []
    for step in (0, 1, 4096, 2**31 + 5):
        eager = jax.random.fold_in(jax.random.fold_in(seed_key, 2), step)
        assert (acting_key(seed_key, np.uint32(step)) == eager).all()
        on_process_3 = acting_key(seed_key, np.uint32(step), 3)
        assert (on_process_3 == jax.random.fold_in(eager, 3)).all()
        keys += [tuple(np.asarray(eager)), tuple(np.asarray(on_process_3))]
    assert len(set(keys)) == len(keys)  # every step and process acts with its own key
