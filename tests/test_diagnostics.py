"""The failure-mode detector on hand-made metric streams: each signature is named, a healthy
stream is not flagged, thresholds come from the config, and findings are reported once."""

import math

import ml_collections
import pytest

from wm_jax.diagnostics import MODES, Detector, Thresholds, default_config_group, detect


def stream(n=12, **overrides):
    """A healthy-looking run: world model learning, imagined and real returns rising together,
    entropy falling gently, a critic that explains its targets.  ``overrides`` maps a metric to
    a function of the row index that replaces it."""
    records = []
    for i in range(n):
        step = 1000 * (i + 1)
        row = {
            "env_step": step,
            "dynamics_mse": 1.0 / (1 + i),
            "world_model_loss": 2.0 / (1 + i),
            "actor_grad_norm": 0.5,
            "critic_grad_norm": 5.0,
            "world_model_grad_norm": 3.0,
        }
        if i >= 2:  # actor and critic train after a warmup
            row.update(
                mean_imagined_return=5.0 + 3 * i,
                entropy=0.69 - 0.02 * i,
                critic_loss=1.0 + 0.1 * i,
                critic_explained_variance=0.8,
                actor_loss=0.1,
            )
        for key, fn in overrides.items():
            row[key] = fn(i)
        records.append(row)
        if i % 2 == 1:
            records.append({"env_step": step, "eval_return": 10.0 + 40 * i, "eval_return_std": 1})
    return records


def modes(records, thresholds=None):
    return [f.mode for f in detect(records, thresholds)]


def test_a_healthy_stream_is_not_flagged():
    assert modes(stream()) == []


def test_flat_dynamics_error_is_world_model_not_learning():
    found = detect(stream(dynamics_mse=lambda i: 0.8 + 0.01 * (i % 2)))
    assert [f.mode for f in found] == ["world_model_not_learning"]
    assert found[0].env_step == 5000 and "dynamics_mse" in found[0].message and found[0].remedy


def test_imagined_return_rising_while_eval_stays_flat_is_exploitation():
    records = [r for r in stream() if "eval_return_std" not in r]
    for i in range(12):
        if i % 2 == 1:
            records.append({"env_step": 1000 * (i + 1), "eval_return": 12.0, "eval_return_std": 1})
    assert "policy_exploiting_model" in modes(records)


@pytest.mark.parametrize(
    "override",
    [
        {"actor_grad_norm": lambda i: None if i >= 6 else 0.5},  # became NaN
        {"critic_grad_norm": lambda i: 1e9 if i == 7 else 5.0},  # huge
        {"world_model_update_skipped": lambda i: 0.25 if i == 8 else 0.0},  # guard fired
    ],
)
def test_nan_huge_or_skipped_gradients_are_gradient_explosion(override):
    assert modes(stream(**override)) == ["gradient_explosion"]


def test_negative_explained_variance_with_growing_loss_is_critic_divergence():
    bad = stream(
        critic_explained_variance=lambda i: 0.8 if i < 6 else -3.0,
        critic_loss=lambda i: 1.0 if i < 6 else 1e3 * i,
    )
    assert modes(bad) == ["critic_divergence"]
    # Far worse than predicting the mean is divergence even without loss growth.
    assert modes(stream(critic_explained_variance=lambda i: 0.8 if i < 6 else -20.0)) == [
        "critic_divergence"
    ]
    # Loss growth alone (values rising with a good policy) is not divergence.
    assert modes(stream(critic_loss=lambda i: 10.0**i)) == []


def test_entropy_gone_before_the_return_improves_is_collapse():
    flat_eval = [r for r in stream(entropy=lambda i: 0.69 if i < 4 else 0.01)]
    for r in flat_eval:
        if "eval_return_std" in r:
            r["eval_return"] = 9.5
    assert "entropy_collapse" in modes(flat_eval)
    # The same entropy drop with a rising return is a policy that became good.
    assert "entropy_collapse" not in modes(stream(entropy=lambda i: 0.69 if i < 4 else 0.01))


