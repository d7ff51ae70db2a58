"""The run report: plots of every signal the seeds ask to watch, plus the failure detector's
findings, as a self-contained HTML page (PNGs embedded) and a Markdown twin (PNG files).

    python -m wm_jax.report --workdir=runs/cartpole

Written into ``<workdir>/report/`` (``report.html``, ``report.md``, ``*.png``); the trainer
writes it at the end of every run when ``config.report`` is on.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import shutil
import tempfile
from typing import Any

import numpy as np
from absl import app, flags

from wm_jax import diagnostics
from wm_jax.metrics import read_jsonl, read_metrics
from wm_jax.networks.world_model import COMPONENTS
from wm_jax.run_dir import atomic_write

# Per-module norms first (the world model's components), then the three optimisers' global norms.
GRAD_NORMS = (*COMPONENTS, "world_model", "actor", "critic")
# A series whose finite values all lie within this relative spread is left out as constant.
CONSTANT_RTOL = 1e-6


def _series(records, key):
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, int | float) and math.isfinite(v):
            xs.append(r["env_step"])
            ys.append(float(v))
    return xs, ys


def _constant(ys) -> bool:
    """Whether a series never changes (two points at least: one point shows no change)."""
    if len(ys) < 2:
        return False
    lo, hi = min(ys), max(ys)
    return hi - lo <= CONSTANT_RTOL * max(abs(lo), abs(hi))


def is_offline(workdir: str, records) -> bool:
    """An offline run (:mod:`wm_jax.offline`): its workdir has ``offline.json``, and its rows'
    ``env_step`` field counts updates (they have ``updates_per_s``, no ``env_steps_per_s``)."""
    if os.path.exists(os.path.join(workdir, "offline.json")):
        return True
    rates = {k for r in records for k in ("updates_per_s", "env_steps_per_s") if k in r}
    return rates == {"updates_per_s"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _panels(plt, records, title, panels, findings=(), log_keys=(), unit="env step", constant=None):
    """One figure of small panels; each panel is (panel title, [metric keys]).  Metrics without
    data, and constant ones (added to ``constant`` as name -> value), are left out; so are the
    panels left empty.  Returns None when nothing is left."""
    kept = []
    for t, keys in panels:
        shown = []
        for k in keys:
            ys = _series(records, k)[1]
            if _constant(ys):
                if constant is not None:
                    constant[k] = ys[0]
            elif ys:
                shown.append(k)
        if shown:  # a legend names what is left of a panel of several metrics
            kept.append((t, shown, len(keys) > 1))
    panels = kept
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.9 * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    for ax, (name, keys, legend) in zip(axes.flat, panels, strict=False):
        positive = True
        for key in keys:
            xs, ys = _series(records, key)
            ax.plot(xs, ys, label=key, linewidth=1.3)
            positive &= key in log_keys and min(ys) > 0
        if positive:
            ax.set_yscale("log")
        for f in findings:
            ax.axvline(f.env_step, color="red", alpha=0.3, linestyle=":")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(unit, fontsize=8)
        ax.tick_params(labelsize=7)
        if legend:
            ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def _returns_figure(plt, records, findings, unit="env step", horizon=None):
    """Episodic returns (evaluations, training episodes) on top; the mean imagined return, an
    H-step λ-return of imagined rollouts on another scale, in its own panel below."""
    evals = [r for r in records if "eval_return_std" in r]
    train = [r for r in records if "eval_return_std" not in r]
    xs_t, ys_t = _series(train, "train_return")
    xs_i, ys_i = _series(train, "mean_imagined_return")
    episodic = bool(evals or xs_t)
    if not (episodic or xs_i):
        return None
    n = int(episodic) + int(bool(xs_i))
    fig, axes = plt.subplots(n, 1, figsize=(8, 1.2 + 2.8 * n), sharex=True, squeeze=False)
    axes = list(axes[:, 0])
    if episodic:
        ax = axes[0]
        if evals:
            xs, ys = _series(evals, "eval_return")
            _, sd = _series(evals, "eval_return_std")
            ax.plot(xs, ys, "o-", color="black", label="eval return (deterministic)")
            if len(sd) == len(ys):
                ax.fill_between(
                    xs,
                    [y - s for y, s in zip(ys, sd, strict=True)],
                    [y + s for y, s in zip(ys, sd, strict=True)],
                    color="black",
                    alpha=0.12,
                )
        if xs_t:
            ax.plot(xs_t, ys_t, color="tab:blue", alpha=0.7, label="train return (episodes)")
        ax.set_ylabel("episode return")
        ax.set_title("Episode returns")
        ax.legend(fontsize=8)
    if xs_i:
        ax = axes[-1]
        h = f"{horizon}-step" if horizon else "H-step"
        ax.plot(xs_i, ys_i, color="tab:orange", label=f"mean imagined return ({h} λ-return)")
        ax.set_ylabel(f"{h} λ-return")
        ax.set_title(
            f"Imagined return: {h} λ-return of imagined rollouts (not an episode return)",
            fontsize=10,
        )
        ax.legend(fontsize=8)
    for ax in axes:
        for f in findings:
            ax.axvline(f.env_step, color="red", linestyle="--", alpha=0.7)
    for i, f in enumerate(findings):  # labels stacked so findings at one step stay readable
        axes[0].text(
            f.env_step,
            0.98 - 0.45 * (i // 2 % 2),
            f.mode,
            color="red",
            fontsize=7,
            rotation=90,
            va="top",
            ha="right" if i % 2 == 0 else "left",
            transform=axes[0].get_xaxis_transform(),
        )
    axes[-1].set_xlabel(unit)
    fig.tight_layout()
    return fig


# Markdown's markup characters (an intraword "_" or "-" cannot start markup; escaping them would
# only make names such as gradient_explosion harder to read or search).
_MD_SPECIAL = "\\`*{}[]()#+!|~>"


def _md(text: str) -> str:
    """``text`` as literal Markdown: one line, HTML escaped (renderers pass raw HTML through),
    and Markdown's punctuation backslash-escaped, so a string from a run's files (an env id, a
    path) can neither inject markup nor break the list it is in."""
    text = html.escape(" ".join(str(text).split()), quote=False)
    return "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in text)


def _versions() -> str:
    from importlib import metadata

    names = ("wm_jax", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "gymnasium")
    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(found)


def _machine() -> str:
    import platform

    return f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs, {platform.system()})"


def _precision(precision: str) -> str:
    from wm_jax.networks.common import describe_precision

    try:
        return describe_precision(precision)
    except ValueError:
        return str(precision)


def _open_loop_figures(plt, workdir, unit="env step"):
    path = os.path.join(workdir, "open_loop.jsonl")
    if not os.path.exists(path):
        return []
    checks = read_jsonl(path)
    if not checks:
        return []
    figs = []
    fig, ax = plt.subplots(figsize=(7, 3.5))
    shown = checks if len(checks) <= 4 else [checks[0], *checks[-3:]]
    for c in shown:
        err, valid = c["error_by_step"], c.get("valid_by_step", [1] * len(c["error_by_step"]))
        steps = [t for t in range(len(err)) if valid[t] > 0]  # no window reaches the rest
        ax.plot([t + 1 for t in steps], [err[t] for t in steps], label=f"{unit} {c['env_step']}")
    ax.set_yscale("log")
    ax.set_xlabel("open-loop step")
    ax.set_ylabel("MSE (normalised obs)")
    ax.set_title("Open-loop prediction error by horizon step")
    ax.legend(fontsize=7)
    fig.tight_layout()
    figs.append(("open_loop_error", fig))
    last = checks[-1]
    if "true" in last and "pred" in last:
        n, dims = _trajectory_grid(last)
        fig = plt.figure(figsize=(3.2 * dims, 2.2 * n))
        title = f"Predicted vs true trajectories ({unit} {last['env_step']})"
        figs.append(("open_loop_trajectories", _draw_trajectories(fig, last, title)))
    return figs


def _trajectory_grid(check: dict) -> tuple[int, int]:
    """(windows, observation dimensions) that :func:`_draw_trajectories` draws."""
    return min(3, len(check["true"])), min(4, len(check["true"][0][0]))


def _draw_trajectories(fig, check: dict, title: str):
    """A grid of the first (up to) 3 windows x 4 observation dimensions of an open-loop check
    of vector observations (``true``/``pred``/``mask`` of an ``open_loop.jsonl`` line): the true
    trajectory against the open-loop prediction, steps after the episode ended left out."""
    true, pred = check["true"], check["pred"]
    n, dims = _trajectory_grid(check)
    axes = fig.subplots(n, dims, squeeze=False)
    for i in range(n):
        mask = check.get("mask", [[1] * len(true[i])] * n)[i]
        steps = [t for t in range(len(true[i])) if mask[t] > 0]
        for d in range(dims):
            ax = axes[i][d]
            ax.plot(steps, [true[i][t][d] for t in steps], color="black", label="true")
            ax.plot(
                steps,
                [pred[i][t][d] for t in steps],
                color="tab:orange",
                linestyle="--",
                label="open-loop prediction",
            )
            ax.tick_params(labelsize=6)
            if i == 0:
                ax.set_title(f"obs dim {d}", fontsize=8)
    axes[0][0].legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def trajectory_image(check: dict) -> np.ndarray:
    """:func:`_draw_trajectories` as a small ``[H, W, 3]`` uint8 image (TensorBoard's panel at
    each open-loop check; the step is TensorBoard's).  Renders with Agg on its own figure, so
    pyplot's state and backend are left alone."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n, dims = _trajectory_grid(check)
    fig = Figure(figsize=(2.4 * dims, 1.7 * n), dpi=72)
    canvas = FigureCanvasAgg(fig)
    _draw_trajectories(fig, check, "Predicted vs true trajectories")
    canvas.draw()
    return np.array(canvas.buffer_rgba())[..., :3]


def _latest_strip(workdir: str, out: str) -> tuple[str, str] | None:
    """The newest open-loop video strip (image observations; :mod:`wm_jax.open_loop_video`),
    copied into the report directory so report.md's relative link works; None if there is none."""
    path = os.path.join(workdir, "open_loop.jsonl")
    if not os.path.exists(path):
        return None
    checks = read_jsonl(path)
    for check in reversed(checks):
        source = os.path.join(workdir, check.get("strip", ""))
        if check.get("strip") and os.path.exists(source):
            name = f"open_loop_video_step_{check['env_step']}"
            target = os.path.join(out, f"{name}.png")
            shutil.copyfile(source, target)
            return name, target
    return None


def _config(workdir) -> dict[str, Any]:
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path):
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}
    return {}


