"""CartPole race: wm_jax beside Stable-Baselines3 DQN and PPO (issue 18), timed in one run;
with ``--env_id=Pendulum-v1``, wm_jax beside SAC (issue 19).

    python experiments/benchmarks/cartpole_race.py --agents=dqn,ppo,wm_jax --seeds=0,1,2
    python experiments/benchmarks/cartpole_race.py --env_id=Pendulum-v1 --agents=sac,wm_jax

For each agent and seed, one run at a time (never in parallel), each in its own process so that
interpreter start-up and imports count alike for all:

* ``dqn``, ``ppo`` (CartPole-v1), ``sac`` (Pendulum-v1): Stable-Baselines3 with rl-zoo3's
  published hyperparameters for the environment (``HYPERPARAMS`` below), run by this script
  re-executing itself (``--child``); needs the optional ``bench`` extra (``pip install -e
  .[bench]``: torch and stable-baselines3);
* ``wm_jax``: the README's first command, ``python -m wm_jax.train
  --config=experiments/configs/cartpole_rssm.py`` (``pendulum.py`` for Pendulum-v1;
  ``--wm_jax_config=experiments/configs/cartpole.py`` races the seeds' MLP world model;
  ``--config.env_id`` is always the race's), with a temporary ``--workdir``, ``--seed`` and the
  evaluation protocol below as ``--config.eval_every`` / ``--config.eval_episodes`` (the config's
  own evaluation is 5 episodes every 2.5k env steps); it runs its full budget (30k env steps) so
  its whole run time is reported too.

Evaluation protocol, the same for all (the issue's earlier SB3 measurement): ``--eval_episodes``
(10) deterministic episodes every ``--eval_every`` (2.5k) env steps on a separate env.  Times
count from just before the process is launched to the end of the first evaluation whose mean
return is ``>= --threshold`` (475 on CartPole, -200 on Pendulum); nothing (evaluation,
start-up, compilation) is excluded.
SB3's evaluation seconds are recorded separately as well.  The SB3 child stamps each evaluation
with ``time.time()``; wm_jax's ``metrics.jsonl`` has no clock column, so this script tails it
while the run goes (every ``--poll_seconds``) and stamps each eval row when it appears (the file
is line-buffered).

SB3 budgets are rl-zoo's ``n_timesteps`` (DQN 50k, PPO 100k, SAC 20k) and their schedules (DQN's
exploration, PPO's linear learning rate and clip range) always run over that budget;
``--max_env_steps`` only stops a run earlier, and ``--stop_at_threshold`` (default) stops an SB3
run at its first evaluation at the threshold.  ``--max_env_steps`` also caps wm_jax's
``total_env_steps``.

Prints a table and per-agent medians over seeds (a seed that never reaches the threshold counts
as infinitely slow, so a median is ``null`` when half or more did not reach it); the last line is
one JSON object, kept (with versions and CPU) as ``<--results_dir>/cartpole_race/<UTC
date>-<cpu>.json`` (``--results_dir=`` keeps nothing) and also written to ``--out`` if given.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import SB3_AGENTS, SB3_PREFIX, child_env, cpu_model, run_sb3, save_result  # noqa: E402

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_ENV_ID = flags.DEFINE_enum("env_id", "CartPole-v1", ["CartPole-v1", "Pendulum-v1"], "the task")
_AGENTS = flags.DEFINE_list(
    "agents", ["dqn", "ppo", "wm_jax"], "of dqn, ppo (CartPole-v1), sac (Pendulum-v1), wm_jax"
)
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "seeds, run one after the other")
_THRESHOLD = flags.DEFINE_float(
    "threshold", None, "mean eval return that counts as solved (default: the task's, THRESHOLDS)"
)
_EVAL_EVERY = flags.DEFINE_integer("eval_every", 2_500, "env steps between evaluations")
_EVAL_EPISODES = flags.DEFINE_integer("eval_episodes", 10, "deterministic episodes per eval")
_MAX_ENV_STEPS = flags.DEFINE_integer(
    "max_env_steps", 0, "stop each run by this many env steps (0: each agent's own budget)"
)
_STOP = flags.DEFINE_bool(
    "stop_at_threshold", True, "stop an SB3 run at its first evaluation at the threshold"
)
_TORCH_THREADS = flags.DEFINE_integer(
    "torch_threads", 1, "torch.set_num_threads for SB3 (0: torch's default)"
)
_WM_JAX_CONFIG = flags.DEFINE_string(
    "wm_jax_config", None, "wm_jax config (default: the task's, WM_JAX_CONFIGS)"
)
_WM_JAX_OVERRIDES = flags.DEFINE_multi_string(
    "wm_jax_override", [], "extra --config.x=y for wm_jax (x=y)"
)
_WM_JAX_CACHE = flags.DEFINE_enum(
    "wm_jax_cache",
    "default",
    ["default", "cold", "off"],
    "wm_jax's XLA compilation cache: the CLI's default (~/.cache/wm_jax/xla, warm after the "
    "first run), a fresh empty directory per run, or off",
)
_POLL = flags.DEFINE_float("poll_seconds", 0.05, "how often wm_jax's metrics.jsonl is read")
_OUT = flags.DEFINE_string("out", None, "also write the JSON line to this file")
_CHILD = flags.DEFINE_enum("child", None, ["dqn", "ppo", "sac"], "internal: run one SB3 agent")
_SEED = flags.DEFINE_integer("seed", 0, "internal: the child's seed")

# rl-zoo3 2.9.2 (pip download rl-zoo3==2.9.2), rl_zoo3/hyperparams/dqn.yml and ppo.yml, entry
# CartPole-v1 (marked "Tuned" there), copied verbatim; "lin_x" is rl-zoo's SimpleLinearSchedule
# (progress_remaining * x, rl_zoo3/utils.py), built by _schedule below.  rl-zoo builds envs
# with make_vec_env (DummyVecEnv, Monitor) seeded with the run's seed, as done here.  SAC's
# Pendulum-v1 entry (hyperparams/sac.yml) sets only these three; the rest are SB3's defaults.
HYPERPARAMS = {
    "sac": {"n_timesteps": 20_000, "policy": "MlpPolicy", "learning_rate": 1e-3},
    "dqn": {
        "n_timesteps": 50_000,
        "policy": "MlpPolicy",
        "learning_rate": 2.3e-3,
        "batch_size": 64,
        "buffer_size": 100_000,
        "learning_starts": 1000,
        "gamma": 0.99,
        "target_update_interval": 10,
        "train_freq": 256,
        "gradient_steps": 128,
        "exploration_fraction": 0.16,
        "exploration_final_eps": 0.04,
        "policy_kwargs": "dict(net_arch=[256, 256])",
    },
    "ppo": {
        "n_envs": 8,
        "n_timesteps": 100_000,
        "policy": "MlpPolicy",
        "n_steps": 32,
        "batch_size": 256,
        "gae_lambda": 0.8,
        "gamma": 0.98,
        "n_epochs": 20,
        "ent_coef": 0.0,
        "learning_rate": "lin_0.001",
        "clip_range": "lin_0.2",
    },
}
THRESHOLDS = {"CartPole-v1": 475.0, "Pendulum-v1": -200.0}  # issue 19's targets
WM_JAX_CONFIGS = {"CartPole-v1": "cartpole_rssm.py", "Pendulum-v1": "pendulum.py"}


def _threshold() -> float:
    return THRESHOLDS[_ENV_ID.value] if _THRESHOLD.value is None else _THRESHOLD.value


def _wm_jax_config() -> str:
    name = WM_JAX_CONFIGS[_ENV_ID.value]
    return _WM_JAX_CONFIG.value or os.path.join(_ROOT, "experiments", "configs", name)


class _LinearSchedule:
    """rl-zoo's ``lin_x``: ``x`` at the start, 0 at the end of ``n_timesteps``."""

    def __init__(self, initial: float):
        self.initial = initial

    def __call__(self, progress_remaining: float) -> float:
        return progress_remaining * self.initial


