"""Learning benchmark: train one config on several seeds and report sample efficiency.

    python experiments/benchmarks/learning.py --config=experiments/configs/cartpole.py \
        --seeds=0,1,2 --threshold=475 --workdir=runs/bench_cartpole

Each seed runs through the real trainer in its own process (``--parallel`` at a time), or,
with ``--vmap_seeds`` (device-loop configs, consecutive seeds), all seeds in one process and one
compiled program (``--config.num_seeds``; each seed's wall time is then the shared total).
``--random_episodes=N`` also measures a uniformly random policy on the config's env (N
episodes), drawn as a dashed line and reported as ``random_return``: the baseline of tasks whose
target is "clearly above random" (Breakout-MinAtar).  Writes ``learning_curves.png``,
``table.md`` and ``summary.json`` into ``--workdir`` and prints a table; the last line of output
is one JSON object.  ``--baselines=auto`` (or ``dqn,ppo`` / ``sac``) also trains Stable-Baselines3
agents with rl-zoo's tuned hyperparameters (``cartpole_race.py``'s SB3 runs) on the same seeds,
for the config's ``total_env_steps`` (an SB3 schedule still spans rl-zoo's own budget), evaluated
like wm_jax (``eval_episodes`` deterministic episodes every ``eval_every`` env steps, on a
separate env), and reports their curves and medians beside wm_jax's (``baselines`` in the JSON;
dashed median lines in the figure).  "Solved" means the *median over seeds* of the evaluation
return reaches ``--threshold`` at some evaluation point within the budget.

    python experiments/benchmarks/learning.py --config=experiments/configs/catch.py \
        --seeds=0,1,2 --threshold=0.9 --workdir=runs/bench_catch
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import run_sb3, save_result, sb3_agents_for  # noqa: E402

_CONFIG = flags.DEFINE_string("config", "experiments/configs/cartpole.py", "config file")
_SEEDS = flags.DEFINE_string("seeds", "0,1,2", "comma-separated seeds")
_THRESHOLD = flags.DEFINE_float("threshold", 475.0, "eval return that counts as solved")
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "seeds trained at once (each uses ~2 threads)")
_OVERRIDES = flags.DEFINE_multi_string("override", [], "extra --config.x=y overrides (x=y)")
_BASELINES = flags.DEFINE_list(
    "baselines",
    [],
    "Stable-Baselines3 agents with rl-zoo's hyperparameters (cartpole_race.py's) trained on the "
    "same seeds, env steps and evaluation protocol after wm_jax: dqn,ppo (CartPole-v1), sac "
    "(Pendulum-v1), or 'auto' for the task's; needs the bench extra (pip install -e .[bench])",
)
_VMAP_SEEDS = flags.DEFINE_bool(
    "vmap_seeds", False, "device loop: train all (consecutive) seeds in one vmapped program"
)
_RANDOM_EPISODES = flags.DEFINE_integer(
    "random_episodes", 0, "episodes of a uniformly random policy to measure as a baseline"
)


def _random_return(config_path: str, overrides: list[str], episodes: int) -> float:
    """Mean undiscounted return of uniformly random actions on the config's env (host envs,
    the trainer's episode loop)."""
    import numpy as np

    from wm_jax.config import load_config_file
    from wm_jax.envs import VectorEnv

    c = load_config_file(config_path)
    for item in overrides:  # only an env override changes the baseline
        key, _, value = item.partition("=")
        if key == "env_id":
            c.env_id = value
    rng = np.random.default_rng(0)
    with VectorEnv(c.env_id, episodes, 12345, "sync", dict(c.env_kwargs)) as env:
        n = env.spec.action_dim

        def policy(obs, t):
            if env.spec.discrete:
                return np.eye(n, dtype=np.float32)[rng.integers(0, n, len(obs))]
            return rng.uniform(-1, 1, (len(obs), n)).astype(np.float32)

        returns = env.run_episodes(policy)
    return float(np.mean(returns))


def _eval_curve(run_dir: str) -> list[tuple[int, float]]:
    curve = []
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            record = json.loads(line)
            if "eval_return_std" in record:
                curve.append((record["env_step"], record["eval_return"]))
    return curve


def _resolved_config() -> dict:
    """The config the runs train with (file and overrides, through the CLI's own parsing)."""
    cmd = [sys.executable, "-m", "wm_jax.train", f"--config={_CONFIG.value}", "--print_config"]
    cmd += [f"--config.{o}" for o in _OVERRIDES.value]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out[out.index("{") :])


