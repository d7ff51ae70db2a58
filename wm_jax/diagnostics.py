"""The seeds' five failure signatures, detected from the metric stream (``metrics.jsonl`` rows).

Each signature compares robust summaries (medians over ``window`` log rows) of the run so far:

1. ``world_model_not_learning`` — after ``wm_check_rows`` training rows, the dynamics error
   (``dynamics_mse``; for an RSSM, whose KL is floored by free bits, the ``decoder_loss``; else
   ``dynamics_loss``) has not fallen by ``wm_min_drop`` (a fraction) from
   its first logged value.  Remedy: check the world-model learning rate and that the states carry
   information (state_std not ~0), lower the dynamics loss scale's competitors, train the world
   model longer before the actor (longer warmup).
2. ``policy_exploiting_model`` — since actor training began, the imagined return rose by more than
   ``exploit_min_imagined_rise`` (relative) while the real return (eval, else train) rose by less
   than ``exploit_max_real_rise`` (relative).  Remedy: improve the model where the policy goes
   (more world-model updates, the multi-step loss / sequence mode, an ensemble), shorten the
   imagination horizon, add real-data critic targets.
3. ``gradient_explosion`` — any skipped non-finite update (``*_update_skipped`` or
   ``*_nonfinite_total`` > 0), a loss or gradient norm that was finite and became NaN/Inf
   (``None`` in the jsonl), or a gradient norm above ``grad_norm_max``.  Remedy: gradient clipping
   (``*.grad_clip``), a lower learning rate, check observations/rewards for NaN and their scale.
4. ``critic_divergence`` — after ``critic_check_rows`` critic rows the critic explains less than
   ``critic_min_explained_variance`` of its targets' variance (median over the last window) while
   its loss grew ``critic_loss_growth``-fold from its first window, or its explained variance is
   below ``critic_severe_explained_variance`` outright (a healthy CartPole critic dips to about
   −3 while the returns grow fastest; a critic with lr 1.0 reaches −28).  Remedy: lower the critic
   learning rate, a slow target critic (``critic.target_update_rate``), clip its gradients,
   return normalisation / symlog critic (``critic.bins``).
5. ``entropy_collapse`` — the policy entropy fell below ``entropy_min_fraction`` of its first
   value (continuous policies, whose single-sample entropy can be negative: by more than
   ``entropy_max_drop`` nats) and stayed there for ``entropy_patience`` rows while the real return
   has not improved by ``entropy_min_real_rise`` (relative): the policy became deterministic
   before it became good.  Remedy: a larger entropy
   coefficient, a lower actor learning rate, uniform mixing (``actor.unimix``), return
   normalisation so the entropy bonus keeps its weight.

Two more signatures came from runs that swung (issue 19):

6. ``gradient_takeover`` — one world-model component's gradient norm is at least
   ``takeover_share`` of the whole world model's (global norms, so 0.95 is ~90 % of the squared
   norm) for ``takeover_rows`` log rows in a row: with one clip for the whole model, that
   component's loss starves the others (a learned reward σ at its floor on a sparse or constant
   reward is the usual cause).  Remedy: ``model.reward_std=fixed``, down-weight that loss, or a
   larger ``world_model.grad_clip``.
7. ``world_model_loss_spike`` — once the world model has ``spike_min_rows`` rows, a row whose
   reconstruction error (the key of signature 1) is ``spike_factor`` times the median of the
   ``window`` rows before it: the model was knocked off what it had learned (a burst of rare
   data, a learning-rate or clipping problem).  Remedy: lower ``world_model.lr``, clip its
   gradients, check the replay for rare transitions.

8. ``critic_pinned`` — for ``pinned_rows`` log rows in a row the critic's mean value sits at
   ``pinned_fraction`` or more of the discount limit ±|r̄|/(1−γ) (r̄ the imagined reward mean,
   γ the run's ``imagination.gamma``) with a spread under ``pinned_std_fraction`` of it, while the
   real return has not risen by ``pinned_min_real_rise`` (relative): every state looks the same
   (an Acrobot critic at −1/(1−γ) believes no policy ever reaches the goal), so the actor gets no
   advantage signal.  Remedy: real-data critic targets, a slower critic, more exploration.

Thresholds are config values (``config.diagnostics``).  The detector is a pure function of the
records; :class:`Detector` wraps it for the training loop and logs new findings as warnings.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import ml_collections
import numpy as np
from absl import logging

MODES = (
    "world_model_not_learning",
    "policy_exploiting_model",
    "gradient_explosion",
    "critic_divergence",
    "entropy_collapse",
    "gradient_takeover",
    "world_model_loss_spike",
    "critic_pinned",
)

REMEDIES = {
    "world_model_not_learning": (
        "check world_model.lr (0 or far too small?) and that states are not collapsed "
        "(state_std ~ 0); warm the world model up longer before training the actor."
    ),
    "policy_exploiting_model": (
        "the model is wrong where the policy goes: train the world model more (more updates, "
        "sequence_mode with the multi-step loss, an ensemble), shorten imagination.horizon, keep "
        "real-data critic targets (schedule.final_real_mix)."
    ),
    "gradient_explosion": (
        "clip gradients (<group>.grad_clip), lower the learning rate, check observations and "
        "rewards for NaN/Inf and for scale (obs_norm, reward_scale)."
    ),
    "critic_divergence": (
        "lower critic.lr, use a slow target critic (critic.target_update_rate ~0.02), clip the "
        "critic's gradients, normalise returns or use the symlog critic (critic.bins=255)."
    ),
    "entropy_collapse": (
        "raise actor.entropy_coef, lower actor.lr, mix in a uniform policy (actor.unimix), "
        "normalise returns (actor.return_norm) so the entropy bonus keeps its weight."
    ),
    "gradient_takeover": (
        "one loss owns the world model's clipped gradient: for the reward predictor use "
        "model.reward_std=fixed (sparse or constant rewards), else lower that loss's scale "
        "(world_model.<name>_scale) or raise world_model.grad_clip."
    ),
    "world_model_loss_spike": (
        "lower world_model.lr, clip its gradients (world_model.grad_clip), and look for rare "
        "transitions (terminations, reward bursts) the model meets for the first time."
    ),
    "critic_pinned": (
        "anchor the critic on real returns (schedule.final_real_mix > 0), slow it down "
        "(critic.lr, critic.target_update_rate), keep the policy exploring (actor.entropy_coef, "
        "actor.unimix) so that some imagined futures differ."
    ),
}

LOSS_KEYS = (
    "world_model_loss",
    "dynamics_loss",
    "reward_loss",
    "continue_loss",
    "decoder_loss",
    "actor_loss",
    "critic_loss",
)


@dataclasses.dataclass(frozen=True)
class Thresholds:
    window: int = 3  # log rows per median
    wm_check_rows: int = 5  # training rows before the world model is judged
    wm_min_drop: float = 0.3  # dynamics error must fall to <= (1 - this) of its first value
    exploit_min_rows: int = 6  # actor rows before exploitation is judged
    exploit_min_imagined_rise: float = 1.0  # imagined return at least doubled ...
    exploit_max_real_rise: float = 0.25  # ... while the real return rose < 25 %
    grad_norm_max: float = 1e6
    critic_check_rows: int = 4
    critic_min_explained_variance: float = 0.0
    critic_loss_growth: float = 10.0
    critic_severe_explained_variance: float = -8.0  # this bad needs no loss growth
    # Of the larger of the first logged entropy and the largest in the first window rows.
    entropy_min_fraction: float = 0.25
    entropy_max_drop: float = 3.0  # nats, for continuous (possibly negative) entropies
    # Log rows the collapse must last with no real improvement.  2, not 4: on CartPole runs
    # stuck at the one-action policy (eval ~9) 4 rows fired only after the run's end (BUILD_NOTES,
    # "Detector, 2026-12-05 night"); 2 flags them 2-3k env steps after the fall, and no run
    # that went on to learn.
    entropy_patience: int = 2
    entropy_min_real_rise: float = 0.5  # real return up by half = "not premature"
    takeover_share: float = 0.95  # a component's / the world model's gradient norm
    takeover_rows: int = 3  # log rows in a row
    spike_factor: float = 5.0  # reconstruction error vs the median of the rows before
    spike_min_rows: int = 4  # world-model rows before spikes are judged
    pinned_fraction: float = 0.9  # |critic_value_mean| vs the discount limit |r̄|/(1-γ)
    pinned_std_fraction: float = 0.05  # critic_value_std vs |critic_value_mean|
    pinned_rows: int = 4  # log rows in a row
    pinned_min_real_rise: float = 0.5  # real return up by half = the critic is not the problem
    # The run's imagination.gamma, filled in by from_config (not a diagnostics setting).
    gamma: float = 0.99

    @classmethod
    def from_config(cls, config) -> Thresholds:
        """From a run's config (a ConfigDict or its JSON dict): ``diagnostics`` and the
        discount ``imagination.gamma``."""
        group = config.get("diagnostics") if config is not None else None
        names = {f.name for f in dataclasses.fields(cls)} - {"gamma"}
        kwargs = {} if group is None else {k: group[k] for k in group.keys() if k in names}
        imagination = config.get("imagination") if config is not None else None
        if imagination is not None and imagination.get("gamma") is not None:
            kwargs["gamma"] = float(imagination["gamma"])
        return cls(**kwargs)


def default_config_group() -> ml_collections.ConfigDict:
    fields = dataclasses.asdict(Thresholds())
    del fields["gamma"]  # the run's imagination.gamma
    return ml_collections.ConfigDict(fields)


@dataclasses.dataclass
class Finding:
    mode: str
    env_step: int
    message: str
    remedy: str

    def __str__(self) -> str:
        return f"[{self.mode} @ env step {self.env_step}] {self.message} Remedy: {self.remedy}"


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for r in rows:
        if _finite(r.get(key)):
            steps.append(r["env_step"])
            values.append(float(r[key]))
    return steps, values


def _rel_rise(start: float, end: float) -> float:
    return (end - start) / max(abs(start), 1e-8)


def _real_returns(records: list[dict]) -> tuple[list[int], list[float]]:
    evals = [r for r in records if "eval_return_std" in r or "train_return" not in r]
    steps, values = _series(evals, "eval_return")
    return (steps, values) if len(values) >= 2 else _series(records, "train_return")


def _median_at(steps: list[int], values: list[float], lo: int, hi: int) -> float | None:
    vals = [v for s, v in zip(steps, values, strict=True) if lo <= s <= hi]
    return float(np.median(vals)) if vals else None


def _world_model(rows, t: Thresholds) -> Finding | None:
    # An RSSM's dynamics loss is a KL floored by free bits, which may never fall much even
    # when the model learns well; its reconstruction error is the telling curve.
    key = _reconstruction_key(rows)
    steps, vals = _series(rows, key)
    for i in range(max(t.wm_check_rows, t.window) - 1, len(vals)):
        recent = float(np.median(vals[i - t.window + 1 : i + 1]))
        if i + 1 >= t.wm_check_rows and recent > (1.0 - t.wm_min_drop) * vals[0]:
            return Finding(
                "world_model_not_learning",
                steps[i],
                f"{key} is {recent:.3g} after {i + 1} log rows, from {vals[0]:.3g} at the start "
                f"(needs a {t.wm_min_drop:.0%} drop).",
                REMEDIES["world_model_not_learning"],
            )
        if recent <= (1.0 - t.wm_min_drop) * vals[0]:
            return None  # it learned; a later plateau is not this failure
    return None


def _reconstruction_key(rows) -> str:
    def logged(name):
        return any(_finite(r.get(name)) for r in rows)

    if logged("dynamics_mse"):
        return "dynamics_mse"
    if logged("kl_dynamics") and logged("decoder_loss"):
        return "decoder_loss"
    return "dynamics_loss"


def _takeover(rows, t: Thresholds) -> Finding | None:
    from wm_jax.networks.world_model import COMPONENTS

    streak: dict[str, int] = {}
    for r in rows:
        total = r.get("world_model_grad_norm")
        if not _finite(total) or total <= 0:
            continue
        for name in COMPONENTS:
            part = r.get(f"{name}_grad_norm")
            share = part / total if _finite(part) else 0.0
            streak[name] = streak.get(name, 0) + 1 if share >= t.takeover_share else 0
            if streak[name] >= t.takeover_rows:
                return Finding(
                    "gradient_takeover",
                    r["env_step"],
                    f"{name}_grad_norm is {share:.0%} of world_model_grad_norm ({part:.3g} of "
                    f"{total:.3g}) for {streak[name]} log rows: its loss owns the clipped "
                    "update and the other components barely learn.",
                    REMEDIES["gradient_takeover"],
                )
    return None


def _spike(rows, t: Thresholds) -> Finding | None:
    key = _reconstruction_key(rows)
    steps, vals = _series(rows, key)
    for i in range(max(t.spike_min_rows, t.window), len(vals)):
        before = float(np.median(vals[i - t.window : i]))
        if before > 0 and vals[i] > t.spike_factor * before:
            return Finding(
                "world_model_loss_spike",
                steps[i],
                f"{key} jumped to {vals[i]:.3g} from a median of {before:.3g} over the "
                f"{t.window} log rows before.",
                REMEDIES["world_model_loss_spike"],
            )
    return None


def _exploit(rows, records, t: Thresholds) -> Finding | None:
    steps, imag = _series(rows, "mean_imagined_return")
    real_steps, real = _real_returns(records)
    if len(imag) < t.exploit_min_rows or len(real) < 2:
        return None
    start = steps[0]
    imag0 = float(np.median(imag[: t.window]))
    real_before = [v for s, v in zip(real_steps, real, strict=True) if s <= start]
    real0 = real_before[-1] if real_before else real[0]
    for i in range(t.exploit_min_rows - 1, len(imag)):
        now = steps[i]
        imag_now = float(np.median(imag[i - t.window + 1 : i + 1]))
        real_now = _median_at(real_steps, real, now - 3 * (now - steps[i - 1]), now)
        if real_now is None:
            continue
        if (
            _rel_rise(imag0, imag_now) > t.exploit_min_imagined_rise
            and _rel_rise(real0, real_now) < t.exploit_max_real_rise
        ):
            return Finding(
                "policy_exploiting_model",
                now,
                f"imagined return rose {imag0:.3g} -> {imag_now:.3g} since actor training began, "
                f"the real return only {real0:.3g} -> {real_now:.3g}.",
                REMEDIES["policy_exploiting_model"],
            )
    return None


def _explosion(rows, t: Thresholds) -> Finding | None:
    seen_finite: set[str] = set()
    for r in rows:
        for key, value in r.items():
            if key.endswith("_update_skipped") or key.endswith("_nonfinite_total"):
                if _finite(value) and value > 0:
                    return Finding(
                        "gradient_explosion",
                        r["env_step"],
                        f"{key} = {value:.3g}: non-finite losses or gradients, updates skipped.",
                        REMEDIES["gradient_explosion"],
                    )
            if not (key in LOSS_KEYS or key.endswith("_grad_norm")):
                continue
            if value is None and key in seen_finite:
                return Finding(
                    "gradient_explosion",
                    r["env_step"],
                    f"{key} became NaN/Inf.",
                    REMEDIES["gradient_explosion"],
                )
            if _finite(value):
                seen_finite.add(key)
                if key.endswith("_grad_norm") and value > t.grad_norm_max:
                    return Finding(
                        "gradient_explosion",
                        r["env_step"],
                        f"{key} = {value:.3g} > {t.grad_norm_max:.3g}.",
                        REMEDIES["gradient_explosion"],
                    )
    return None


def _critic(rows, t: Thresholds) -> Finding | None:
    steps, ev = _series(rows, "critic_explained_variance")
    _, loss = _series(rows, "critic_loss")
    n = min(len(ev), len(loss))
    if n < max(t.critic_check_rows, t.window + 1):
        return None
    first_loss = float(np.median(loss[: t.window]))
    for i in range(max(t.critic_check_rows, t.window) - 1, n):
        ev_now = float(np.median(ev[i - t.window + 1 : i + 1]))
        loss_now = float(np.median(loss[i - t.window + 1 : i + 1]))
        grew = loss_now > t.critic_loss_growth * max(first_loss, 1e-8)
        if ev_now < t.critic_severe_explained_variance or (
            ev_now < t.critic_min_explained_variance and grew
        ):
            return Finding(
                "critic_divergence",
                steps[i],
                f"critic explained variance {ev_now:.3g} (< {t.critic_min_explained_variance}) "
                f"while its loss grew {first_loss:.3g} -> {loss_now:.3g}.",
                REMEDIES["critic_divergence"],
            )
    return None


def _entropy(rows, records, t: Thresholds) -> Finding | None:
    steps, ent = _series(rows, "entropy")
    real_steps, real = _real_returns(records)
    if len(ent) < t.window + t.entropy_patience or len(real) < 1:
        return None
    # The first window's largest value: a policy may already be sharpening at the first log row.
    ent0 = max(ent[0], max(ent[: t.window]))
    # Discrete entropies are >= 0: compare fractions.  A tanh-squashed continuous policy's
    # single-sample estimate can go far below 0 in a healthy run: compare the drop in nats.
    continuous = ent0 <= 0 or min(ent) < 0
    real_before = [v for s, v in zip(real_steps, real, strict=True) if s <= steps[0]]
    real0 = real_before[-1] if real_before else real[0]
    streak = 0
    for i in range(t.window - 1, len(ent)):
        now = float(np.median(ent[i - t.window + 1 : i + 1]))
        collapsed = (
            ent0 - now > t.entropy_max_drop if continuous else now < t.entropy_min_fraction * ent0
        )
        streak = streak + 1 if collapsed else 0
        recent = [v for s, v in zip(real_steps, real, strict=True) if s <= steps[i]][-2:]
        if streak < t.entropy_patience or not recent:
            continue
        real_now = float(np.median(recent))
        if _rel_rise(real0, real_now) < t.entropy_min_real_rise:
            return Finding(
                "entropy_collapse",
                steps[i],
                f"policy entropy fell {ent0:.3g} -> {now:.3g} and stayed there for "
                f"{streak} log rows while the real return went {real0:.3g} -> {real_now:.3g}: "
                "deterministic before it is good.",
                REMEDIES["entropy_collapse"],
            )
    return None


def _critic_pinned(rows, records, t: Thresholds) -> Finding | None:
    real_steps, real = _real_returns(records)
    if not real or not rows or t.gamma >= 1.0:
        return None
    first = rows[0]["env_step"]
    real_before = [v for s, v in zip(real_steps, real, strict=True) if s <= first]
    real0 = real_before[-1] if real_before else real[0]
    streak = 0
    for r in rows:
        value, spread = r.get("critic_value_mean"), r.get("critic_value_std")
        reward = r.get("imagined_reward_mean")
        if not (_finite(value) and _finite(spread) and _finite(reward)):
            continue
        limit = abs(reward) / (1.0 - t.gamma)
        pinned = (
            limit > 0
            and abs(value) >= t.pinned_fraction * limit
            and spread <= t.pinned_std_fraction * abs(value)
        )
        streak = streak + 1 if pinned else 0
        recent = [v for s, v in zip(real_steps, real, strict=True) if s <= r["env_step"]][-2:]
        if streak < t.pinned_rows or not recent:
            continue
        real_now = float(np.median(recent))
        if _rel_rise(real0, real_now) < t.pinned_min_real_rise:
            sign = "-" if value < 0 else "+"
            return Finding(
                "critic_pinned",
                r["env_step"],
                f"critic values {value:.3g} ± {spread:.3g} sit at the discount limit "
                f"{sign}{limit:.3g} = {sign}|r̄|/(1-γ) for {streak} log rows while the real return "
                f"went {real0:.3g} -> {real_now:.3g}: every state looks the same to the critic.",
                REMEDIES["critic_pinned"],
            )
    return None


def detect(records: list[dict[str, Any]], thresholds: Thresholds | None = None) -> list[Finding]:
    """All failure signatures in ``records`` (``metrics.jsonl`` rows), at most one per mode, each
    at the first env step it is seen.  Missing metrics and ``None`` values are tolerated."""
    t = thresholds or Thresholds()
    records = sorted(records, key=lambda r: r.get("env_step", 0))
    rows = [r for r in records if "eval_return_std" not in r]  # training rows
    actor_rows = [r for r in rows if "mean_imagined_return" in r]
    critic_rows = [r for r in rows if "critic_loss" in r]
    found = [
        _world_model(rows, t),
        _exploit(actor_rows, records, t),
        _explosion(rows, t),
        _critic(critic_rows, t),
        _entropy(actor_rows, records, t),
        _takeover(rows, t),
        _spike(rows, t),
        _critic_pinned(critic_rows, records, t),
    ]
    return sorted((f for f in found if f is not None), key=lambda f: f.env_step)


class Detector:
    """Watches the metric stream during training; logs each new finding once as a warning."""

    def __init__(self, thresholds: Thresholds | None = None):
        self.thresholds = thresholds or Thresholds()
        self._records: list[dict[str, Any]] = []
        self._found: dict[str, Finding] = {}

    @property
    def findings(self) -> list[Finding]:
        return sorted(self._found.values(), key=lambda f: f.env_step)

    def update(self, record: dict[str, Any]) -> list[Finding]:
        self._records.append(dict(record))
        new = [f for f in detect(self._records, self.thresholds) if f.mode not in self._found]
        for finding in new:
            self._found[finding.mode] = finding
            logging.warning("failure signature: %s", finding)
        return new