def _schedule(value):
    if isinstance(value, str) and value.startswith("lin_"):
        return _LinearSchedule(float(value.split("_", 1)[1]))
    return value


def _emit(**row) -> None:
    print(SB3_PREFIX + json.dumps(row), flush=True)


def _child(agent: str, seed: int) -> None:
    """One SB3 run; prints a line per evaluation and one at the end (``SB3_PREFIX`` + JSON)."""
    import torch
    from stable_baselines3 import DQN, PPO, SAC
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.logger import Logger

    if _TORCH_THREADS.value > 0:
        torch.set_num_threads(_TORCH_THREADS.value)
    hp = dict(HYPERPARAMS[agent])
    budget = hp.pop("n_timesteps")
    n_envs = hp.pop("n_envs", 1)
    policy = hp.pop("policy")
    if "policy_kwargs" in hp:
        hp["policy_kwargs"] = eval(hp["policy_kwargs"])  # rl-zoo's own format: "dict(...)"
    hp = {k: _schedule(v) for k, v in hp.items()}
    env = make_vec_env(_ENV_ID.value, n_envs=n_envs, seed=seed)
    eval_env = make_vec_env(_ENV_ID.value, n_envs=1, seed=seed + 10_000)
    cls = {"dqn": DQN, "ppo": PPO, "sac": SAC}[agent]
    model = cls(policy, env, seed=seed, device="cpu", verbose=0, **hp)
    # No outputs: SB3's default logger makes a /tmp/SB3-<time> folder per run even when silent.
    model.set_logger(Logger(folder=None, output_formats=[]))
    stop_at = min(budget, _MAX_ENV_STEPS.value) if _MAX_ENV_STEPS.value > 0 else budget
    _emit(event="ready", time=time.time(), torch_threads=torch.get_num_threads())

    class Race(BaseCallback):
        """Evaluates every ``--eval_every`` env steps; stops at the threshold or ``stop_at``."""

        def __init__(self):
            super().__init__()
            self.next_eval = _EVAL_EVERY.value

        def _on_step(self) -> bool:
            if self.num_timesteps >= self.next_eval:
                while self.next_eval <= self.num_timesteps:
                    self.next_eval += _EVAL_EVERY.value
                start = time.time()
                returns, _ = evaluate_policy(
                    self.model,
                    eval_env,
                    n_eval_episodes=_EVAL_EPISODES.value,
                    deterministic=True,
                    return_episode_rewards=True,
                )
                mean = float(sum(returns) / len(returns))
                now = time.time()
                _emit(
                    event="eval",
                    env_step=int(self.num_timesteps),
                    eval_return=mean,
                    time=now,
                    eval_seconds=now - start,
                )
                if _STOP.value and mean >= _threshold():
                    return False
            return self.num_timesteps < stop_at

    # The schedules run over rl-zoo's budget; the callback stops earlier when asked to.
    model.learn(total_timesteps=budget, callback=Race())
    _emit(event="end", env_step=int(model.num_timesteps), time=time.time())


