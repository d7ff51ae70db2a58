"""The run report: plots of every signal the seeds ask to watch (drawn by
:mod:`wm_jax.report_plots`), the run's header and the failure detector's findings, as a
self-contained HTML page (PNGs embedded) and a Markdown twin (PNG files); also the several-seeds
report.

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
from wm_jax.report_plots import pyplot, run_figures, seeds_figure
from wm_jax.run_dir import atomic_write


def is_offline(workdir: str, records) -> bool:
    """An offline run (:mod:`wm_jax.offline`): its workdir has ``offline.json``, and its rows'
    ``env_step`` field counts updates (they have ``updates_per_s``, no ``env_steps_per_s``)."""
    if os.path.exists(os.path.join(workdir, "offline.json")):
        return True
    rates = {k for r in records for k in ("updates_per_s", "env_steps_per_s") if k in r}
    return rates == {"updates_per_s"}


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
    plt = pyplot()
    records = read_metrics(workdir)
    config = _config(workdir)
    if findings is None:
        findings = diagnostics.detect(records, diagnostics.Thresholds.from_config(config or None))
    unit = "update" if is_offline(workdir, records) else "env step"
    horizon = (config.get("imagination") or {}).get("horizon")
    constant: dict[str, float] = {}  # metrics left out of the panels: never changed
    figures = run_figures(plt, workdir, records, findings, unit, horizon, constant)

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
    plt = pyplot()
    curves = {s: eval_curve(wd) for s, wd in seed_workdirs.items()}
    missing = [s for s, points in curves.items() if not points]
    combined = combine_curves(curves)
    out = os.path.join(workdir, "report")
    os.makedirs(out, exist_ok=True)
    fig = seeds_figure(plt, curves, combined)
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
