"""Why is a run stuck?  Probes one checkpoint of a run's workdir (issue 19's plateau).

    python experiments/benchmarks/checkpoint_probe.py --workdir=runs/cartpole --step=20000
    python experiments/benchmarks/checkpoint_probe.py --workdir=runs/cartpole --step=20000 \
        --wm_retrain_updates=3000 --ac_updates=3000 --seed=1

Four measurements, each on the run's own data (its replay and normaliser from the checkpoint):

1. **Real episodes** of the deterministic policy: returns, how each ended (terminated or the time
   limit) and the final observations (on CartPole-v1 also *why*: the cart left the track or the
   pole fell).
2. **The world model on its replay**: the open-loop error of decoded observations 1, 5 and 15
   steps ahead (the imagination horizon) on replayed windows, and the continue head's recall of
   the stored terminations (per cause on CartPole).
3. **The critic along the real episodes**: V(s_t) beside the discounted return-to-go of the
   episodes that terminated.
4. Optional **steadiness**: ``--wm_steady_updates`` world-model updates that continue the run's
   own training (its Adam state; the config with any ``--override``), the 15-step error read
   every 100 updates: its median and maximum are how accurate and how noisy the model is at that
   step size.
5. Optional **headroom**: ``--wm_retrain_updates`` more world-model updates on the same replay
   (fresh Adam at ``--wm_retrain_lr``, global-norm clip ``--wm_retrain_clip``) and the same
   error after; then ``--ac_updates`` actor+critic updates on that frozen model (replayed
   starts, the config's final real-data mix), with the real policy evaluated 5 times along the
   way.  A model that gets much better offline was undertrained or noisy; a policy that leaves
   its plateau on a frozen accurate model was held back by the model.

Recurrent world models (the RSSM, the README's config) are read as training reads them: the
episodes act through :mod:`wm_jax.policy` with the carried state, and the continue head's
recall is measured on replayed windows that hold a stored termination (``--recall_windows`` of
them, the posterior read from the window's start), not on every stored termination one by one.
The transformer dynamics is not supported.  ``--override`` applies to every update the probe
makes (steady, actor+critic); the retrain's step size and clip are its own flags.  Last line:
one JSON object (kept by ``save_result``).
"""

from __future__ import annotations

import json
import os
import sys

import ml_collections
import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import save_result  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "the run's workdir", required=True)
_STEP = flags.DEFINE_integer("step", None, "checkpoint step (default: the newest)")
_EPISODES = flags.DEFINE_integer("episodes", 10, "real episodes of the deterministic policy")
_SEED = flags.DEFINE_integer("seed", 0, "seed of the probe's replay sampling and updates")
_WM_UPDATES = flags.DEFINE_integer("wm_retrain_updates", 0, "offline world-model updates")
_WM_LR = flags.DEFINE_float("wm_retrain_lr", 1e-4, "their learning rate (fresh Adam)")
_WM_CLIP = flags.DEFINE_float("wm_retrain_clip", 1000.0, "their global-norm clip")
_AC_UPDATES = flags.DEFINE_integer("ac_updates", 0, "actor+critic updates on the frozen model")
_STEADY = flags.DEFINE_integer(
    "wm_steady_updates", 0, "world-model updates continuing the run's own Adam state"
)
_RECALL_WINDOWS = flags.DEFINE_integer(
    "recall_windows", 512, "recurrent models: replayed windows holding a termination, for recall"
)
_OVERRIDES = flags.DEFINE_multi_string(
    "override", [], "x=y config overrides for the probe's own updates (e.g. world_model.lr=1e-4)"
)


