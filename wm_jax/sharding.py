"""Data parallelism with ``jax.sharding``: no communication code of our own.

One ``Mesh`` with a ``"data"`` axis spans every device of every process.  Batches are split
along their leading (batch) axis, parameters and optimiser states are replicated, and the same
jitted train step runs unchanged: XLA's SPMD partitioner sees a sharded batch and replicated
parameters and inserts the all-reduce of the gradients itself.  On several hosts,
:func:`initialize_distributed` (``jax.distributed.initialize``) joins the processes first,
:func:`shard_batch` assembles the global batch from each process's local rows, and
:func:`local_copy` gives each process its own replica of the replicated parameters for the
work it does alone (acting in its envs, evaluating).

    mesh = make_mesh()                       # all devices, axis "data"
    state = replicate(state, mesh)
    state, metrics = steps.train_step(state, shard_batch(batch, mesh), counts, mix)
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Joins a multi-process (multi-host) job with ``jax.distributed.initialize``.

    With no arguments JAX reads them from the cluster (TPU pod slices, SLURM, Open MPI); on other
    clusters pass the coordinator's ``host:port``, the process count and this process's index.
    Must run before anything touches a device.
    """
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )


def make_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: every device of every process)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places a full copy of ``tree`` (params, optimiser states, keys) on every device.

    With several processes every process must call it with the same tree: process 0's values
    are broadcast (``multihost_utils.broadcast_one_to_all``), so the replicas are identical even
    if the processes' inputs are not.  A tree already placed with this sharding (e.g. restored
    by orbax against a replicated target) is returned as it is, with no communication.
    """
    sharding = NamedSharding(mesh, PartitionSpec())
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    leaves = jax.tree.leaves(tree)
    if all(isinstance(x, jax.Array) and x.sharding == sharding for x in leaves):
        return tree
    # From host values: device_put of a committed single-device jax.Array onto a sharding that
    # spans other processes builds a malformed array in jax 0.10 (its shards cannot be listed,
    # which orbax needs to save it).
    host = multihost_utils.broadcast_one_to_all(jax.device_get(tree))
    return jax.device_put(host, sharding)


def commit(tree: Any) -> Any:
    """``tree`` committed to the default device (as a jitted call's outputs are).  jit keys its
    compiled programs on where the arguments are committed, so a run whose state starts
    uncommitted compiles its acting and evaluation programs again once the train step's
    committed outputs replace it; committing the state at its start keeps one program each."""
    device = jax.config.jax_default_device
    if not isinstance(device, jax.Device):
        device = jax.local_devices(backend=device)[0]
    return jax.device_put(tree, device)


def placed_like(tree: Any, like: Any) -> Any:
    """``tree`` placed as the first leaf of ``like`` is (its sharding), if that leaf is a
    committed array; else ``tree`` as it is.  Acting calls it on the policy's carry, which
    starts as numpy and comes back from the jitted call committed: placed like the parameters
    it is one jit signature from the first call on."""
    leaves = jax.tree.leaves(like)
    if not leaves or not isinstance(leaves[0], jax.Array) or not leaves[0].committed:
        return tree
    return jax.device_put(tree, leaves[0].sharding)


def local_copy(tree: Any) -> Any:
    """This process's replica of a replicated ``tree``: every leaf that spans other processes'
    devices becomes its copy on this process's first device (no data is moved).  Jitted code
    that one process runs alone (acting, evaluation, the open-loop check) must take these:
    a computation on global arrays is a multi-process program every process has to run.  Leaves
    that live on this process only are returned as they are (so in one process this is the
    identity, returned without walking the tree: acting calls it twice per vector step)."""
    if jax.process_count() == 1:
        return tree
    return jax.tree.map(
        lambda x: (
            x.addressable_data(0) if isinstance(x, jax.Array) and not x.is_fully_addressable else x
        ),
        tree,
    )


def shard_batch(batch: Any, mesh: Mesh, field: str = "config.batch_size") -> Any:
    """Splits every leaf of ``batch`` along its leading axis over the mesh's ``"data"`` axis.

    In a single process ``batch`` is the global batch; with several processes it is this
    process's share (``global_batch / process_count`` rows) and the global array is assembled
    without copying data between hosts.  ``field`` names the setting to change in the error
    for a leading axis that does not split evenly.
    """
    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    per_process = mesh.size // jax.process_count()
    for leaf in jax.tree.leaves(batch):
        if leaf.shape[0] % per_process:
            raise ValueError(
                f"a batch of {leaf.shape[0]} rows does not split evenly over {per_process} "
                f"devices: make {field} a multiple of {per_process}"
            )
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch
    )