def _run_sb3(agent: str, seed: int, tmp: str) -> dict:
    args = [f"--env_id={_ENV_ID.value}", f"--threshold={_threshold()}"]
    for flag in (_EVAL_EVERY, _EVAL_EPISODES, _MAX_ENV_STEPS, _STOP, _TORCH_THREADS):
        args.append(f"--{flag.name}={flag.value}")
    t0 = time.time()
    rows = run_sb3(agent, seed, args, os.path.join(tmp, f"{agent}_{seed}.log"))
    total = time.time() - t0
    evals = [r for r in rows if r["event"] == "eval"]
    ready = next(r for r in rows if r["event"] == "ready")
    curve = [(r["env_step"], r["eval_return"], r["time"] - t0) for r in evals]
    result = _result(curve, total, rows[-1]["env_step"])
    hit = result["env_steps_to_threshold"]
    result["eval_seconds_total"] = round(sum(r["eval_seconds"] for r in evals), 2)
    result["eval_seconds_to_threshold"] = round(
        sum(r["eval_seconds"] for r in evals if hit is None or r["env_step"] <= hit), 2
    )
    result["startup_seconds"] = round(ready["time"] - t0, 2)  # imports, envs, model built
    result["torch_threads"] = ready["torch_threads"]
    return result


def _run_wm_jax(seed: int, tmp: str) -> dict:
    workdir = os.path.join(tmp, f"wm_jax_{seed}")
    cmd = [
        sys.executable,
        "-m",
        "wm_jax.train",
        f"--config={os.path.abspath(_wm_jax_config())}",
        f"--config.env_id={_ENV_ID.value}",
        f"--workdir={workdir}",
        f"--seed={seed}",
        f"--config.eval_every={_EVAL_EVERY.value}",
        f"--config.eval_episodes={_EVAL_EPISODES.value}",
    ]
    if _MAX_ENV_STEPS.value > 0:
        cmd.append(f"--config.total_env_steps={_MAX_ENV_STEPS.value}")
    cmd += [f"--config.{o}" for o in _WM_JAX_OVERRIDES.value]
    env = child_env()
    cache_dir = env.get("JAX_COMPILATION_CACHE_DIR") or os.path.expanduser("~/.cache/wm_jax/xla")
    if _WM_JAX_CACHE.value == "cold":
        env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(tmp, f"xla_cache_{seed}")
    elif _WM_JAX_CACHE.value == "off":
        env["WM_JAX_COMPILATION_CACHE"] = "0"
    cache_entries = len(os.listdir(cache_dir)) if os.path.isdir(cache_dir) else 0
    metrics = os.path.join(workdir, "metrics.jsonl")
    curve, buffer, offset, last_step = [], "", 0, 0
    log_path = os.path.join(tmp, f"wm_jax_{seed}.log")

    def read_new(t0: float) -> None:
        nonlocal buffer, offset, last_step
        if not os.path.exists(metrics):
            return
        with open(metrics) as f:
            f.seek(offset)
            chunk = f.read()
            offset = f.tell()
        now = time.time() - t0
        buffer += chunk
        *lines, buffer = buffer.split("\n")
        for line in lines:
            row = json.loads(line)
            last_step = max(last_step, row["env_step"])
            if "eval_return" in row and "eval_return_std" in row:  # an eval row
                curve.append((row["env_step"], row["eval_return"], now))

    with open(log_path, "w") as log:
        t0 = time.time()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp)
        while proc.poll() is None:
            read_new(t0)
            time.sleep(_POLL.value)
        total = time.time() - t0
        read_new(t0)
    if proc.returncode != 0:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        raise SystemExit(f"wm_jax seed {seed} failed (exit {proc.returncode}):\n{tail}")
    result = _result(curve, total, last_step)
    if _WM_JAX_CACHE.value == "default":  # how warm the cache was: 0 entries is a cold start
        result["cache_entries_before"] = cache_entries
    return result


