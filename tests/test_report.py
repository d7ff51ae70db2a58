"""The run report: a self-contained HTML page whose embedded images are real PNGs, a Markdown
twin whose images exist, the detector's findings in both, and the CLI."""

import base64
import json
import os
import re
import subprocess
import sys

import pytest
from conftest import REPO
from matplotlib.figure import Figure

from wm_jax.report import write_report

PNG = b"\x89PNG\r\n\x1a\n"

def make_run(workdir, with_open_loop=True, nan_at=None, wall_time=True, offline=False):
    """A run's files written by hand: ten log rows, each with an evaluation (none offline),
    and ``state_std`` constant (as layer norm makes it)."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump({"env_id": "CartPole-v1", "seed": 3, "imagination": {"horizon": 15}}, f)
    if offline:
        with open(os.path.join(workdir, "offline.json"), "w") as f:
            json.dump({"dataset": "run:/somewhere", "transitions": 500}, f)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        for i in range(10):
            step = 1000 * (i + 1)
            row = {
                "env_step": step,
                "dynamics_mse": 1.0 / (1 + i),
                "reward_loss": -1.0 - i,
                "reward_mae": 0.1 / (1 + i),
                "continue_loss": 0.5 / (1 + 0.1 * i),
                "state_mean": 0.01 * i,
                "state_std": 1.0,
                "continue_accuracy": 0.9 + 0.005 * i,
                "continue_termination_precision": 0.5 + 0.01 * i,
                "continue_termination_recall": None,
                "encoder_grad_norm": 2.0 + 0.1 * i,
                "actor_grad_norm": None if nan_at is not None and i >= nan_at else 0.3 + 0.01 * i,
                "mean_imagined_return": 3.0 * i,
                "entropy": 0.6 - 0.005 * i,
                "critic_loss": 1.0 / (1 + 0.1 * i),
                "critic_explained_variance": 0.7 + 0.01 * i,
                "phase": "full",
                ("updates_per_s" if offline else "env_steps_per_s"): 100.0 + i,
            }
            if wall_time:
                row["wall_time_s"] = 10.0 * (i + 1)
            f.write(json.dumps(row) + "\n")
            if not offline:
                evaluation = {"env_step": step, "eval_return": 20.0 * i, "eval_return_std": 2.0}
                if wall_time:
                    evaluation["wall_time_s"] = 10.0 * (i + 1)
                f.write(json.dumps(evaluation) + "\n")
    if with_open_loop:
        with open(os.path.join(workdir, "open_loop.jsonl"), "w") as f:
            for step in (5000, 10000):
                f.write(json.dumps({
                    "env_step": step,
                    "error_by_step": [0.01 * (t + 1) for t in range(6)],
                    "valid_by_step": [3, 3, 3, 3, 2, 0],
                    "true": [[[0.1 * t, 0.0, 1.0, -1.0] for t in range(6)]] * 3,
                    "pred": [[[0.12 * t, 0.0, 1.1, -1.0] for t in range(6)]] * 3,
                    "mask": [[1, 1, 1, 1, 1, 0]] * 3,
                }) + "\n")


def test_report_embeds_valid_pngs_and_states_the_findings(tmp_path):
    run = str(tmp_path / "run")
    make_run(run, nan_at=6)
    path = write_report(run)
    page = open(path).read()
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    # returns, world model, actor/critic, grad norms, continue, open-loop error + trajectories
    assert len(images) == 7
    assert all(base64.b64decode(data).startswith(PNG) for data in images)
    assert "gradient_explosion" in page and "http" not in page.replace("http-equiv", "")
    md = open(os.path.join(run, "report", "report.md")).read()
    files = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(files) == 7
    for name in files:
        with open(os.path.join(run, "report", name), "rb") as f:
            assert f.read(8) == PNG
    assert "gradient_explosion" in md


def test_report_without_open_loop_checks_or_findings(tmp_path):
    run = str(tmp_path / "run")
    make_run(run, with_open_loop=False)
    page = open(write_report(run)).read()
    assert len(re.findall(r"data:image/png;base64,", page)) == 5
    assert "No failure signature detected." in page


def test_report_cli(tmp_path):
    run = str(tmp_path / "run")
    make_run(run)
    result = subprocess.run(
        [sys.executable, "-m", "wm_jax.report", f"--workdir={run}"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert os.path.exists(os.path.join(run, "report", "report.html"))
    bad = subprocess.run(
        [sys.executable, "-m", "wm_jax.report", f"--workdir={tmp_path / 'nothing'}"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert bad.returncode != 0 and "metrics.jsonl" in bad.stderr


@pytest.fixture
def drawn(monkeypatch):
    """What each saved figure of the report shows: figure name -> one dict per visible axis
    (x and y labels, title, labels of its lines)."""
    figures = {}
    save = Figure.savefig

    def record(fig, path, *args, **kwargs):
        figures[os.path.splitext(os.path.basename(path))[0]] = [
            {
                "xlabel": ax.get_xlabel(),
                "ylabel": ax.get_ylabel(),
                "title": ax.get_title(),
                "lines": [ln.get_label() for ln in ax.get_lines() if ln.get_label()[0] != "_"],
            }
            for ax in fig.axes
            if ax.get_visible()
        ]
        return save(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    return figures


def report_md(run):
    return open(os.path.join(run, "report", "report.md")).read().split("## Config")[0]


def test_imagined_returns_have_their_own_axis_labelled_as_an_h_step_lambda_return(
    tmp_path, drawn
):
    run = str(tmp_path / "run")
    make_run(run)
    write_report(run)
    episodic, imagined = drawn["returns"]
    assert episodic["lines"] == ["eval return (deterministic)"]
    assert episodic["ylabel"] == "episode return"
    assert imagined["lines"] == ["mean imagined return (15-step λ-return)"]
    assert imagined["ylabel"] == "15-step λ-return" and "not an episode return" in imagined["title"]


def test_a_constant_metric_is_left_out_of_its_panel_and_named(tmp_path, drawn):
    run = str(tmp_path / "run")
    make_run(run)  # state_std is 1.0 in every row; state_mean changes
    page = open(write_report(run)).read()
    plotted = [line for axes in drawn.values() for ax in axes for line in ax["lines"]]
    assert "state_mean" in plotted and "state_std" not in plotted
    line = "Left out of the plots as constant (every value equal): state_std (= 1)."
    assert line in report_md(run).replace("\\", "")
    assert line in page


def test_an_offline_run_is_labelled_in_updates_not_env_steps(tmp_path, drawn):
    run = str(tmp_path / "run")
    make_run(run, offline=True)  # offline.json, as wm_jax.offline writes it
    write_report(run)
    xlabels = {ax["xlabel"] for axes in drawn.values() for ax in axes} - {"", "open-loop step"}
    assert xlabels == {"update"}
    assert drawn["open_loop_error"][0]["lines"] == ["update 5000", "update 10000"]
    md = report_md(run)
    assert "- updates: 10000" in md and "- updates/s: 100.0" in md
    assert "env step" not in md


def test_the_header_shows_the_run_wall_time_and_env_steps_per_second(tmp_path):
    run = str(tmp_path / "run")
    make_run(run)  # the last row: env step 10000 at wall_time_s 100
    write_report(run)
    md = report_md(run).replace("\\", "")
    assert "- wall time: 0:01:40 (100.0 s of training)" in md
    assert "- env steps/s: 100.0" in md


def test_a_metrics_file_without_wall_time_still_gives_a_report(tmp_path):
    run = str(tmp_path / "run")
    make_run(run, wall_time=False)  # written before wall_time_s existed
    page = open(write_report(run)).read()
    assert len(re.findall(r"data:image/png;base64,", page)) == 7
    assert "wall time: not recorded" in page and "env steps/s" not in page
