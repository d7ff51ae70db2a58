"""Flax modules only: one file per seed component, and the registries that build them by name.

Adding a component is one module plus one ``register_*`` call; the update steps never change.
A module outside the package that registers components is named in ``config.imports`` and is
imported when the networks are built (docs/custom_dynamics.md walks through one).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn

from wm_jax.config import ConfigError
from wm_jax.networks.decoders import CNNDecoder, MLPDecoder
from wm_jax.networks.dynamics import EnsembleDynamics, MLPDynamics
from wm_jax.networks.encoders import CNNEncoder, MLPEncoder
from wm_jax.networks.heads import ContinuePredictor, PolicyHead, RewardPredictor, ValueFunction
from wm_jax.networks.representation import AutoencoderRepresentation, VAERepresentation
from wm_jax.networks.rssm import RSSMCore, RSSMPosterior
from wm_jax.networks.transformer import TransformerDynamics
from wm_jax.networks.world_model import COMPONENTS, WorldModel

Builder = Callable[..., nn.Module]

# Each builder takes (model_config, env_spec) and returns an unbound flax module.
ENCODERS: dict[str, Builder] = {}
REPRESENTATIONS: dict[str, Builder] = {}
DYNAMICS: dict[str, Builder] = {}
DECODERS: dict[str, Builder] = {}


def _register(table: dict[str, Builder], kind: str, name: str, builder: Builder) -> None:
    if name in table:
        owner = getattr(table[name], "__module__", "?")
        raise ValueError(
            f"{kind} {name!r} is already registered (by {owner}): pick another name; a module "
            "imported under two names (e.g. run as a script and imported) registers twice"
        )
    table[name] = builder


def register_encoder(name: str, builder: Builder) -> None:
    _register(ENCODERS, "encoder", name, builder)


def register_representation(name: str, builder: Builder) -> None:
    _register(REPRESENTATIONS, "representation", name, builder)


def register_dynamics(name: str, builder: Builder) -> None:
    _register(DYNAMICS, "dynamics", name, builder)


def register_decoder(name: str, builder: Builder) -> None:
    _register(DECODERS, "decoder", name, builder)


def _hidden(m) -> tuple[int, ...]:
    return (m.hidden_dim,) * m.hidden_layers


def _common(m) -> dict[str, Any]:
    # MLPs take the normalisation's name ("layer" | "rms") or False; the CNNs a bool (LayerNorm).
    return dict(
        activation=m.activation, layer_norm=m.get("norm", "layer") if m.layer_norm else False
    )


def _dynamics_kwargs(m) -> dict[str, Any]:
    return dict(
        state_dim=m.state_dim,
        hidden=_hidden(m),
        residual=m.dynamics_residual,
        std_mode=m.dynamics_std,
        fixed_std=m.dynamics_fixed_std,
        **_common(m),
    )


register_encoder(
    "mlp",
    lambda m, spec: MLPEncoder(
        m.feature_dim, (m.hidden_dim,), obs_rank=len(spec.obs_shape), **_common(m)
    ),
)
register_encoder(
    "cnn",
    lambda m, spec: CNNEncoder(
        m.feature_dim, m.cnn_depth, m.get("cnn_layers", 4), layer_norm=m.layer_norm
    ),
)
register_representation(
    "autoencoder",
    lambda m, spec: AutoencoderRepresentation(
        m.state_dim, m.feature_dim, (m.hidden_dim,), state_norm=m.state_norm, **_common(m)
    ),
)
register_representation(
    "vae",
    lambda m, spec: VAERepresentation(m.state_dim, m.feature_dim, (m.hidden_dim,), **_common(m)),
)
register_dynamics("mlp", lambda m, spec: MLPDynamics(**_dynamics_kwargs(m)))
register_dynamics(
    "transformer",
    lambda m, spec: TransformerDynamics(
        state_dim=m.state_dim,
        embed_dim=m.hidden_dim,
        num_layers=m.transformer_layers,
        num_heads=m.transformer_heads,
        context_length=m.context_length,
        residual=m.dynamics_residual,
        std_mode=m.dynamics_std,
        fixed_std=m.dynamics_fixed_std,
    ),
)
register_dynamics(
    "ensemble",
    lambda m, spec: EnsembleDynamics(num_members=m.ensemble_size, **_dynamics_kwargs(m)),
)
# The RSSM is a representation + dynamics pair sharing one recurrent state: select both.
register_representation(
    "rssm",
    lambda m, spec: RSSMPosterior(
        m.rssm_stoch, m.rssm_classes, (m.hidden_dim,), unimix=m.rssm_unimix, **_common(m)
    ),
)
register_dynamics(
    "rssm",
    lambda m, spec: RSSMCore(
        m.rssm_deter,
        m.rssm_stoch,
        m.rssm_classes,
        (m.hidden_dim,),
        unimix=m.rssm_unimix,
        **_common(m),
    ),
)
register_decoder("mlp", lambda m, spec: MLPDecoder(tuple(spec.obs_shape), _hidden(m), **_common(m)))
register_decoder(
    "cnn",
    lambda m, spec: CNNDecoder(
        tuple(spec.obs_shape), m.cnn_depth, m.get("cnn_layers", 4), layer_norm=m.layer_norm
    ),
)


class Networks(NamedTuple):
    """The three parameter-owning modules: world model, actor (policy head), critic."""

    world_model: WorldModel
    actor: PolicyHead
    critic: ValueFunction


def state_size(config) -> int:
    """Size of the state vector the heads read: ``deter + stoch·classes`` for the RSSM,
    ``model.state_dim`` otherwise."""
    m = config.model
    if m.dynamics == "rssm":
        return m.rssm_deter + m.rssm_stoch * m.rssm_classes
    return m.state_dim


def resolve_auto(name: str, spec) -> str:
    """'auto' picks the CNN for image observations (rank 3) and the MLP otherwise."""
    if name != "auto":
        return name
    return "cnn" if len(spec.obs_shape) == 3 else "mlp"


def _lookup(table: dict[str, Builder], kind: str, name: str) -> Builder:
    try:
        return table[name]
    except KeyError:
        raise ConfigError(
            f"config.model.{kind}={name!r} is not registered; choose one of {sorted(table)}, "
            f"or register yours with wm_jax.networks.register_{kind}() in a module named in "
            "--config.imports"
        ) from None


def import_modules(names: str) -> None:
    """Imports the comma-separated modules of ``config.imports``, whose import registers their
    components.  Done where the networks are built, so the CLI, ``load_policy`` (the run's
    config.json names them) and library callers all see the same registries."""
    for name in (n.strip() for n in names.split(",")):
        if not name:
            continue
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            raise ConfigError(
                f"config.imports: cannot import {name!r} ({err}); it must be on sys.path: an "
                "installed package, or run `python -m wm_jax.train` from the directory that "
                "holds it (or add that directory to PYTHONPATH)"
            ) from err


def build_networks(config, spec) -> Networks:
    """Builds the modules named in ``config.model`` for an environment described by ``spec``
    (anything with ``obs_shape``, ``action_dim`` and ``discrete``), after importing the modules
    of ``config.imports``."""
    import_modules(config.get("imports", ""))
    m = config.model
    world_model = WorldModel(
        encoder=_lookup(ENCODERS, "encoder", resolve_auto(m.encoder, spec))(m, spec),
        representation=_lookup(REPRESENTATIONS, "representation", m.representation)(m, spec),
        dynamics=_lookup(DYNAMICS, "dynamics", m.dynamics)(m, spec),
        reward_predictor=RewardPredictor(
            _hidden(m),
            **_common(m),
            fixed_std=m.reward_fixed_std if m.reward_std == "fixed" else None,
        ),
        continue_predictor=ContinuePredictor(_hidden(m), **_common(m)),
        decoder=_lookup(DECODERS, "decoder", resolve_auto(m.decoder, spec))(m, spec),
    )
    actor = PolicyHead(
        spec.action_dim,
        spec.discrete,
        _hidden(m),
        unimix=config.actor.unimix,
        min_std=config.actor.min_std,
        max_std=config.actor.max_std,
        **_common(m),
    )
    critic = ValueFunction(_hidden(m), bins=config.critic.bins, **_common(m))
    return Networks(world_model, actor, critic)


__all__ = [
    "COMPONENTS",
    "CNNDecoder",
    "CNNEncoder",
    "AutoencoderRepresentation",
    "ContinuePredictor",
    "EnsembleDynamics",
    "MLPDecoder",
    "MLPDynamics",
    "MLPEncoder",
    "Networks",
    "PolicyHead",
    "RSSMCore",
    "RSSMPosterior",
    "RewardPredictor",
    "TransformerDynamics",
    "VAERepresentation",
    "ValueFunction",
    "WorldModel",
    "build_networks",
    "import_modules",
    "register_decoder",
    "register_dynamics",
    "register_encoder",
    "register_representation",
    "state_size",
]