def _result(curve: list, total: float, env_steps: int) -> dict:
    hit = next((c for c in curve if c[1] >= _threshold()), None)
    return {
        "seconds_to_threshold": None if hit is None else round(hit[2], 2),
        "env_steps_to_threshold": None if hit is None else hit[0],
        "total_seconds": round(total, 2),
        "env_steps": env_steps,
        "best_eval_return": max((c[1] for c in curve), default=None),
        "evals": [[s, round(r, 1), round(t, 2)] for s, r, t in curve],
    }


def _median(values: list) -> float | None:
    """Median with unreached (None) as +inf; None when the median itself is unreached."""
    m = statistics.median(math.inf if v is None else v for v in values)
    return None if math.isinf(m) else m


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def main(argv):
    del argv
    if _CHILD.value:
        _child(_CHILD.value, _SEED.value)
        return
    agents, seeds = _AGENTS.value, [int(s) for s in _SEEDS.value]
    sb3_agents = set(agents) - {"wm_jax"}
    unknown = sb3_agents - set(SB3_AGENTS[_ENV_ID.value])
    if unknown:
        raise app.UsageError(
            f"agents {sorted(unknown)} have no rl-zoo hyperparameters for {_ENV_ID.value} here; "
            f"use {', '.join(SB3_AGENTS[_ENV_ID.value])} or wm_jax"
        )
    if sb3_agents and not (_version("torch") and _version("stable-baselines3")):
        raise SystemExit(
            f"{'/'.join(sorted(sb3_agents))} need the bench extra: pip install -e .[bench]"
        )
    started = datetime.datetime.now(datetime.UTC)
    load_start = os.getloadavg()
    results: dict = {a: {"runs": []} for a in agents}
    print(f"{'agent':<8}{'seed':>5}{'s to thr':>10}{'steps to thr':>14}{'total s':>9}{'best':>7}")
    with tempfile.TemporaryDirectory(prefix="cartpole_race_") as tmp:
        for agent in agents:
            for seed in seeds:
                run = _run_wm_jax(seed, tmp) if agent == "wm_jax" else _run_sb3(agent, seed, tmp)
                run = {"seed": seed, **run}
                results[agent]["runs"].append(run)
                print(
                    f"{agent:<8}{seed:>5}{_fmt(run['seconds_to_threshold']):>10}"
                    f"{_fmt(run['env_steps_to_threshold']):>14}{run['total_seconds']:>9.1f}"
                    f"{_fmt(run['best_eval_return']):>7}",
                    flush=True,
                )
    for agent in agents:
        runs = results[agent]["runs"]
        results[agent]["median_seconds_to_threshold"] = _median(
            [r["seconds_to_threshold"] for r in runs]
        )
        results[agent]["median_env_steps_to_threshold"] = _median(
            [r["env_steps_to_threshold"] for r in runs]
        )
        results[agent]["median_total_seconds"] = statistics.median(r["total_seconds"] for r in runs)
        results[agent]["reached"] = f"{sum(r['seconds_to_threshold'] is not None for r in runs)}"
        results[agent]["reached"] += f"/{len(runs)}"
        if agent in HYPERPARAMS:
            results[agent]["hyperparams"] = HYPERPARAMS[agent]
        else:
            results[agent]["config"] = os.path.relpath(os.path.abspath(_wm_jax_config()), _ROOT)
            results[agent]["overrides"] = _WM_JAX_OVERRIDES.value
            results[agent]["compilation_cache"] = _WM_JAX_CACHE.value
    print("medians over seeds (unreached counts as never):")
    for agent in agents:
        r = results[agent]
        print(
            f"  {agent:<8} {_fmt(r['median_seconds_to_threshold'])} s, "
            f"{_fmt(r['median_env_steps_to_threshold'])} env steps to {_threshold():g} "
            f"(reached {r['reached']}); total {r['median_total_seconds']:.1f} s"
        )
    summary = {
        "benchmark": "cartpole_race",
        "command": " ".join(["python", os.path.relpath(__file__, _ROOT), *sys.argv[1:]]),
        "started_utc": started.isoformat(timespec="seconds"),
        "env_id": _ENV_ID.value,
        "threshold": _threshold(),
        "eval_every": _EVAL_EVERY.value,
        "eval_episodes": _EVAL_EPISODES.value,
        "stop_at_threshold_sb3": _STOP.value,
        "max_env_steps": _MAX_ENV_STEPS.value,
        "torch_threads": _TORCH_THREADS.value,
        "hyperparams_source": f"rl-zoo3 2.9.2 rl_zoo3/hyperparams/<agent>.yml {_ENV_ID.value}",
        "versions": {
            n: _version(n) for n in ("torch", "stable-baselines3", "jax", "gymnasium", "absl-py")
        },
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        "results": results,
    }
    line = json.dumps(summary)
    sb3 = ("torch", "stable-baselines3") if sb3_agents else ()
    save_result("cartpole_race", summary, packages=sb3)  # SB3 ran in child processes
    out = _OUT.value
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            f.write(line + "\n")
        print(f"wrote {os.path.abspath(out)}")
    print(line)


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    app.run(main)
