"""Building blocks shared by every component."""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS = {
    "elu": nn.elu,
    "silu": nn.silu,
    "relu": nn.relu,
    "tanh": jnp.tanh,
    "gelu": nn.gelu,
}


def get_activation(name: str):
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}"
        ) from None


PRECISIONS = ("float32", "bfloat16", "auto")
_MATMUL_DTYPE: contextvars.ContextVar = contextvars.ContextVar("wm_jax_matmul_dtype", default=None)
# CPU flags (``/proc/cpuinfo``) of units that multiply bf16 natively; without them XLA emulates
# bf16 dots and "bfloat16" is slower than "float32".
_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.cache
def native_bf16() -> str | None:
    """Why the default JAX backend multiplies bf16 natively (a short reason), or None.

    GPUs count from compute capability 8.0 (Ampere: bf16 tensor cores), TPUs always, CPUs with
    AMX-BF16 or AVX512-BF16 (Linux; elsewhere the CPU is assumed to have neither)."""
    backend = jax.default_backend()
    if backend == "tpu":
        return "TPU"
    if backend in ("gpu", "cuda", "rocm"):
        device = jax.devices()[0]
        capability = getattr(device, "compute_capability", None)
        if capability is None:  # ROCm and others: bf16 matrix cores on every supported card
            return f"GPU {device.device_kind}"
        if float(capability) >= 8.0:
            return f"GPU {device.device_kind} (compute capability {capability})"
        return None
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    found = [flag for flag in _BF16_CPU_FLAGS if flag in flags]
                    return f"CPU with {', '.join(found)}" if found else None
    except OSError:
        pass
    return None


def resolve_precision(precision: str) -> str:
    """``config.precision`` as the matmul precision used: "auto" is "bfloat16" where the
    backend multiplies bf16 natively (:func:`native_bf16`) and "float32" elsewhere."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if precision == "auto":
        return "bfloat16" if native_bf16() else "float32"
    return precision


def describe_precision(precision: str) -> str:
    """The matmul precision ``precision`` resolves to here, with why for "auto" (for logs and
    the report)."""
    resolved = resolve_precision(precision)
    if precision != "auto":
        return resolved
    return f"{resolved} (auto: {native_bf16() or 'no native bf16 matmul units'})"


@contextlib.contextmanager
def matmul_precision(precision: str) -> Iterator[None]:
    """``config.precision`` for the :class:`Dense` layers of every :class:`MLP` traced inside:
    "bfloat16" multiplies bf16 copies of inputs and kernels with f32 accumulation and output
    (``preferred_element_type``); parameters, biases, normalisation, losses and optimiser
    states stay f32.  "float32" (the default outside any block) is plain f32; "auto" is one of
    the two by :func:`resolve_precision`.  Read at trace time, so it wraps the function being
    jitted (:mod:`wm_jax.update` wraps its steps)."""
    resolved = resolve_precision(precision)
    token = _MATMUL_DTYPE.set(jnp.bfloat16 if resolved == "bfloat16" else None)
    try:
        yield
    finally:
        _MATMUL_DTYPE.reset(token)


@jax.custom_vjp
def bf16_matmul(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``x @ kernel`` (``[..., K] @ [K, N]``) with bf16 inputs and f32 accumulation and output,
    in the backward pass too: both gradient matmuls take the bf16 cotangent and the saved bf16
    operands (autodiff alone would run them in f32, two thirds of the FLOPs)."""
    return _bf16_matmul_fwd(x, kernel)[0]


def _bf16_dot(a, b, contract):
    return jax.lax.dot_general(a, b, (contract, ((), ())), preferred_element_type=jnp.float32)


def _bf16_matmul_fwd(x, kernel):
    xb, kb = x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16)
    return _bf16_dot(xb, kb, ((x.ndim - 1,), (0,))), (xb, kb, jnp.zeros((), x.dtype))


def _bf16_matmul_bwd(residuals, g):
    xb, kb, x_like = residuals
    gb = g.astype(jnp.bfloat16)
    dx = _bf16_dot(gb, kb, ((g.ndim - 1,), (1,))).astype(x_like.dtype)
    lead = tuple(range(g.ndim - 1))
    dk = _bf16_dot(xb, gb, (lead, lead))
    return dx, dk


bf16_matmul.defvjp(_bf16_matmul_fwd, _bf16_matmul_bwd)


class Dense(nn.Module):
    """``flax.linen.Dense`` (same parameters and names) whose matmul follows
    :func:`matmul_precision`."""

    features: int
    kernel_init: Callable = nn.linear.default_kernel_init
    bias_init: Callable = nn.initializers.zeros_init()
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features), jnp.float32)
        if _MATMUL_DTYPE.get() is None:
            y = jax.lax.dot_general(x, kernel, (((x.ndim - 1,), (0,)), ((), ())))
        else:
            y = bf16_matmul(x, kernel)
        if not self.use_bias:
            return y
        return y + self.param("bias", self.bias_init, (self.features,), jnp.float32)


