"""``--seeds``: several host-loop seeds from one command, each in ``<workdir>/seed_<S>``, and the
combined report (mean eval curve with a ±1 standard-error band)."""

from __future__ import annotations

import json
import math
import os
import time

import pytest
from conftest import DETERMINISTIC_ENV, run_cli, small_config

from wm_jax.report import combine_curves, eval_curve, write_seeds_report
from wm_jax.run_dir import RunDir, read_finished, write_finished


def _evals(workdir) -> list[tuple[int, float]]:
    return eval_curve(str(workdir))


def _write_metrics(workdir, evals) -> None:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        f.write(json.dumps({"env_step": 10, "world_model_loss": 1.0}) + "\n")  # not an eval row
        for step, value in evals:
            f.write(json.dumps({"env_step": step, "eval_return": value, "eval_return_std": 1.0}))
            f.write("\n")


def test_combined_curve_mean_and_standard_error_over_uneven_seeds(tmp_path):
    # seed 0 and 1 evaluate at 100 and 200, seed 2 also at 300 (say, resumed with more steps);
    # seed 3 never wrote metrics.
    _write_metrics(tmp_path / "seed_0", [(100, 1.0), (200, 4.0)])
    _write_metrics(tmp_path / "seed_1", [(100, 3.0), (200, 6.0)])
    _write_metrics(tmp_path / "seed_2", [(100, 5.0), (200, 8.0), (300, 9.0)])
    runs = {s: str(tmp_path / f"seed_{s}") for s in range(4)}
    curves = {s: _evals(wd) for s, wd in runs.items()}
    assert curves[3] == []
    combined = combine_curves(curves)
    assert combined["step"] == [100, 200, 300]
    assert combined["n"] == [3, 3, 1]
    assert combined["mean"] == pytest.approx([3.0, 6.0, 9.0])
    # values 1, 3, 5: sample std 2, standard error 2 / sqrt(3); one seed: no spread
    assert combined["stderr"] == pytest.approx([2 / math.sqrt(3), 2 / math.sqrt(3), 0.0])
    html_path = write_seeds_report(str(tmp_path), runs)
    report = tmp_path / "report"
    assert html_path == str(report / "report.html")
    assert (report / "eval_returns.png").stat().st_size > 0
    md = (report / "report.md").read_text()
    assert "seeds without evaluations \\(left out\\): 3" in md
    assert "| 300 | 1 | 9.00 | 0.00 |" in md
    assert not [n for n in os.listdir(report) if n.endswith(".tmp")]


def test_seeds_with_seed_is_refused_in_one_line(tmp_path):
    result = run_cli(str(tmp_path / "w"), "--seeds=0,1", "--seed=3")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "FATAL Flags parsing error: --seeds and --seed together: give one of them "
        "(--helpshort lists the flags)"
    )
    assert not (tmp_path / "w").exists()


def test_device_loop_takes_only_consecutive_seeds(tmp_path):
    result = run_cli(str(tmp_path / "w"), "--config.loop=device", "--seeds=0,2")
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert "consecutive seeds" in result.stderr
    result = run_cli(str(tmp_path / "p"), "--config.loop=device", "--seeds=4,5,6", "--print_config")
    assert result.returncode == 0, result.stderr[-2000:]
    printed = json.loads(result.stdout)
    assert (printed["seed"], printed["num_seeds"]) == (4, 3)


