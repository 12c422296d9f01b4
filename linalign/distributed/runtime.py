"""Multi-controller runtime: start JAX's distributed client and shard inputs over processes.

Meshes come from ``linalign.mesh.make_mesh`` (one flag syntax for every command).

Every process runs the same program (JAX's multi-controller model). ``initialize`` connects the
processes through ``jax.distributed.initialize``; where JAX has a cluster detector of its own
(Cloud TPU pods, SLURM, Open MPI) it is used as is, so the coordinator address, process count
and id come from the environment exactly as JAX reads them. Explicit arguments or the
``LINALIGN_COORDINATOR`` / ``LINALIGN_NUM_PROCESSES`` / ``LINALIGN_PROCESS_ID`` variables
(what ``launch/local_cpu.sh`` sets) take precedence, which is how several processes on one
machine imitate a multi-host job.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Mapping, Optional, Sequence, TypeVar

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh

from linalign.mesh import contiguous_bounds  # noqa: F401  (re-exported: process shares)

ENV_COORDINATOR = "LINALIGN_COORDINATOR"
ENV_NUM_PROCESSES = "LINALIGN_NUM_PROCESSES"
ENV_PROCESS_ID = "LINALIGN_PROCESS_ID"
ENV_CLUSTER = "LINALIGN_CLUSTER"
CLUSTERS = ("auto", "explicit", "slurm", "tpu", "none")

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    """How this process joins the job.

    Attributes:
      kind: "explicit" (coordinator/process count/id given), "slurm" or "tpu" (JAX's own
        detector fills them in), or "none" (a single process; nothing to initialize).
      coordinator_address: host:port of process 0's coordinator service (explicit only).
      num_processes, process_id: explicit only.
      local_device_ids: devices this process drives (None: all it sees).
    """

    kind: str
    coordinator_address: Optional[str] = None
    num_processes: Optional[int] = None
    process_id: Optional[int] = None
    local_device_ids: Optional[tuple[int, ...]] = None


def _env_int(env: Mapping[str, str], name: str) -> Optional[int]:
    v = env.get(name)
    if v in (None, ""):
        return None
    try:
        return int(v)
    except ValueError:
        raise ValueError(f"environment variable {name}={v!r} is not an integer") from None


def resolve_cluster(coordinator_address: Optional[str] = None,
                    num_processes: Optional[int] = None,
                    process_id: Optional[int] = None,
                    local_device_ids: Optional[Sequence[int]] = None,
                    cluster: str = "auto",
                    env: Optional[Mapping[str, str]] = None) -> ClusterSpec:
    """Decides how to join the job, without side effects (so it can be tested).

    Precedence: explicit arguments, then ``LINALIGN_*`` variables, then an srun step of a SLURM
    job with more than one task, then a TPU pod (only when asked for with cluster="tpu" or
    ``LINALIGN_CLUSTER=tpu``: a TPU VM's metadata cannot be probed cheaply and a single-host
    TPU VM needs no initialization), else a single process.

    Args:
      coordinator_address, num_processes, process_id, local_device_ids: explicit settings.
      cluster: one of CLUSTERS; "auto" picks as above.
      env: environment to read (default os.environ).

    Returns:
      ClusterSpec.

    Raises:
      ValueError: incomplete explicit settings, a process id out of range, or an unknown
        cluster kind.
    """
    env = os.environ if env is None else env
    cluster = env.get(ENV_CLUSTER, cluster) if cluster == "auto" else cluster
    if cluster not in CLUSTERS:
        raise ValueError(f"unknown cluster kind {cluster!r}; expected one of {CLUSTERS}")
    devs = tuple(int(i) for i in local_device_ids) if local_device_ids is not None else None
    coord = coordinator_address or env.get(ENV_COORDINATOR) or None
    nproc = num_processes if num_processes is not None else _env_int(env, ENV_NUM_PROCESSES)
    pid = process_id if process_id is not None else _env_int(env, ENV_PROCESS_ID)
    given = {"coordinator_address": coord, "num_processes": nproc, "process_id": pid}
    if cluster == "explicit" or (cluster == "auto" and any(v is not None for v in given.values())):
        missing = [k for k, v in given.items() if v is None]
        if missing:
            raise ValueError(
                f"explicit multi-process settings are incomplete: {missing} missing (set them "
                f"with flags or {ENV_COORDINATOR}/{ENV_NUM_PROCESSES}/{ENV_PROCESS_ID})")
        if nproc < 1 or not 0 <= pid < nproc:
            raise ValueError(f"process_id {pid} is outside [0, num_processes={nproc})")
        if ":" not in coord:
            raise ValueError(f"coordinator address {coord!r} must be host:port")
        return ClusterSpec("explicit", coord, nproc, pid, devs)
    # SLURM_STEP_NODELIST is set only inside an srun step: a batch script or salloc shell (one
    # process, nobody to wait for) must not join a job that has no other tasks.
    if cluster == "slurm" or (cluster == "auto" and "SLURM_JOB_ID" in env
                              and "SLURM_STEP_NODELIST" in env
                              and (_env_int(env, "SLURM_NTASKS") or 1) > 1):
        return ClusterSpec("slurm", local_device_ids=devs)
    if cluster == "tpu":
        return ClusterSpec("tpu", local_device_ids=devs)
    return ClusterSpec("none", local_device_ids=devs)


_INITIALIZED: Optional[ClusterSpec] = None


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, local_device_ids: Optional[Sequence[int]] = None,
               cluster: str = "auto") -> ClusterSpec:
    """Joins the multi-process job (idempotent); call before any other JAX work.

    Args:
      coordinator_address: "host:port" of process 0. None: from the environment.
      num_processes: total processes. None: from the environment.
      process_id: this process's index. None: from the environment.
      local_device_ids: device ids this process drives (one process per GPU under SLURM).
      cluster: "auto", "explicit", "slurm", "tpu" or "none" (see ``resolve_cluster``).

    Returns:
      The ClusterSpec that was used.
    """
    global _INITIALIZED
    spec = resolve_cluster(coordinator_address, num_processes, process_id, local_device_ids, cluster)
    if _INITIALIZED is not None:
        if spec != _INITIALIZED:
            logging.warning("distributed runtime already initialized as %s; ignoring %s",
                            _INITIALIZED, spec)
        return _INITIALIZED
    if spec.kind == "explicit":
        jax.distributed.initialize(coordinator_address=spec.coordinator_address,
                                   num_processes=spec.num_processes, process_id=spec.process_id,
                                   local_device_ids=spec.local_device_ids)
    elif spec.kind in ("slurm", "tpu"):
        # JAX's own cluster detectors (SlurmCluster, GceTpuCluster) fill in everything.
        jax.distributed.initialize(local_device_ids=spec.local_device_ids)
    _INITIALIZED = spec
    logging.info("runtime %s: process %d of %d, %d local / %d global devices", spec.kind,
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count())
    return spec


def shard_for_process(items: Sequence[T], process_index: int, process_count: int,
                      mode: str = "contiguous") -> Sequence[T]:
    """This process's deterministic share of ``items``.

    Contiguous shards differ in size by at most one and earlier processes get the extra items;
    strided shards take every ``process_count``-th item. Both depend only on len(items) and the
    two integers, so every process computes every other process's shard without talking to it.
    A ``range`` stays a lazy ``range``.

    Args:
      items: any sliceable sequence (list, range, np.ndarray).
      process_index: in [0, process_count).
      process_count: number of processes.
      mode: "contiguous" or "strided".

    Returns:
      A slice of ``items``.
    """
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} outside [0, {process_count})")
    if mode == "strided":
        return items[process_index::process_count]
    if mode != "contiguous":
        raise ValueError(f"unknown shard mode {mode!r}; expected 'contiguous' or 'strided'")
    lo, hi = contiguous_bounds(len(items), process_index, process_count)
    return items[lo:hi]


def local_data_shards(mesh: Mesh, axis: str = "data") -> tuple[int, int]:
    """(first index, count) of the ``axis`` positions whose devices all belong to this process.

    Raises:
      ValueError: this process's devices do not own a whole, contiguous block of ``axis``
        (e.g. a model axis spanning hosts), which the row feeding here relies on.
    """
    ax = mesh.axis_names.index(axis)
    dev = np.moveaxis(mesh.devices, ax, 0).reshape(mesh.devices.shape[ax], -1)
    me = jax.process_index()
    owned = [i for i in range(dev.shape[0]) if all(d.process_index == me for d in dev[i])]
    mixed = [i for i in range(dev.shape[0])
             if any(d.process_index == me for d in dev[i]) and i not in owned]
    if mixed or not owned or owned != list(range(owned[0], owned[0] + len(owned))):
        raise ValueError(f"process {me} does not own a contiguous block of mesh axis {axis!r} "
                         f"(mesh {dict(mesh.shape)}); keep the other axes within one host")
    return owned[0], len(owned)


def leave_if_failed(status: int, error: Optional[BaseException] = None) -> None:
    """Ends this process at once when it failed (``status`` != 0) inside a multi-process job.

    JAX's exit handler waits at a shutdown barrier for every process, and the healthy processes
    wait at their next barrier for this one, so a process that fails alone (a user error, a full
    disk) would otherwise hold the whole job until a timeout. Leaving without the exit handlers
    lets the launcher (``launch/local_cpu.sh``, SLURM, the TPU runtime) see the failure and stop
    the others. Output is flushed first; files are written atomically, so nothing half-written is
    left. A no-op for status 0, a single process, or before ``initialize``. ``error``, the
    exception that ended the program if one did, is printed first (the interpreter would have).
    """
    if not status or _INITIALIZED is None or jax.process_count() == 1:
        return
    if error is not None:
        import traceback

        traceback.print_exception(error)
    logging.error("process %d of %d failed (status %d); leaving without the shutdown barrier",
                  jax.process_index(), jax.process_count(), status)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


ENV_BARRIER_TIMEOUT = "LINALIGN_BARRIER_TIMEOUT_S"
DEFAULT_BARRIER_TIMEOUT_S = 24 * 3600


def barrier(name: str, timeout_s: Optional[float] = None) -> None:
    """Waits until every process reaches ``name``; no-op with one process.

    Uses the coordination service's barrier, not a device collective:
    ``multihost_utils.sync_global_devices`` runs a psum whose first use initialises the CPU
    collectives (gloo) with a fixed 30 s deadline, so a process that finishes its share of an
    extraction minutes before the others died at the final sync ("Gloo context initialization
    failed: DEADLINE_EXCEEDED"). Processes with unequal work are normal (texts differ in
    length), so the wait here is bounded only by ``timeout_s`` (default
    ``$LINALIGN_BARRIER_TIMEOUT_S`` or 24 h).

    Raises:
      TimeoutError: the other processes did not arrive in time (names the barrier).
    """
    if jax.process_count() == 1:
        return
    if timeout_s is None:
        timeout_s = float(os.environ.get(ENV_BARRIER_TIMEOUT, DEFAULT_BARRIER_TIMEOUT_S))
    from jax._src import distributed  # the client jax.distributed.initialize started

    client = getattr(distributed.global_state, "client", None)
    if client is None:  # processes started by a launcher that JAX cannot reach: collective
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
        return
    try:
        client.wait_at_barrier(name, int(timeout_s * 1000))
    except Exception as e:  # the client raises XlaRuntimeError (DEADLINE_EXCEEDED, ...)
        raise TimeoutError(f"process {jax.process_index()} of {jax.process_count()}: barrier "
                           f"{name!r} not reached by every process within {timeout_s:.0f} s "
                           f"({e})") from e