def _duration(seconds: float) -> str:
    minutes, sec = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{sec:02d}"


def _wall_time_lines(records, unit: str) -> list[str]:
    """The run's wall time (the newest row's ``wall_time_s``) and its steps per second; rows
    written before the field existed (an old run, or the part of a run before a resume with
    a newer wm_jax) are left out of both, and said so."""
    timed = [
        (r["env_step"], float(r["wall_time_s"]))
        for r in records
        if isinstance(r.get("wall_time_s"), int | float) and math.isfinite(r["wall_time_s"])
    ]
    if not timed:
        return ["wall time: not recorded (metrics.jsonl predates wall_time_s)"]
    step, seconds = max(timed)
    untimed = [r["env_step"] for r in records if "wall_time_s" not in r and r["env_step"] < step]
    since = max(untimed, default=0)
    note = f" (from {unit} {since} on: earlier rows predate wall_time_s)" if since else ""
    lines = [f"wall time: {_duration(seconds)} ({seconds:.1f} s of training){note}"]
    if seconds > 0 and step > since:
        lines.append(f"{unit}s/s: {(step - since) / seconds:.1f}")
    return lines


def _constant_line(constant: dict[str, float]) -> str:
    if not constant:
        return ""
    names = ", ".join(f"{k} (= {v:.4g})" for k, v in sorted(constant.items()))
    return f"Left out of the plots as constant (every value equal): {names}."


