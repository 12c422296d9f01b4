"""linalign.mesh: the one --mesh syntax of extract, fit and distributed."""

import jax
import numpy as np
import pytest

from linalign.mesh import contiguous_bounds, local_mesh, make_mesh, parse_axes


def test_specs_and_device_order():
    assert parse_axes("data=2, model=4") == {"data": 2, "model": 4}
    mesh = make_mesh("data=-1,model=4")
    assert dict(mesh.shape) == {"data": jax.device_count() // 4, "model": 4}
    ids = np.vectorize(lambda d: d.id)(mesh.devices)
    assert ids.ravel().tolist() == sorted(ids.ravel().tolist())
    assert dict(make_mesh(None).shape) == {"data": jax.device_count()}
    assert dict(make_mesh("data=4", jax.devices()[:4]).shape) == {"data": 4}
    assert dict(local_mesh().shape) == {"data": jax.local_device_count()}


@pytest.mark.parametrize("spec, match", [
    ("data:2", "name=size"), ("data", "name=size"), (",", "names no axes"),
    ("data=x", "not an integer"), ("data=0", "size 0"), ("data=-2", "size -2"),
    ("data=2,data=4", "appears twice"), ("data=-1,model=-1", "at most one"),
    ("data=3,model=2", "needs 6 devices"), ("data=-1,model=3", "do not divide"),
    ("data=64", "needs 64 devices")])
def test_bad_specs_are_named(spec, match):
    with pytest.raises(ValueError, match=match):
        make_mesh(spec)


def test_contiguous_bounds_tile_the_items():
    for n, p in ((10, 3), (2, 3), (0, 1), (7, 7)):
        b = [contiguous_bounds(n, i, p) for i in range(p)]
        assert b[0][0] == 0 and b[-1][1] == n and all(x[1] == y[0] for x, y in zip(b, b[1:]))
    with pytest.raises(ValueError):
        contiguous_bounds(4, 2, 2)
