"""Logical axis names for the alignment accumulators and the rules that map them to a mesh.

Fitting code names logical axes only ("batch", "feat_b", "feat_a"); one ``ShardingRules``
object decides which mesh axis (if any) each of them is split over. A rule set that would put
two logical axes of the same array on the same mesh axis is refused, because XLA would
otherwise silently replicate one of them. Meshes themselves come from ``linalign.mesh.make_mesh``.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Union

from jax.sharding import Mesh, NamedSharding, PartitionSpec

# Logical axes of the accumulation problem.
BATCH = "batch"      # rows of a mini-batch (examples / tokens)
FEAT_B = "feat_b"    # source-model hidden dimension d_b (rows of C_bb and C_ba)
FEAT_A = "feat_a"    # target-model hidden dimension d_a
FEAT_B2 = "feat_b2"  # second d_b axis of C_bb (columns); kept separate so it can stay whole

LOGICAL_AXES = (BATCH, FEAT_B, FEAT_A, FEAT_B2)

MeshAxes = Union[None, str, tuple[str, ...]]


@dataclasses.dataclass(frozen=True)
class ShardingRules:
    """Maps logical axis names to mesh axis names (None: replicated).

    Attributes:
      batch: mesh axis (or axes) that splits the rows of each mini-batch; the statistics are
        reduced across it.
      feat_b: mesh axis that splits the d_b rows of the accumulators C_bb and C_ba.
      feat_a: mesh axis that splits d_a (columns of C_ba); usually None.
      feat_b2: mesh axis that splits the columns of C_bb; usually None.
    """

    batch: MeshAxes = "data"
    feat_b: MeshAxes = "model"
    feat_a: MeshAxes = None
    feat_b2: MeshAxes = None

    def mesh_axes(self, logical: Optional[str]) -> tuple[str, ...]:
        if logical is None:
            return ()
        if logical not in LOGICAL_AXES:
            raise ValueError(f"unknown logical axis {logical!r}; expected one of {LOGICAL_AXES}")
        v = getattr(self, logical)
        if v is None:
            return ()
        return (v,) if isinstance(v, str) else tuple(v)

    def spec(self, logical_axes: Sequence[Optional[str]], mesh: Optional[Mesh] = None) -> PartitionSpec:
        """PartitionSpec for an array whose dimensions carry ``logical_axes``.

        Mesh axes the rules name but ``mesh`` lacks are dropped (replicated), so the same rules
        serve a data-only mesh and a data x model mesh.

        Raises:
          ValueError: two logical axes of the array map to the same mesh axis.
        """
        used: dict[str, str] = {}
        out = []
        for la in logical_axes:
            axes = self.mesh_axes(la)
            if mesh is not None:
                axes = tuple(a for a in axes if a in mesh.axis_names)
            for a in axes:
                if a in used:
                    raise ValueError(
                        f"sharding rules map logical axes {used[a]!r} and {la!r} to the same mesh "
                        f"axis {a!r} in one array {tuple(logical_axes)}; change the rules")
                used[a] = la
            out.append(None if not axes else (axes[0] if len(axes) == 1 else axes))
        return PartitionSpec(*out)

    def sharding(self, mesh: Mesh, logical_axes: Sequence[Optional[str]]) -> NamedSharding:
        return NamedSharding(mesh, self.spec(logical_axes, mesh))
