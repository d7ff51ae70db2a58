"""Provoke each of the seeds' five failure signatures with a deliberately bad config and check
that the detector (:mod:`wm_jax.diagnostics`) names it, and that a healthy run is not flagged.

    python experiments/benchmarks/failure_modes.py --workdir=runs/failure_modes --parallel=2

Every case trains CartPole-v1 from experiments/configs/cartpole.py through the real CLI with a
short schedule (``--steps`` env steps), then runs the detector over its ``metrics.jsonl`` and
writes a report into the case's workdir.  ``--healthy_workdir`` reuses an existing healthy run
(e.g. a seed of the learning benchmark) instead of training one.  A case passes only when its
expected finding is there *and* every other finding is one the case lists as a consequence of
the same fault (with the reason); anything else is an unexpected finding and fails it, as any
finding fails the healthy run.  The detector runs with the thresholds of each run's own
config.json.  Prints a table and, as the last line, one JSON object; exits non-zero if a case is
missed, shows an unexpected finding, or the healthy run is flagged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import save_result  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "runs/failure_modes", "output directory")
_PARALLEL = flags.DEFINE_integer("parallel", 2, "cases trained at once")
_STEPS = flags.DEFINE_integer("steps", 12_000, "env steps per bad-config case")
_HEALTHY = flags.DEFINE_string("healthy_workdir", None, "reuse this healthy run's workdir")
_ONLY = flags.DEFINE_list("only", [], "run only these cases")

CONFIG = "experiments/configs/cartpole.py"
SHORT = ["schedule.warmup_steps=2000", "schedule.transition_steps=4000", "eval_every=2000"]

# case -> (expected detector mode, overrides[, findings the same fault may also raise]).  Each is
# the issue's / seeds' recipe for the fault.
CASES = {
    "world_model_lr_0": ("world_model_not_learning", ["world_model.lr=0.0"]),
    # The continue head never learns, so imagination never ends an episode: imagined returns
    # climb while the real policy learns nothing about falling over.  The real-data critic floor
    # and the multi-step loss of the CartPole config are exactly the cures, so they are off.
    "no_continue_loss": (
        "policy_exploiting_model",
        [
            "world_model.continue_scale=0.0",
            "schedule.final_real_mix=0.0",
            "sequence_mode=False",
            "batch_size=64",
            "imagination.num_starts=0",
        ],
    ),
    # A huge lr without clipping.  (On the actor, Adam's bounded steps saturate the softmax and
    # the gradients vanish instead: that run is flagged as entropy collapse, see BUILD_NOTES.)
    "huge_world_model_lr_no_clip": (
        "gradient_explosion",
        ["world_model.lr=1e3", "world_model.grad_clip=1e12"],
    ),
    "critic_lr_too_high": (
        "critic_divergence",
        ["critic.lr=1.0", "critic.grad_clip=1e12", "critic.target_update_rate=1.0"],
    ),
    # A one-action policy keeps imagining the returns it expects while the real return stays
    # flat: exploitation is the same fault seen from the returns.
    "no_entropy_high_actor_lr": (
        "entropy_collapse",
        ["actor.entropy_coef=0.0", "actor.lr=3e-3", "actor.unimix=0.0"],
        ("policy_exploiting_model",),
    ),
}


def _command(run_dir: str, overrides: list[str], steps: int | None) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "wm_jax.train",
        f"--config={CONFIG}",
        f"--workdir={run_dir}",
        "--config.checkpoint_every=0",
    ]
    if steps is not None:
        cmd.append(f"--config.total_env_steps={steps}")
    return cmd + [f"--config.{o}" for o in overrides]


def main(argv):
    del argv
    from wm_jax import diagnostics
    from wm_jax.metrics import read_metrics
    from wm_jax.report import write_report

    workdir = os.path.abspath(_WORKDIR.value)
    os.makedirs(workdir, exist_ok=True)
    jobs = {
        name: (case[0], _command(os.path.join(workdir, name), SHORT + case[1], _STEPS.value))
        for name, case in CASES.items()
        if not _ONLY.value or name in _ONLY.value
    }
    healthy_dir = _HEALTHY.value
    if healthy_dir is None and (not _ONLY.value or "healthy" in _ONLY.value):
        healthy_dir = os.path.join(workdir, "healthy")
        jobs["healthy"] = (None, _command(healthy_dir, [], None))

    pending, running, walls = list(jobs), {}, {}
    while pending or running:
        while pending and len(running) < _PARALLEL.value:
            name = pending.pop(0)
            log = open(os.path.join(workdir, f"{name}.log"), "w")
            # A run that stops itself on non-finite updates (exit 3) is a legitimate outcome.
            running[name] = (subprocess.Popen(jobs[name][1], stdout=log, stderr=log), time.time())
        for name, (proc, start) in list(running.items()):
            if proc.poll() is not None:
                walls[name] = time.time() - start
                if proc.returncode not in (0, 3):
                    raise SystemExit(f"case {name} crashed; see {workdir}/{name}.log")
                del running[name]
        time.sleep(1.0)

    rows, ok = [], True
    cases = {name: mode for name, (mode, _) in jobs.items()}
    if healthy_dir is not None:
        cases["healthy"] = None
    for name, expected in cases.items():
        run_dir = healthy_dir if name == "healthy" else os.path.join(workdir, name)
        config_path = os.path.join(run_dir, "config.json")
        config = None
        if os.path.exists(config_path):
            with open(config_path) as f:
                config = json.load(f)
        findings = diagnostics.detect(
            read_metrics(run_dir), diagnostics.Thresholds.from_config(config)
        )
        write_report(run_dir, findings)
        modes = [f.mode for f in findings]
        allowed = set(CASES[name][2]) if name in CASES and len(CASES[name]) > 2 else set()
        unexpected = [m for m in modes if m != expected and m not in allowed]
        hit = expected is None or expected in modes
        ok &= hit and not unexpected
        rows.append(
            {
                "case": name,
                "expected": expected or "(nothing)",
                "detected": modes,
                "unexpected": unexpected,
                "first_step": {f.mode: f.env_step for f in findings},
                "ok": hit and not unexpected,
                "wall_s": round(walls.get(name, 0.0), 1),
            }
        )
    lines = [
        "| case | expected | detected (first env step) | unexpected | ok |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        found = ", ".join(f"{m} ({s})" for m, s in r["first_step"].items()) or "nothing"
        extra = ", ".join(r["unexpected"]) or "—"
        mark = "✓" if r["ok"] else "✗"
        lines.append(f"| {r['case']} | {r['expected']} | {found} | {extra} | {mark} |")
    table = "\n".join(lines)
    with open(os.path.join(workdir, "table.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    result = {"cases": rows, "all_ok": ok}
    save_result("failure_modes", result)
    print(json.dumps(result))
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    app.run(main)
