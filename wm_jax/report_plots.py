"""The run report's figures (matplotlib, Agg backend): episode returns, world model, actor and
critic, gradient norms, the continue predictor, the open-loop checks, and the eval curves of
several seeds.  :mod:`wm_jax.report` writes them into its pages; TensorBoard shows the open-loop
trajectories too (:func:`trajectory_image`).
"""

from __future__ import annotations

import math
import os

import numpy as np

from wm_jax.metrics import read_jsonl
from wm_jax.networks.world_model import COMPONENTS

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


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed); imported only when drawn."""
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


def run_figures(plt, workdir: str, records, findings, unit: str, horizon, constant) -> list:
    """One run's figures as ``(name, figure or None)`` in the report's order; metrics left out
    of the panels as constant are added to ``constant`` (name -> value)."""
    train = [r for r in records if "eval_return_std" not in r]
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
    return figures


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


def seeds_figure(plt, curves: dict, combined: dict):
    """Each seed's eval curve (``curves``: seed -> [(step, return)]), their mean and a ±1
    standard-error band (``combined``: :func:`wm_jax.report.combine_curves`)."""
    shown = sum(1 for points in curves.values() if points)
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
    ax.set_title(f"Eval return over {shown} seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
