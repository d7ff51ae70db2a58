"""Every checkpoint of a run, evaluated with the deterministic policy and with the sampled one.

    python -m wm_jax.train --config=experiments/configs/cartpole.py --seed=1 \\
        --workdir=/tmp/ev/s1 --config.total_env_steps=20000 --config.checkpoint_every=2500 \\
        --config.keep_checkpoints=10 --config.report=False
    python experiments/benchmarks/checkpoint_evals.py --workdirs=/tmp/ev/s1 --episodes=20

Answers "is the run's agent bad, or only its mode?": the training evaluations (and
``wm_jax.evaluate`` by default) play the deterministic policy (the most likely action / the mean),
while the agent trains and collects data with samples.  A policy whose probabilities sit near a
tie in the states that matter can drift under the mode and still balance when it samples; one
whose mode and samples score alike is near deterministic, so its failures are the policy's own.
Each checkpoint (``--steps``, default all from ``--min_step``) runs ``--episodes`` episodes each
way in the run's env with fresh seeded envs (``wm_jax.evaluate.evaluate_policy``).  Prints a
table; last line: one JSON object, also kept under ``experiments/results/checkpoint_evals/``.

``--cross`` separates the actor's changes from the world model's: a policy acts on the latent
states of its own checkpoint's encoder, so an actor that was good on an earlier representation
and fails on a later one (or the reverse) shows that the representation moved under it.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import save_result  # noqa: E402

# wm_jax.evaluate's own flags are reused: --episodes (per checkpoint and policy) and --seed (of
# the evaluation envs and the sampled actions).
from wm_jax.evaluate import evaluate_policy  # noqa: E402
from wm_jax.inference import load_policy  # noqa: E402

FLAGS = flags.FLAGS
_WORKDIRS = flags.DEFINE_list("workdirs", None, "run directories (comma-separated)")
_STEPS = flags.DEFINE_list("steps", [], "checkpoint steps to evaluate (default: all)")
_MIN_STEP = flags.DEFINE_integer("min_step", 0, "skip checkpoints before this env step")
_CROSS = flags.DEFINE_bool(
    "cross",
    False,
    "also play, for each pair of consecutive checkpoints a < b, a's actor on b's world model "
    "(and observation normaliser) and b's actor on a's, deterministic",
)


def _steps(workdir: str) -> list[int]:
    if _STEPS.value:
        return sorted(int(s) for s in _STEPS.value)
    names = os.listdir(os.path.join(workdir, "checkpoints"))
    return sorted(int(n) for n in names if n.isdigit() and int(n) >= _MIN_STEP.value)


def main(argv):
    del argv
    runs = {}
    print(f"{'run':>24s} {'step':>7s} | deterministic      | sampled (mean ± std)")
    for workdir in _WORKDIRS.value:
        rows, policies = [], {}
        for step in _steps(workdir):
            policy = policies[step] = load_policy(workdir, step)
            row = {"step": step}
            for name, deterministic in (("deterministic", True), ("sampled", False)):
                mean, std, returns = evaluate_policy(
                    policy, FLAGS.episodes, FLAGS.seed, None, deterministic
                )
                row[name] = {"mean": round(mean, 2), "std": round(std, 2), "returns": returns}
            rows.append(row)
            d, s = row["deterministic"], row["sampled"]
            print(
                f"{os.path.basename(os.path.normpath(workdir)):>24s} {step:>7d} | "
                f"{d['mean']:8.1f} ± {d['std']:6.1f}      | {s['mean']:8.1f} ± {s['std']:6.1f}",
                flush=True,
            )
        cross = []
        if _CROSS.value:
            for a, b in itertools.pairwise(sorted(policies)):
                old, new = policies[a], policies[b]
                for actor, model in ((old, new), (new, old)):
                    mixed = dataclasses.replace(model, actor_params=actor.actor_params)
                    mean, std, returns = evaluate_policy(
                        mixed, FLAGS.episodes, FLAGS.seed, None, True
                    )
                    cross.append(
                        {
                            "actor": actor.step,
                            "world_model": model.step,
                            "mean": round(mean, 2),
                            "std": round(std, 2),
                            "returns": returns,
                        }
                    )
                    print(
                        f"{'':>24s} actor of {actor.step}, world model of {model.step}: "
                        f"{mean:8.1f} ± {std:6.1f}",
                        flush=True,
                    )
        runs[os.path.abspath(workdir)] = {"checkpoints": rows, "cross": cross}
    result = {"benchmark": "checkpoint_evals", "episodes": FLAGS.episodes, "runs": runs}
    save_result("checkpoint_evals", result)
    print(json.dumps(result))


if __name__ == "__main__":
    flags.mark_flag_as_required("workdirs")
    app.run(main)