def test_continuous_entropy_going_negative_in_a_learning_run_is_not_collapse():
    assert modes(stream(entropy=lambda i: 0.5 - 0.6 * i)) == []


def test_missing_metrics_and_nones_are_tolerated():
    assert detect([]) == []
    assert detect([{"env_step": 1000, "dynamics_mse": None}]) == []


def test_thresholds_from_config_change_the_outcome():
    records = stream(dynamics_mse=lambda i: 1.0 - 0.12 * i)  # > 30 % down by the fifth row
    assert "world_model_not_learning" not in modes(records)
    config = ml_collections.ConfigDict({"diagnostics": default_config_group()})
    config.diagnostics.wm_min_drop = 0.9
    strict = Thresholds.from_config(config)
    assert strict.wm_min_drop == 0.9
    assert "world_model_not_learning" in modes(records, strict)


def test_detector_reports_each_finding_once():
    detector = Detector()
    new = [f for r in stream(actor_grad_norm=lambda i: math.nan if i >= 6 else 0.5)
           for f in detector.update({k: (None if v != v else v) for k, v in r.items()})]
    assert [f.mode for f in new] == ["gradient_explosion"]
    assert [f.mode for f in detector.findings] == ["gradient_explosion"]
    assert set(MODES) >= {f.mode for f in detector.findings}


def test_one_components_gradient_owning_the_world_models_is_takeover():
    # The reward head's learned sigma at its floor: ~99 % of the clipped norm, row after row.
    records = stream(reward_predictor_grad_norm=lambda i: 2.97, dynamics_grad_norm=lambda i: 0.3)
    (finding,) = [f for f in detect(records) if f.mode == "gradient_takeover"]
    assert "reward_predictor_grad_norm is 99%" in finding.message
    assert "reward_std=fixed" in finding.remedy
    # A component with a large but not dominant share, or a short burst, is not flagged.
    assert "gradient_takeover" not in {
        f.mode for f in detect(stream(reward_predictor_grad_norm=lambda i: 2.0))
    }
    burst = stream(reward_predictor_grad_norm=lambda i: 2.97 if i in (3, 4) else 0.5)
    assert "gradient_takeover" not in {f.mode for f in detect(burst)}


def test_a_sudden_jump_of_the_reconstruction_error_is_a_world_model_spike():
    records = stream(dynamics_mse=lambda i: 20.0 if i == 8 else 1.0 / (1 + i))
    (finding,) = [f for f in detect(records) if f.mode == "world_model_loss_spike"]
    assert finding.env_step == 9000 and "jumped to 20" in finding.message
    # The usual early fall and noise are not spikes.
    noisy = stream(dynamics_mse=lambda i: (1.0 / (1 + i)) * (1.6 if i % 2 else 1.0))
    assert "world_model_loss_spike" not in {f.mode for f in detect(noisy)}


