"""The one conversion-table runner: shapes checked before and after every transform, missing and
unused tensors refused, lazy sources read once per rule."""

import numpy as np
import pytest

from linalign.models import convert
from linalign.models.base import CheckpointError


def test_run_table_transforms_and_nests():
    w = np.arange(6, dtype=np.float32).reshape(3, 2)  # torch Linear [out=3, in=2]
    rules = convert.linear_rules("fc", ("layer", "fc"), d_in=2, d_out=3, kernel_shape=(2, 3, 1),
                                 bias_shape=(3, 1)) + [convert.Rule("s", (2,), ("scale",))]
    params = convert.run_table({"fc.weight": w, "fc.bias": np.ones(3, np.float32), "s": np.zeros(2)}, rules, "t")
    np.testing.assert_array_equal(params["layer"]["fc"]["kernel"], w.T.reshape(2, 3, 1))
    assert params["layer"]["fc"]["bias"].shape == (3, 1) and params["scale"].shape == (2,)


def test_run_table_refusals():
    rules = [convert.Rule("a", (2, 3), ("a",), convert.transpose, (3, 2))]
    with pytest.raises(CheckpointError, match=r"t tensor 'a' has shape \(3, 2\), config implies \(2, 3\)"):
        convert.run_table({"a": np.zeros((3, 2))}, rules, "t")
    bad = [convert.Rule("a", (2, 3), ("a",), convert.identity, (3, 2))]
    with pytest.raises(CheckpointError, match=r"converts to shape \(2, 3\), expected \(3, 2\)"):
        convert.run_table({"a": np.zeros((2, 3))}, bad, "t")
    with pytest.raises(CheckpointError, match=r"t checkpoint lacks tensor 'a'"):
        convert.run_table({}, rules, "t")
    with pytest.raises(CheckpointError, match=r"does not use: 'b'"):
        convert.run_table({"a": np.zeros((2, 3)), "b": np.zeros(1)}, rules, "t")
    assert "b" not in convert.run_table({"a": np.zeros((2, 3)), "b": np.zeros(1)}, rules, "t", lambda n: n == "b")
    twice = rules + [convert.Rule("c", (1,), ("a",))]
    with pytest.raises(CheckpointError, match="two rules write a"):
        convert.run_table({"a": np.zeros((2, 3)), "c": np.zeros(1)}, twice, "t")