def _load(workdir: str, step: int | None):
    import jax

    from wm_jax.agent import init_state, make_agent
    from wm_jax.checkpoint import Checkpointer
    from wm_jax.inference import spec_from_json
    from wm_jax.normalizer import RunningMeanStd
    from wm_jax.replay import ReplayBuffer

    with open(os.path.join(workdir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    with open(os.path.join(workdir, "env_spec.json")) as f:
        spec = spec_from_json(json.load(f))
    agent = make_agent(config, spec)
    if config.model.dynamics == "transformer":
        raise SystemExit("checkpoint_probe does not read the transformer dynamics' context")
    checkpoints = Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    step, state, extras = checkpoints.restore(init_state(agent, jax.random.PRNGKey(0)), step)
    checkpoints.close()
    normalizer = RunningMeanStd(spec.obs_shape, enabled=config.obs_norm)
    normalizer.load_state_dict(extras["normalizer"])
    replay = ReplayBuffer(
        config.replay_capacity, config.num_envs, spec.obs_shape, spec.obs_dtype, spec.action_dim
    )
    saved = dict(extras["replay"])
    for key in ("write_pos", "count"):  # restored as int32 without jax_enable_x64
        saved[key] = np.asarray(saved[key], np.int64)
    replay.load_state_dict(saved)
    return config, spec, agent, step, state, normalizer.stats(), replay


def _typed(config) -> dict:
    """``--override`` items as ``wm_jax.config.override`` arguments, each value parsed as the
    type of the field it replaces."""
    typed = {}
    for item in _OVERRIDES.value:
        path, _, value = item.partition("=")
        node = config
        for name in path.split("."):
            if not isinstance(node, ml_collections.ConfigDict) or name not in node:
                raise app.UsageError(f"--override={item}: {path!r} is not a config field")
            node = node[name]
        typed[path] = (value == "True") if isinstance(node, bool) else type(node)(value)
    return typed


def _cartpole_cause(obs) -> str:
    return "cart left the track" if abs(float(obs[0])) > 2.4 else "pole fell"


def main(argv):
    del argv
    import gymnasium as gym
    import jax
    import jax.numpy as jnp

    from wm_jax.agent import init_state, make_agent
    from wm_jax.config import override
    from wm_jax.env_spec import to_env_action
    from wm_jax.normalizer import normalize
    from wm_jax.open_loop import make_open_loop_fn
    from wm_jax.policy import make_act_fn
    from wm_jax.schedule import UpdateCounts
    from wm_jax.shell import prepare_batch
    from wm_jax.step_losses import observe_batch
    from wm_jax.update import train_step, world_model_update

    config, spec, agent, step, state, (mean, std), replay = _load(_WORKDIR.value, _STEP.value)
    if _OVERRIDES.value:  # the loaded parameters fix the shapes; step sizes, weights may change
        tuned = override(ml_collections.ConfigDict(config.to_dict()), **_typed(config))
        config, agent = tuned, make_agent(tuned, spec)
    wm, critic = agent.nets.world_model, agent.nets.critic
    cartpole = config.env_id == "CartPole-v1"
    gamma = config.imagination.gamma

    act_fn = make_act_fn(agent)  # the deterministic policy of the run's evaluations
    unused_key = jax.random.PRNGKey(0)  # the deterministic policy draws nothing
    value = jax.jit(lambda params, states: critic.apply(params, states).reshape(-1))

    def episodes(st, n, with_values=False):
        env = gym.make(config.env_id)
        out = []
        for ep in range(n):
            obs, _ = env.reset(seed=10_000 + ep)
            carry, states, rewards, terminated = act_fn.initial_carry(1), [], [], False
            while True:
                action, carry = act_fn(
                    st.wm_params, st.actor_params, carry, obs[None], mean, std,
                    unused_key, deterministic=True,
                )  # fmt: skip
                states.append(carry.state[0])
                obs, reward, terminated, truncated, _ = env.step(
                    to_env_action(np.asarray(action), spec)[0]
                )
                rewards.append(float(reward))
                if terminated or truncated:
                    break
            row = {
                "return": float(np.sum(rewards)),
                "length": len(rewards),
                "terminated": bool(terminated),
            }
            row["final_obs"] = np.round(np.asarray(obs, np.float64), 3).tolist()
            if cartpole and terminated:
                row["cause"] = _cartpole_cause(obs)
            if with_values and terminated:  # the true return-to-go is known only then
                values = np.asarray(value(st.critic_params, jnp.stack(states)))
                t = len(rewards)
                togo = np.zeros(t + 1)
                for k in reversed(range(t)):  # discounted, in the critic's (scaled) units
                    togo[k] = rewards[k] * config.reward_scale + gamma * togo[k + 1]
                row["value_vs_return_to_go"] = [
                    [int(k), round(float(values[k]), 1), round(float(togo[k]), 1)]
                    for k in np.linspace(0, t - 1, 6).astype(int)
                ]
            out.append(row)
        env.close()
        return out

    rng = np.random.default_rng(_SEED.value)
    stored = replay.state_dict()  # the stored transitions, read by the continue head's recall
    scale = np.float32(config.reward_scale)
    open_loop = make_open_loop_fn(agent)
    windows = [
        prepare_batch(replay.sample_sequences(np.random.default_rng(123), 64, 16), mean, std, scale)
        for _ in range(4)
    ]

    def model_error(wm_params) -> list[float]:
        out = [jax.device_get(open_loop(wm_params, w)) for w in windows]
        errs = np.mean([o["obs_error_by_step"] for o in out], 0)
        return [round(float(errs[k - 1]), 4) for k in (1, 5, 15)]

    def terminal_states(wm_params):
        """Each stored termination's next observation (raw) and the state the model reads it
        into: one by one for a per-observation model, in replayed windows for a recurrent one."""
        if not wm.recurrent:
            rows = [(e, np.arange(int(c))) for e, c in enumerate(stored["count"])]
            nxt = np.concatenate([stored["next_obs"][e, s] for e, s in rows])
            ended = np.concatenate([stored["cont"][e, s] == 0 for e, s in rows])
            return nxt[ended], wm.apply(
                wm_params, normalize(nxt[ended], mean, std), method=wm.encode
            )
        raw = replay.sample_sequences(
            np.random.default_rng(321), _RECALL_WINDOWS.value, config.sequence_length, 1.0
        )
        states = observe_batch(agent, wm_params, prepare_batch(raw, mean, std, scale)).next_states
        b, t = np.nonzero((raw.cont == 0) & (raw.mask > 0))
        return raw.obs[b, t + 1], np.asarray(states)[b, t]

    def recall(wm_params) -> dict[str, float]:
        nxt, states = terminal_states(wm_params)
        flagged = np.asarray(wm.apply(wm_params, states, method=wm.cont).logits).reshape(-1) < 0
        out = {"terminations": len(nxt), "recall": round(float(flagged.mean()), 3)}
        if cartpole:
            causes = np.array([_cartpole_cause(o) for o in nxt])
            for cause in sorted(set(causes)):
                out[f"recall ({cause})"] = round(float(flagged[causes == cause].mean()), 3)
        return out

    def batch():
        sampled = replay.sample_sequences(rng, config.batch_size, config.sequence_length)
        return prepare_batch(sampled, mean, std, scale)

    real = episodes(state, _EPISODES.value, with_values=True)
    result = {
        "workdir": _WORKDIR.value,
        "step": int(step),
        "env_id": config.env_id,
        "eval_return_mean": float(np.mean([r["return"] for r in real])),
        "episodes": real,
        "open_loop_mse_at_1_5_15": model_error(state.wm_params),
        "continue_recall": recall(state.wm_params),
    }
    print(f"checkpoint {step} of {_WORKDIR.value}: eval {result['eval_return_mean']:.1f}")
    for r in real:
        end = r.get("cause", "terminated" if r["terminated"] else "time limit")
        print(f"  return {r['return']:6.1f}  {end}  final obs {r['final_obs']}")
    print(f"  open-loop MSE (normalised obs) at 1/5/15 steps: {result['open_loop_mse_at_1_5_15']}")
    print(f"  continue head on stored terminations: {result['continue_recall']}")
    if real and "value_vs_return_to_go" in real[0]:
        print(f"  critic [t, V, return-to-go], episode 0: {real[0]['value_vs_return_to_go']}")

    if _STEADY.value:
        update = jax.jit(lambda s, b: world_model_update(agent, s, b))
        errors, steady = [], state
        for i in range(_STEADY.value):
            steady, _ = update(steady, batch())
            if (i + 1) % 100 == 0:
                errors.append(model_error(steady.wm_params)[2])
        result["steady_15_step_mse"] = {
            "updates": _STEADY.value,
            "median": float(np.median(errors)),
            "max": float(np.max(errors)),
            "every_100": errors,
        }
        print(
            f"  {_STEADY.value} more world-model updates (lr {config.world_model.lr}, clip "
            f"{config.world_model.grad_clip}): 15-step MSE every 100, median "
            f"{np.median(errors):.3f}, max {np.max(errors):.3f}"
        )
    if _WM_UPDATES.value:
        retrain = override(
            ml_collections.ConfigDict(config.to_dict()),
            **{"world_model.lr": _WM_LR.value, "world_model.grad_clip": _WM_CLIP.value},
        )
        agent2 = make_agent(retrain, spec)
        st2 = init_state(agent2, jax.random.PRNGKey(_SEED.value)).replace(wm_params=state.wm_params)
        update = jax.jit(lambda s, b: world_model_update(agent2, s, b))
        for _ in range(_WM_UPDATES.value):
            st2, _ = update(st2, batch())
        state = state.replace(wm_params=st2.wm_params)
        result["after_retrain"] = {
            "open_loop_mse_at_1_5_15": model_error(state.wm_params),
            "continue_recall": recall(state.wm_params),
        }
        after = result["after_retrain"]
        print(
            f"  after {_WM_UPDATES.value} world-model updates (lr {_WM_LR.value}, clip "
            f"{_WM_CLIP.value}): open-loop MSE {after['open_loop_mse_at_1_5_15']}, "
            f"continue {after['continue_recall']}"
        )
    if _AC_UPDATES.value:
        state = state.replace(key=jax.random.PRNGKey(_SEED.value))
        counts, real_mix = UpdateCounts(0, 1, 1), config.schedule.final_real_mix
        step_fn = jax.jit(lambda s, b: train_step(agent, s, b, counts, real_mix))
        curve = []
        for i in range(_AC_UPDATES.value):
            state, metrics = step_fn(state, batch())
            if (i + 1) % max(1, _AC_UPDATES.value // 5) == 0:
                ret = float(np.mean([r["return"] for r in episodes(state, _EPISODES.value)]))
                curve.append([i + 1, ret, round(float(metrics["entropy"]), 3)])
                print(
                    f"  {i + 1} actor+critic updates on the frozen model: eval {ret:.1f}, "
                    f"entropy {curve[-1][2]}"
                )
        result["actor_critic_on_frozen_model"] = curve
    save_result("checkpoint_probe", result)
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