def _baseline_curves(agent: str, seeds: list[int], config: dict, workdir: str) -> dict:
    """Each seed's evaluation curve of one SB3 agent, on wm_jax's protocol and budget."""
    args = [
        f"--env_id={config['env_id']}",
        f"--threshold={_THRESHOLD.value}",
        f"--eval_every={config['eval_every']}",
        f"--eval_episodes={config['eval_episodes']}",
        f"--max_env_steps={config['total_env_steps']}",
        "--stop_at_threshold=False",
    ]
    curves = {}
    for seed in seeds:
        rows = run_sb3(agent, seed, args, os.path.join(workdir, f"{agent}_seed_{seed}.log"))
        curves[seed] = [(r["env_step"], r["eval_return"]) for r in rows if r["event"] == "eval"]
        print(f"{agent} seed {seed}: " + ", ".join(f"{v:.1f}" for _, v in curves[seed]))
    return curves


def _median_curve(curves: dict) -> list[tuple[int, float]]:
    """The median over seeds at each env step every seed evaluated."""
    steps = sorted({s for curve in curves.values() for s, _ in curve})
    median_curve = []
    for step in steps:
        vals = [dict(curve).get(step) for curve in curves.values()]
        if all(v is not None for v in vals):
            median_curve.append((step, _median(vals)))
    return median_curve