def write_report(workdir: str, findings: list | None = None) -> str:
    """Writes ``<workdir>/report/report.html`` (+ ``report.md`` and PNGs); returns the HTML path.
    ``findings=None`` runs the detector on the run's metrics (thresholds from its config.json)."""
    plt = _plt()
    records = read_metrics(workdir)
    config = _config(workdir)
    if findings is None:
        findings = diagnostics.detect(records, diagnostics.Thresholds.from_config(config or None))
    train = [r for r in records if "eval_return_std" not in r]
    unit = "update" if is_offline(workdir, records) else "env step"
    horizon = (config.get("imagination") or {}).get("horizon")
    constant: dict[str, float] = {}  # metrics left out of the panels: never changed
    panel_options = dict(unit=unit, constant=constant)
    figures = [("returns", _returns_figure(plt, records, findings, unit, horizon))]
    figures.append(
        (
            "world_model_losses",
            _panels(
                plt,
                train,
                "World model",
                [
                    ("dynamics", ["dynamics_mse", "dynamics_loss"]),
                    ("reward NLL", ["reward_loss"]),
                    ("reward MAE", ["reward_mae"]),
                    ("reward corr(predicted, actual)", ["reward_correlation"]),
                    ("continue", ["continue_loss"]),
                    ("decoder / representation", ["decoder_loss", "representation_loss"]),
                    ("multi-step (open loop)", ["multi_step_loss"]),
                    ("state statistics (collapse check)", ["state_mean", "state_std"]),
                ],
                findings,
                **panel_options,
                log_keys=(
                    "dynamics_mse",
                    "dynamics_loss",
                    "decoder_loss",
                    "multi_step_loss",
                    "representation_loss",
                    "reward_mae",
                    "continue_loss",
                ),
            ),
        )
    )
    figures.append(
        (
            "actor_critic",
            _panels(
                plt,
                train,
                "Actor and critic",
                [
                    ("actor loss", ["actor_loss"]),
                    ("critic loss", ["critic_loss", "critic_loss_imagined", "critic_loss_real"]),
                    ("values", ["critic_value_mean", "critic_value_std"]),
                    ("TD error", ["critic_td_error_mean", "critic_td_error_abs_mean"]),
                    ("explained variance", ["critic_explained_variance"]),
                    ("policy entropy", ["entropy"]),
                    ("return scale S", ["return_scale"]),
                ],
                findings,
                **panel_options,
            ),
        )
    )
    grad_keys = [f"{g}_grad_norm" for g in GRAD_NORMS]
    n = len(COMPONENTS)
    figures.append(
        (
            "grad_norms",
            _panels(
                plt,
                train,
                "Gradient norms (before clipping)",
                [
                    ("world-model modules", grad_keys[:n]),
                    ("optimisers (global norms)", grad_keys[n:]),
                ],
                findings,
                **panel_options,
                log_keys=tuple(grad_keys),
            ),
        )
    )
    figures.append(
        (
            "continue_predictor",
            _panels(
                plt,
                train,
                "Continue predictor",
                [
                    (
                        "accuracy / termination precision / recall",
                        [
                            "continue_accuracy",
                            "continue_termination_precision",
                            "continue_termination_recall",
                        ],
                    ),
                    (
                        "imagined continue / reward",
                        ["imagined_continue_mean", "imagined_reward_mean"],
                    ),
                ],
                findings,
                **panel_options,
            ),
        )
    )
    figures.extend(_open_loop_figures(plt, workdir, unit))

    out = os.path.join(workdir, "report")
    os.makedirs(out, exist_ok=True)
    images = []
    for name, fig in figures:
        if fig is None:
            continue
        path = os.path.join(out, f"{name}.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        images.append((name, path))
    strip = _latest_strip(workdir, out)
    if strip is not None:
        images.append(strip)

    evals = [
        (r["env_step"], r["eval_return"])
        for r in records
        if "eval_return_std" in r and isinstance(r.get("eval_return"), int | float)
    ]
    summary = [f"workdir: {os.path.abspath(workdir)}"]
    if config.get("env_id"):
        summary.append(f"environment: {config['env_id']}")
    if unit == "update":
        summary.append("offline run (trained on a fixed dataset): steps count updates")
    if records:
        summary.append(f"{unit}s: {max(r['env_step'] for r in records)}")
    summary += _wall_time_lines(records, unit)
    if evals:
        best = max(evals, key=lambda e: e[1])
        summary.append(f"final eval return: {evals[-1][1]:.1f} ({unit} {evals[-1][0]})")
        summary.append(f"best eval return: {best[1]:.1f} ({unit} {best[0]})")
    if "seed" in config:
        summary.append(f"seed: {config['seed']}")
    if "precision" in config:
        summary.append(f"update matmul precision: {_precision(config['precision'])}")
    summary.append(f"software: {_versions()}")
    summary.append(f"report written on: {_machine()}")
    if findings:
        finding_lines = [
            str(f) if unit == "env step" else str(f).replace("@ env step", f"@ {unit}", 1)
            for f in findings
        ]
    else:
        finding_lines = ["No failure signature detected."]

    md = ["# Run report", "", *[f"- {_md(s)}" for s in summary], "", "## Failure-mode detector"]
    md += ["", *[f"- {_md(line)}" for line in finding_lines]]
    left_out = _constant_line(constant)
    md += ["", "## Plots", ""]
    if left_out:
        md += [_md(left_out), ""]
    md += [f"![{name}]({os.path.basename(path)})" for name, path in images]
    config_text = json.dumps(config, indent=1, sort_keys=True)
    # (JSON strings cannot end a fenced block: a line of ``` never appears in it.)
    md += ["", "## Config", "", "```json", config_text, "```"]
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(md) + "\n")

    body = ["<h1>Run report</h1><ul>"]
    body += [f"<li>{html.escape(s)}</li>" for s in summary]
    body.append("</ul><h2>Failure-mode detector</h2>")
    cls = "bad" if findings else "good"
    body += [f"<p class='{cls}'>{html.escape(line)}</p>" for line in finding_lines]
    body.append("<h2>Plots</h2>")
    if left_out:
        body.append(f"<p>{html.escape(left_out)}</p>")
    for name, path in images:
        with open(path, "rb") as f:
            data = base64.b64encode(f.read()).decode("ascii")
        body.append(
            f"<figure><img alt='{name}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{name}</figcaption></figure>"
        )
    body.append(
        "<h2>Config</h2><details><summary>config.json</summary><pre>"
        + html.escape(config_text)
        + "</pre></details>"
    )
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>wm_jax run report</title>"
        "<style>body{font-family:sans-serif;max-width:1300px;margin:2em auto;color:#222}"
        "img{max-width:100%;border:1px solid #ddd}.bad{color:#b00;font-weight:bold}"
        ".good{color:#070}figcaption{color:#666;font-size:0.8em}</style></head><body>"
        + "\n".join(body)
        + "</body></html>"
    )
    path = os.path.join(out, "report.html")
    with open(path, "w") as f:
        f.write(page)
    return path


