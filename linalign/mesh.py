"""The one device-mesh builder behind every ``--mesh`` flag (extract, fit, distributed).

Syntax: comma-separated ``name=size`` pairs, e.g. ``"data=8"``, ``"data=4,model=2"``; one size
may be ``-1`` for "all remaining devices" (``"data=-1"`` is every device on one axis, and
``"data=-1,model=2"`` puts pairs of devices on the model axis). The sizes must multiply to the
number of devices used: a mesh never silently leaves devices out.

Devices are ordered process-major, by (process_index, id), and the last axis varies fastest, so
in a multi-process job each process's devices form a contiguous block of the leading (data)
axis and trailing (model) axes stay inside one host where they fit.

    from linalign.mesh import make_mesh
    mesh = make_mesh("data=-1")           # all devices of all processes on the 'data' axis
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def parse_axes(spec: str) -> dict[str, int]:
    """Ordered axis name -> size for a mesh spec (sizes > 0, or one -1).

    Raises:
      ValueError: empty spec, a pair without '=', a non-integer or non-positive size other
        than -1, a repeated axis, or more than one -1.
    """
    if not isinstance(spec, str):
        raise ValueError(f"mesh spec must be a string like 'data=8', got {spec!r}")
    out: dict[str, int] = {}
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        name, eq, size = part.partition("=")
        name = name.strip()
        if not eq or not name:
            raise ValueError(f"mesh spec {spec!r}: expected name=size pairs like 'data=4,model=2'")
        try:
            n = int(size)
        except ValueError:
            raise ValueError(f"mesh spec {spec!r}: size of axis {name!r} is not an integer "
                             f"({size.strip()!r})") from None
        if n == 0 or n < -1:
            raise ValueError(f"mesh spec {spec!r}: axis {name!r} has size {n}; sizes are positive "
                             "or -1 (all remaining devices)")
        if name in out:
            raise ValueError(f"mesh spec {spec!r}: axis {name!r} appears twice")
        out[name] = n
    if not out:
        raise ValueError(f"mesh spec {spec!r} names no axes; expected e.g. 'data=8'")
    if list(out.values()).count(-1) > 1:
        raise ValueError(f"mesh spec {spec!r}: at most one axis size may be -1")
    return out


def make_mesh(spec: Optional[str], devices: Optional[Sequence] = None):
    """Builds a ``jax.sharding.Mesh`` from a spec string.

    Args:
      spec: e.g. "data=8", "data=4,model=2", "data=-1". None or "" means ``"data=-1"``.
      devices: devices to lay out (default: ``jax.devices()``, every process's devices).

    Returns:
      A Mesh whose axes are named and ordered as in ``spec``.

    Raises:
      ValueError: a malformed spec, or sizes that do not multiply to the device count.
    """
    import jax
    from jax.sharding import Mesh

    axes = parse_axes(spec or "data=-1")
    devs = sorted(devices if devices is not None else jax.devices(),
                  key=lambda d: (d.process_index, d.id))
    names, sizes = list(axes), list(axes.values())
    if -1 in sizes:
        known = int(np.prod([s for s in sizes if s != -1]))
        if len(devs) % known:
            raise ValueError(f"mesh spec {spec!r}: the other axes ({known} devices) do not divide "
                             f"the {len(devs)} devices")
        sizes[sizes.index(-1)] = len(devs) // known
    total = int(np.prod(sizes))
    if total != len(devs):
        raise ValueError(f"mesh spec {spec!r} needs {total} devices, but there are {len(devs)} "
                         f"(sizes must multiply to the device count; use -1 for 'the rest')")
    return Mesh(np.asarray(devs, dtype=object).reshape(sizes), tuple(names))


def local_mesh(axis: str = "data"):
    """A 1-D mesh over this process's own devices (work that needs no communication)."""
    import jax

    return make_mesh(f"{axis}=-1", jax.local_devices())


def contiguous_bounds(n: int, process_index: int, process_count: int) -> tuple[int, int]:
    """[lo, hi) of process ``process_index``'s contiguous share of ``n`` items.

    Shares differ in size by at most one and earlier processes get the extra items; every
    process computes every other process's share without talking to it.
    """
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} outside [0, {process_count})")
    base, extra = divmod(n, process_count)
    lo = process_index * base + min(process_index, extra)
    return lo, lo + base + (1 if process_index < extra else 0)