def _median(values):
    values = sorted(values)
    n = len(values)
    return values[n // 2] if n % 2 else 0.5 * (values[n // 2 - 1] + values[n // 2])


def main(argv):
    del argv
    seeds = [int(s) for s in _SEEDS.value.split(",")]
    name = os.path.splitext(os.path.basename(_CONFIG.value))[0]
    workdir = os.path.abspath(_WORKDIR.value or os.path.join("runs", f"bench_{name}"))
    baselines = []
    if _BASELINES.value:  # checked before any training: a typo must not cost a whole run
        config = _resolved_config()
        try:
            baselines = sb3_agents_for(config["env_id"], _BASELINES.value)
        except ValueError as e:
            raise app.UsageError(f"--baselines: {e}") from None
        try:
            import stable_baselines3  # noqa: F401
            import torch  # noqa: F401
        except ImportError:
            raise SystemExit("--baselines needs the bench extra: pip install -e .[bench]") from None
    os.makedirs(workdir, exist_ok=True)
    procs, walls, started = {}, {}, {}
    pending = list(seeds)
    if _VMAP_SEEDS.value:
        if seeds != list(range(seeds[0], seeds[0] + len(seeds))):
            raise SystemExit(f"--vmap_seeds needs consecutive seeds, got {seeds}")
        cmd = [
            sys.executable,
            "-m",
            "wm_jax.train",
            f"--config={_CONFIG.value}",
            f"--workdir={workdir}",
            f"--seed={seeds[0]}",
            "--config.loop=device",
            f"--config.num_seeds={len(seeds)}",
            "--config.checkpoint_every=0",
        ] + [f"--config.{o}" for o in _OVERRIDES.value]
        start = time.time()
        with open(os.path.join(workdir, "train.log"), "w") as log:
            if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
                raise SystemExit(f"training failed; see {workdir}/train.log")
        if len(seeds) == 1:  # a one-seed device run writes into the workdir itself
            os.makedirs(os.path.join(workdir, f"seed_{seeds[0]}"), exist_ok=True)
            os.replace(
                os.path.join(workdir, "metrics.jsonl"),
                os.path.join(workdir, f"seed_{seeds[0]}", "metrics.jsonl"),
            )
        walls = {seed: time.time() - start for seed in seeds}
        pending = []
    while pending or procs:
        while pending and len(procs) < _PARALLEL.value:
            seed = pending.pop(0)
            run_dir = os.path.join(workdir, f"seed_{seed}")
            cmd = [
                sys.executable,
                "-m",
                "wm_jax.train",
                f"--config={_CONFIG.value}",
                f"--workdir={run_dir}",
                f"--seed={seed}",
                "--config.checkpoint_every=0",
            ] + [f"--config.{o}" for o in _OVERRIDES.value]
            log = open(os.path.join(workdir, f"seed_{seed}.log"), "w")
            started[seed] = time.time()
            procs[seed] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        for seed, proc in list(procs.items()):
            if proc.poll() is not None:
                walls[seed] = time.time() - started[seed]
                if proc.returncode != 0:
                    raise SystemExit(f"seed {seed} failed; see {workdir}/seed_{seed}.log")
                del procs[seed]
        time.sleep(1.0)

    curves = {seed: _eval_curve(os.path.join(workdir, f"seed_{seed}")) for seed in seeds}
    median_curve = _median_curve(curves)
    solved_at = next((s for s, v in median_curve if v >= _THRESHOLD.value), None)
    sb3 = {}
    for agent in baselines:
        agent_curves = _baseline_curves(agent, seeds, config, workdir)
        agent_median = _median_curve(agent_curves)
        sb3[agent] = {
            "median_solved_at_env_step": next(
                (s for s, v in agent_median if v >= _THRESHOLD.value), None
            ),
            "median_final_eval": _median([c[-1][1] for c in agent_curves.values() if c]),
            "first_step_at_threshold": {
                str(seed): next((s for s, v in c if v >= _THRESHOLD.value), None)
                for seed, c in agent_curves.items()
            },
            "eval_curves": {str(seed): c for seed, c in agent_curves.items()},
            "median_curve": agent_median,
        }
    rows = []
    for seed in seeds:
        curve = curves[seed]
        first = next((s for s, v in curve if v >= _THRESHOLD.value), None)
        rows.append(
            {
                "seed": seed,
                "final_eval": curve[-1][1] if curve else None,
                "best_eval": max(v for _, v in curve) if curve else None,
                "first_step_at_threshold": first,
                "wall_s": round(walls[seed], 1),
            }
        )

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for seed in seeds:
        xs, ys = zip(*curves[seed], strict=True) if curves[seed] else ((), ())
        ax.plot(xs, ys, alpha=0.4, label=f"seed {seed}")
    if median_curve:
        xs, ys = zip(*median_curve, strict=True)
        ax.plot(xs, ys, color="black", linewidth=2, label="median")
    for agent, result in sb3.items():
        if result["median_curve"]:
            xs, ys = zip(*result["median_curve"], strict=True)
            ax.plot(xs, ys, linestyle="--", linewidth=1.5, label=f"SB3 {agent.upper()} (median)")
    ax.axhline(_THRESHOLD.value, color="red", linestyle="--", label="threshold")
    random_return = None
    if _RANDOM_EPISODES.value:
        random_return = _random_return(_CONFIG.value, _OVERRIDES.value, _RANDOM_EPISODES.value)
        ax.axhline(random_return, color="gray", linestyle=":", label="random policy")
    ax.set_xlabel("env steps")
    ax.set_ylabel("eval return (deterministic policy)")
    ax.set_title(f"{name}: {len(seeds)} seeds")
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(workdir, "learning_curves.png"), dpi=120)

    lines = [
        "| seed | final eval | best eval | first step ≥ threshold | wall (s) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['seed']} | {r['final_eval']:.1f} | {r['best_eval']:.1f} | "
            f"{r['first_step_at_threshold']} | {r['wall_s']} |"
        )
    lines.append(
        f"\nmedian final eval {_median([r['final_eval'] for r in rows]):.1f}; "
        f"median curve reaches {_THRESHOLD.value} at env step {solved_at}; "
        f"median wall {_median([r['wall_s'] for r in rows]):.0f} s"
        + (" (all seeds in one vmapped program)" if _VMAP_SEEDS.value else "")
        + (f"; random policy {random_return:.3f}" if random_return is not None else "")
    )
    for agent, result in sb3.items():
        lines.append(
            f"SB3 {agent.upper()} (rl-zoo hyperparameters, same seeds and evaluations): median "
            f"final eval {result['median_final_eval']:.1f}; median curve reaches "
            f"{_THRESHOLD.value} at env step {result['median_solved_at_env_step']}"
        )
    table = "\n".join(lines)
    with open(os.path.join(workdir, "table.md"), "w") as f:
        f.write(table + "\n")
    summary = {
        "config": _CONFIG.value,
        "overrides": _OVERRIDES.value,
        "seeds": rows,
        "threshold": _THRESHOLD.value,
        "median_solved_at_env_step": solved_at,
        "median_final_eval": _median([r["final_eval"] for r in rows]),
        "median_wall_s": _median([r["wall_s"] for r in rows]),
        "vmap_seeds": _VMAP_SEEDS.value,
        "random_return": random_return,
        "baselines": {
            a: {k: v for k, v in r.items() if k != "eval_curves"} for a, r in sb3.items()
        },
        "workdir": workdir,
    }
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(table)
    # The kept copy also holds the plotted curves: the figure's numbers, a few hundred bytes.
    curves_kept = {str(seed): curves[seed] for seed in seeds}
    kept = {**summary, "eval_curves": curves_kept, "median_curve": median_curve}
    kept["baselines"] = sb3
    packages = ("torch", "stable-baselines3") if sb3 else ()
    save_result(
        "learning", kept, figure=os.path.join(workdir, "learning_curves.png"), packages=packages
    )
    print(json.dumps(summary))


if __name__ == "__main__":
    app.run(main)