def eval_curve(workdir: str) -> list[tuple[int, float]]:
    """A run's evaluations as ``(env_step, mean eval return)``; empty without metrics."""
    rows = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    return [
        (int(r["env_step"]), float(r["eval_return"]))
        for r in rows
        if "eval_return_std" in r
        and isinstance(r.get("eval_return"), int | float)
        and math.isfinite(r["eval_return"])
    ]


def combine_curves(curves: dict) -> dict[str, list]:
    """Mean and ±1 standard error across seeds at every evaluation step any seed reached:
    ``{"step", "mean", "stderr", "n"}`` lists (``n`` seeds have a value at that step; a step
    seen by one seed has stderr 0).  ``curves`` maps seed -> [(step, value)]."""
    by_step: dict[int, list[float]] = {}
    for points in curves.values():
        for step, value in points:
            by_step.setdefault(int(step), []).append(float(value))
    out: dict[str, list] = {"step": [], "mean": [], "stderr": [], "n": []}
    for step in sorted(by_step):
        values = np.asarray(by_step[step])
        n = len(values)
        out["step"].append(step)
        out["mean"].append(float(values.mean()))
        out["stderr"].append(float(values.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0)
        out["n"].append(n)
    return out


def write_seeds_report(workdir: str, seed_workdirs: dict) -> str:
    """``<workdir>/report/`` for several seeds (``seed_workdirs``: seed -> run directory): each
    seed's eval curve, their mean and a ±1 standard-error band, as ``eval_returns.png``,
    ``report.md`` and ``report.html``; each file written whole (temp file, then rename).
    Returns the HTML path."""
    plt = _plt()
    curves = {s: eval_curve(wd) for s, wd in seed_workdirs.items()}
    missing = [s for s, points in curves.items() if not points]
    combined = combine_curves(curves)
    out = os.path.join(workdir, "report")
    os.makedirs(out, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 4))
    for seed, points in curves.items():
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, "-", alpha=0.35, linewidth=1, label=f"seed {seed}")
    if combined["step"]:
        mean, se = np.asarray(combined["mean"]), np.asarray(combined["stderr"])
        ax.plot(combined["step"], mean, "o-", color="black", label="mean over seeds")
        ax.fill_between(
            combined["step"],
            mean - se,
            mean + se,
            color="black",
            alpha=0.15,
            label="±1 standard error",
        )
    ax.set_xlabel("env step")
    ax.set_ylabel("eval return (deterministic)")
    ax.set_title(f"Eval return over {len(curves) - len(missing)} seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = os.path.join(out, "eval_returns.png")
    fd, tmp = tempfile.mkstemp(dir=out, suffix=".png")
    os.close(fd)
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png)
    summary = [f"workdir: {os.path.abspath(workdir)}"]
    summary += [f"seed {s}: {os.path.abspath(wd)}" for s, wd in seed_workdirs.items()]
    if missing:
        summary.append(f"seeds without evaluations (left out): {', '.join(map(str, missing))}")
    if combined["step"]:
        summary.append(
            f"final mean eval return: {combined['mean'][-1]:.1f} ± {combined['stderr'][-1]:.1f} "
            f"(±1 standard error over {combined['n'][-1]} seeds, env step {combined['step'][-1]})"
        )
    summary.append(f"software: {_versions()}")
    rows = [
        f"| {step} | {n} | {m:.2f} | {e:.2f} |"
        for step, m, e, n in zip(
            *(combined[k] for k in ("step", "mean", "stderr", "n")), strict=True
        )
    ]
    md = ["# Seeds report", "", *[f"- {_md(s)}" for s in summary], ""]
    md += ["![eval_returns](eval_returns.png)", "", "| env step | seeds | mean | ±1 s.e. |"]
    md += ["|---|---|---|---|", *rows]
    atomic_write(os.path.join(out, "report.md"), "\n".join(md) + "\n")
    with open(png, "rb") as f:
        data = base64.b64encode(f.read()).decode("ascii")
    table = "".join(
        f"<tr><td>{step}</td><td>{n}</td><td>{m:.2f}</td><td>{e:.2f}</td></tr>"
        for step, m, e, n in zip(
            *(combined[k] for k in ("step", "mean", "stderr", "n")), strict=True
        )
    )
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>wm_jax seeds report</title>"
        "<style>body{font-family:sans-serif;max-width:1300px;margin:2em auto;color:#222}"
        "img{max-width:100%;border:1px solid #ddd}td,th{padding:0 1em}</style></head><body>"
        "<h1>Seeds report</h1><ul>"
        + "".join(f"<li>{html.escape(s)}</li>" for s in summary)
        + f"</ul><img alt='eval_returns' src='data:image/png;base64,{data}'>"
        + "<table><tr><th>env step</th><th>seeds</th><th>mean</th><th>±1 s.e.</th></tr>"
        + table
        + "</table></body></html>"
    )
    path = os.path.join(out, "report.html")
    atomic_write(path, page)
    return path


def main(argv):
    from wm_jax import cli

    if len(argv) > 1:
        cli.usage_exit(f"unexpected arguments: {argv[1:]}")
    workdir = flags.FLAGS.workdir
    if not workdir or not os.path.exists(os.path.join(workdir, "metrics.jsonl")):
        cli.usage_exit("--workdir must be a run directory containing metrics.jsonl")
    print(f"report written to {write_report(workdir)}")


if __name__ == "__main__":
    # Defined here, not at import: the trainer imports this module under its own --workdir flag.
    flags.DEFINE_string("workdir", None, "run directory with metrics.jsonl")
    app.run(main)
