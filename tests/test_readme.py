"""The README's commands work as written: every ``python -m wm_jax.*`` line of its bash blocks
is parsed and validated (``--print_config``: flags, config file, overrides, no training), and
the short ones (evaluate, report, offline) run on a small run made where they look for it."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, TINY

_SEPARATORS = ("&", "&&", ";", "|", "||")


def _commands_in(line: str) -> list[tuple[str, list[str]]]:
    tokens = shlex.split(line, comments=True)
    commands = []
    for i, token in enumerate(tokens):
        if " " in token and "python -m wm_jax." in token:  # a quoted command (ssh --command=)
            commands += _commands_in(token.partition("=")[2] or token)
        if token.endswith("python") and tokens[i + 1 : i + 2] == ["-m"]:
            module = tokens[i + 2] if i + 2 < len(tokens) else ""
            if module.startswith("wm_jax."):
                args = []
                for arg in tokens[i + 3 :]:
                    if arg in _SEPARATORS:
                        break
                    args.append(arg)
                commands.append((module, args))
    return commands


def readme_commands(text: str) -> list[tuple[str, list[str]]]:
    """``(module, args)`` of each ``python -m wm_jax.<module>`` in the README's bash blocks,
    line continuations joined, comments dropped, quoted commands (``--command="..."``) read."""
    commands = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, re.S):
        # A `for i in 0 1 ...; do` loop's variable takes its first value, as in the first pass.
        loops = dict(re.findall(r"for (\w+) in (\S+)", block))
        for line in block.replace("\\\n", " ").splitlines():
            for name, first in loops.items():
                line = line.replace(f"${name}", first)
            if "python -m wm_jax." in line:
                commands += _commands_in(line)
    return commands


COMMANDS = readme_commands(open(os.path.join(REPO, "README.md")).read())
TRAIN = [args for module, args in COMMANDS if module == "wm_jax.train"]


def test_the_readme_extractor_finds_the_first_command_and_the_multi_host_ones():
    assert TRAIN[0] == ["--config=experiments/configs/cartpole_rssm.py", "--workdir=runs/cartpole"]
    assert any("--distributed" in args for args in TRAIN)  # inside srun / gcloud quotes
    assert {m for m, _ in COMMANDS} >= {"wm_jax.train", "wm_jax.evaluate", "wm_jax.report"}


def _wandb_installed() -> bool:
    try:
        import wandb  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("args", TRAIN, ids=[" ".join(a)[:80] for a in TRAIN])
def test_every_readme_training_command_is_accepted_as_written(args):
    if "--config.wandb.enabled=True" in args and not _wandb_installed():
        pytest.skip("the W&B example needs the wandb extra")
    env = {**os.environ, "WM_JAX_NO_ALLOCATOR_TUNING": "1"}
    cmd = [sys.executable, "-m", "wm_jax.train", *args, "--print_config"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert '"env_id"' in result.stdout


# Shortening overrides appended to the offline commands (later flags win): the same flags as
# written, a few updates, and the small run's network sizes (fine-tuning restores its weights).
_SHORT_OFFLINE = [
    "--config.offline.updates=8",
    "--config.offline.world_model_only_updates=4",
    "--config.offline.transition_updates=4",
    "--config.offline.log_every=4",
    "--config.offline.checkpoint_every=8",
    "--config.offline.eval_every=8",
    "--config.offline.open_loop_every=0",
    "--config.offline.eval_video_every=0",
    "--config.eval_episodes=1",
    "--config.report=False",
]


def _workdir_of(args: list[str], flag: str) -> str | None:
    for arg in args:
        if arg.startswith(f"--{flag}="):
            return arg.split("=", 1)[1].removeprefix("run:")
    return None


@pytest.mark.slow
def test_readme_evaluate_report_and_offline_commands_run_as_written_on_a_small_run(tmp_path):
    os.symlink(os.path.join(REPO, "experiments"), tmp_path / "experiments")
    env = {**os.environ, "PYTHONPATH": REPO}

    def run(module, args):
        cmd = [sys.executable, "-m", module, *args]
        result = subprocess.run(
            cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600
        )
        assert result.returncode == 0, (cmd, result.stderr[-3000:])
        return result

    # The README's first command, shortened: the run the later commands read.
    run("wm_jax.train", TRAIN[0] + TINY)
    sizes = [a for a in TINY if a.startswith("--config.model.")]
    ran = []
    for module, args in COMMANDS:
        if module == "wm_jax.offline":
            if not (tmp_path / _workdir_of(args, "dataset")).is_dir():
                continue  # a minari dataset: made by the README's Python snippet
            run(module, args + sizes + _SHORT_OFFLINE)
        elif module in ("wm_jax.evaluate", "wm_jax.report"):
            workdir = tmp_path / _workdir_of(args, "workdir")
            if module == "wm_jax.report" and not workdir.exists():
                shutil.copytree(tmp_path / "runs" / "cartpole", workdir)  # any run has a report
            if not workdir.is_dir():
                continue  # a run of another README example (catch, minari)
            out = run(module, args).stdout
            assert ("return" in out) if module == "wm_jax.evaluate" else ("report" in out)
        else:
            continue
        ran.append(" ".join([module, *args]))
    assert len(ran) >= 5, ran  # report, evaluate (+GIF), offline, fine-tuning, its evaluation
    assert (tmp_path / "runs" / "cartpole" / "episode.gif").stat().st_size > 0