def acrobot_like(value, spread, real):
    """Reward -1 every imagined step, the critic's values ``value(i) ± spread(i)`` and the
    eval return ``real(i)`` (γ = 0.99: the discount limit is -100)."""
    records = stream(
        imagined_reward_mean=lambda i: -1.0,
        critic_value_mean=value,
        critic_value_std=spread,
        mean_imagined_return=lambda i: -14.0,
    )
    for r in records:
        if "eval_return_std" in r:
            r["eval_return"] = real(r["env_step"] // 1000 - 1)
    return records


def test_a_critic_stuck_at_the_discount_limit_with_no_real_progress_is_pinned():
    # The Acrobot run of issue 19: every value at -1/(1-γ), the real return stuck at -500.
    records = acrobot_like(lambda i: -99.0, lambda i: 0.5, lambda i: -500.0)
    (finding,) = [f for f in detect(records) if f.mode == "critic_pinned"]
    assert finding.env_step == 6000  # the fourth pinned critic row (critic rows from 3000)
    assert "-100" in finding.message and "final_real_mix" in finding.remedy
    # The run's own γ sets the limit: at γ = 0.999 (limit -1000) -99 is not pinned.
    assert "critic_pinned" not in modes(records, Thresholds(gamma=0.999))
    config = ml_collections.ConfigDict({"imagination": {"gamma": 0.999}})
    assert Thresholds.from_config(config).gamma == 0.999
    assert "gamma" not in default_config_group()


@pytest.mark.parametrize(
    "value, spread, real",
    [
        (lambda i: -60.0, lambda i: 0.5, lambda i: -500.0),  # values below the limit
        (lambda i: -99.0, lambda i: 20.0, lambda i: -500.0),  # states told apart
        (lambda i: -99.0, lambda i: 0.5, lambda i: -500.0 + 80 * i),  # the policy improves
        (lambda i: -99.0 if i in (4, 5) else -50.0, lambda i: 0.5, lambda i: -500.0),  # brief
    ],
    ids=["below_limit", "values_spread", "real_return_rising", "brief"],
)
def test_a_critic_near_the_limit_that_still_discriminates_or_a_learning_run_is_not_pinned(
    value, spread, real
):
    assert "critic_pinned" not in modes(acrobot_like(value, spread, real))


def test_entropy_collapse_is_seen_from_the_early_entropy_not_only_the_first_row():
    # Acrobot (3 actions) in issue 19: entropy 0.93 -> 0.099 with the return back at -500; the
    # first row's entropy was already below its early peak.  Seen while it is still low.
    records = stream(entropy=lambda i: {2: 0.6, 3: 0.93}.get(i, 0.099))
    for r in records:
        if "eval_return_std" in r:
            r["eval_return"] = -500.0
    (finding,) = [f for f in detect(records) if f.mode == "entropy_collapse"]
    assert finding.env_step <= 10000 and "0.93" in finding.message


def _cartpole_rows(entropies, evals):
    """Training rows every 1k env steps from 6k (the actor starts at 5k) with the given
    entropies, and evaluations every 2.5k from 2.5k."""
    records = [
        {"env_step": 6000 + 1000 * i, "entropy": e, "mean_imagined_return": 8.0 + 3 * i,
         "dynamics_mse": 0.1, "world_model_loss": 0.5}
        for i, e in enumerate(entropies)
    ]
    records += [
        {"env_step": 2500 * (i + 1), "eval_return": r, "eval_return_std": 1.0}
        for i, r in enumerate(evals)
    ]
    return records


def test_a_policy_stuck_on_one_action_is_flagged_as_entropy_collapse_before_the_run_ends():
    # CartPole, 2026-12-05 (half train ratio, seed 3): the entropy fell from 0.59 to 0.05 by 10k
    # and the deterministic policy scored ~9.5 (one action) at every evaluation to the end at
    # 12.5k; the detector with 4 rows of patience said nothing.
    stuck = _cartpole_rows(
        [0.593, 0.365, 0.243, 0.111, 0.0639, 0.0524, 0.0522], [9.1, 9.6, 9.7, 9.5, 9.6]
    )
    (finding,) = [f for f in detect(stuck) if f.mode == "entropy_collapse"]
    assert finding.env_step == 11000
    # The same entropies in a run whose return rose (the README config's seed 0 went 0.69 -> 0.27
    # while its evaluations reached 468) are a policy becoming good.
    learning = _cartpole_rows(
        [0.685, 0.621, 0.581, 0.471, 0.37, 0.328, 0.3], [11.9, 10.3, 278.4, 468.3, 414.4]
    )
    assert "entropy_collapse" not in modes(learning)
    assert "entropy_collapse" not in modes(
        _cartpole_rows([0.593, 0.365, 0.243, 0.111, 0.0639, 0.0524, 0.0522],
                       [9.1, 9.6, 140.0, 300.0, 420.0])
    )