@pytest.mark.slow
def test_seeds_train_one_workdir_each_like_single_runs_and_a_rerun_skips_them(tmp_path):
    parent = tmp_path / "multi"
    start = time.time()
    result = run_cli(str(parent), "--seeds=0,1", env=DETERMINISTIC_ENV)
    first = time.time() - start
    assert result.returncode == 0, result.stderr[-3000:]
    for seed in (0, 1):
        single = tmp_path / f"single_{seed}"
        # The report is the --seeds run's to check; the lone runs only give the curves.
        alone = run_cli(
            str(single), f"--seed={seed}", "--config.report=False", env=DETERMINISTIC_ENV
        )
        assert alone.returncode == 0, alone.stderr[-3000:]
        seed_dir = parent / f"seed_{seed}"
        assert json.load(open(seed_dir / "config.json"))["seed"] == seed
        assert [s for s, _ in _evals(seed_dir)] == [s for s, _ in _evals(single)] == [160, 320]
        assert _evals(seed_dir) == _evals(single)  # same seed, one thread: the same run
        assert f"results in {seed_dir}" in result.stdout
        assert (seed_dir / "report" / "report.html").exists()
    report = parent / "report" / "report.html"
    assert report.exists() and (parent / "report" / "eval_returns.png").exists()
    assert result.stdout.strip().splitlines()[-1].endswith(str(report))
    assert not (parent / ".lock").exists() and not (parent / "checkpoints").exists()
    # Rerunning the finished command trains nothing more: every seed only reloads.
    metrics = {s: (parent / f"seed_{s}" / "metrics.jsonl").read_text() for s in (0, 1)}
    start = time.time()
    again = run_cli(str(parent), "--seeds=0,1", env=DETERMINISTIC_ENV)
    rerun = time.time() - start
    assert again.returncode == 0, again.stderr[-3000:]
    assert {s: (parent / f"seed_{s}" / "metrics.jsonl").read_text() for s in (0, 1)} == metrics
    assert "trained 320 env steps" in again.stdout
    # ... and without rebuilding them: each finished seed is read from its finished.json.
    for seed in (0, 1):
        assert f"seed {seed}: finished earlier (320 env steps), skipped" in again.stdout
    assert again.stdout.count("final eval return") == result.stdout.count("final eval return")
    print(f"--seeds=0,1: first run {first:.0f}s, finished rerun {rerun:.0f}s")


def test_a_finished_record_counts_only_for_the_same_config_and_an_existing_final_checkpoint(
    tmp_path,
):
    config = small_config(total_env_steps=320)
    RunDir(str(tmp_path)).write_run_files(config, None)  # the run's config.json
    write_finished(str(tmp_path), 320, [(160, 9.5, 1.0), (320, 20.0, 2.0)])
    assert read_finished(str(tmp_path), config) is None  # its final checkpoint is missing
    (tmp_path / "checkpoints" / "320").mkdir(parents=True)
    record = read_finished(str(tmp_path), config)
    assert record["env_steps"] == 320 and record["eval_returns"][1] == [320, 20.0, 2.0]
    # A longer run resumes (and any other change goes through the resume check): no skip.
    longer = small_config(total_env_steps=480)
    assert read_finished(str(tmp_path), longer) is None
    assert read_finished(str(tmp_path), small_config(total_env_steps=320, seed=7)) is None
    # A later run that got further (a newer checkpoint) is no longer the finished one.
    (tmp_path / "checkpoints" / "400").mkdir()
    assert read_finished(str(tmp_path), config) is None
    (tmp_path / "checkpoints" / "400").rmdir()
    (tmp_path / "finished.json").write_text("{not json")
    assert read_finished(str(tmp_path), config) is None


@pytest.mark.slow
def test_device_seeds_set_by_config_num_seeds_finish_with_one_workdir_each_and_a_report(tmp_path):
    # --config.num_seeds (not --seeds) used to end a finished run with a TypeError in the summary.
    # With episode-return targets, which the device loop's ring keeps too.
    result = run_cli(
        str(tmp_path / "w"),
        "--config.loop=device",
        "--config.env_id=gymnax:CartPole-v1",
        "--config.num_seeds=2",
        "--config.seed=3",
        "--config.critic.real_targets=episode",
        "--config.report=False",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for seed in (3, 4):
        assert [s for s, _ in _evals(tmp_path / "w" / f"seed_{seed}")] == [160, 320]
    assert result.stdout.count("trained 320 env steps") == 2
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("2 seeds: mean eval curve") and (tmp_path / "w" / "report").is_dir()
