"""The run report: a self-contained HTML page whose embedded images are real PNGs, a Markdown
twin whose images exist, the detector's findings in both, and the CLI."""

import base64
import json
import os
import re
import subprocess
import sys

from wm_jax.report import write_report

PNG = b"\x89PNG\r\n\x1a\n"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_run(workdir, with_open_loop=True, nan_at=None):
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        for i in range(10):
            step = 1000 * (i + 1)
            row = {
                "env_step": step,
                "dynamics_mse": 1.0 / (1 + i),
                "reward_loss": -1.0 - i,
                "reward_mae": 0.1 / (1 + i),
                "continue_loss": 0.5,
                "continue_accuracy": 0.9,
                "continue_termination_precision": 0.5,
                "continue_termination_recall": None,
                "encoder_grad_norm": 2.0,
                "actor_grad_norm": None if nan_at is not None and i >= nan_at else 0.3,
                "mean_imagined_return": 3.0 * i,
                "entropy": 0.6,
                "critic_loss": 1.0,
                "critic_explained_variance": 0.7,
                "phase": "full",
            }
            f.write(json.dumps(row) + "\n")
            f.write(json.dumps({"env_step": step, "eval_return": 20.0 * i, "eval_return_std": 2.0}))
            f.write("\n")
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