def _layer_norm_act(x, scale, bias, act, eps):
    """``act(LayerNorm(x)·scale + bias)`` with flax's statistics (fast variance); also returns
    the normalised input and the reciprocal standard deviation."""
    mean = jnp.mean(x, -1, keepdims=True)
    var = jnp.maximum(jnp.mean(x * x, -1, keepdims=True) - mean * mean, 0.0)
    rstd = jax.lax.rsqrt(var + eps)
    xhat = (x - mean) * rstd
    return act(xhat * scale + bias), xhat, rstd


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def layer_norm_act(x, scale, bias, act, eps=1e-6):
    """``act(LayerNorm(x)·scale + bias)`` whose backward pass keeps only its input ``x``.

    Autodiff of a LayerNorm followed by an activation keeps several ``x``-sized intermediates
    for the backward pass (centred and normalised input, the activation's input); inside the
    imagination scan each is a stacked ``[H, B, hidden]`` buffer per layer.  Here the backward
    pass recomputes them from ``x`` (elementwise work and two row means), so a hidden layer
    keeps what it would keep without LayerNorm (issue 18).
    """
    return _layer_norm_act(x, scale, bias, act, eps)[0]


def _layer_norm_act_fwd(x, scale, bias, act, eps):
    return _layer_norm_act(x, scale, bias, act, eps)[0], (x, scale, bias)


def _layer_norm_act_bwd(act, eps, residuals, g):
    x, scale, bias = residuals
    _, xhat, rstd = _layer_norm_act(x, scale, bias, lambda z: z, eps)
    _, act_vjp = jax.vjp(act, xhat * scale + bias)
    (gz,) = act_vjp(g)
    lead = tuple(range(x.ndim - 1))
    gx = gz * scale
    dx = rstd * (
        gx - jnp.mean(gx, -1, keepdims=True) - xhat * jnp.mean(gx * xhat, -1, keepdims=True)
    )
    return dx, jnp.sum(gz * xhat, lead), jnp.sum(gz, lead)


layer_norm_act.defvjp(_layer_norm_act_fwd, _layer_norm_act_bwd)


def _identity(x):
    return x


class LayerNorm(nn.Module):
    """LayerNorm fused with the activation after it (:func:`layer_norm_act`).  Its parameters
    (``scale``, ``bias``) and their names are those of ``flax.linen.LayerNorm``, so parameter
    trees and checkpoints are unchanged."""

    activation: Callable = _identity
    epsilon: float = 1e-6
    _norm_act = staticmethod(layer_norm_act)  # the fused normalisation (RMSNorm swaps it)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        return self._norm_act(x, scale, bias, self.activation, self.epsilon)


def _rms_norm_act(x, scale, bias, act, eps):
    """``act(x / RMS(x)·scale + bias)``; also returns the normalised input and ``1 / RMS``."""
    rstd = jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + eps)
    xhat = x * rstd
    return act(xhat * scale + bias), xhat, rstd


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def rms_norm_act(x, scale, bias, act, eps=1e-6):
    """``act(RMSNorm(x)·scale + bias)`` (Zhang & Sennrich 2019: LayerNorm without centring)
    whose backward pass, like :func:`layer_norm_act`'s, keeps only ``x``.  One row reduction
    forward and one backward instead of LayerNorm's two and two: the cheaper normalisation
    ``model.norm = "rms"`` selects (issue 18)."""
    return _rms_norm_act(x, scale, bias, act, eps)[0]


def _rms_norm_act_fwd(x, scale, bias, act, eps):
    return _rms_norm_act(x, scale, bias, act, eps)[0], (x, scale, bias)


def _rms_norm_act_bwd(act, eps, residuals, g):
    x, scale, bias = residuals
    _, xhat, rstd = _rms_norm_act(x, scale, bias, lambda z: z, eps)
    _, act_vjp = jax.vjp(act, xhat * scale + bias)
    (gz,) = act_vjp(g)
    lead = tuple(range(x.ndim - 1))
    gx = gz * scale
    dx = rstd * (gx - xhat * jnp.mean(gx * xhat, -1, keepdims=True))
    return dx, jnp.sum(gz * xhat, lead), jnp.sum(gz, lead)


rms_norm_act.defvjp(_rms_norm_act_fwd, _rms_norm_act_bwd)


class RMSNorm(LayerNorm):
    """RMSNorm fused with the activation after it (:func:`rms_norm_act`); parameters ``scale``
    and ``bias`` as :class:`LayerNorm`'s (a different module name, so a LayerNorm checkpoint
    never loads into an RMSNorm network unnoticed)."""

    _norm_act = staticmethod(rms_norm_act)


NORMS = {"layer": LayerNorm, "rms": RMSNorm}


def norm_kind(layer_norm: bool | str) -> str | None:
    """An MLP's ``layer_norm`` as a :data:`NORMS` key: True is "layer", False is None."""
    if layer_norm is True:
        return "layer"
    if layer_norm is False or layer_norm is None:
        return None
    if layer_norm not in NORMS:
        raise ValueError(f"unknown normalisation {layer_norm!r}; choose one of {sorted(NORMS)}")
    return layer_norm


class MLP(nn.Module):
    """Dense layers with an activation (and optional normalisation) between them.

    ``layer_norm``: True or "layer" (LayerNorm), "rms" (RMSNorm), False (none).

    ``output_dim=None`` ends on a hidden layer (with its activation); otherwise a final linear
    layer of ``output_dim`` units follows, initialised with ``output_scale`` so heads start
    near zero (small initial predictions keep early losses and imagined returns tame).
    """

    hidden: Sequence[int]
    output_dim: int | None = None
    activation: str = "elu"
    layer_norm: bool | str = True
    output_scale: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = get_activation(self.activation)
        kind = norm_kind(self.layer_norm)
        for width in self.hidden:
            x = Dense(width)(x)
            x = NORMS[kind](act)(x) if kind else act(x)
        if self.output_dim is not None:
            init = nn.initializers.variance_scaling(self.output_scale, "fan_avg", "uniform")
            x = Dense(self.output_dim, kernel_init=init)(x)
        return x
