"""The torch 2.13 adjustments Concrete ML 1.9 and brevitas 0.10.2 need (linalign.fhe.compat).

Each test exercises the real code path an adjustment exists for, so it fails if the
adjustment stops working (or stops being applied).
"""

import io
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.fhe

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from linalign.fhe import compat  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _applied():
    compat.apply()


def test_torch_build_needs_both_adjustments():
    """In a fresh interpreter (no compat), torch 2.13 lacks rename and defaults to dynamo."""
    code = (
        "import inspect, torch, torch.onnx\n"
        "p = inspect.signature(torch.onnx.export).parameters.get('dynamo')\n"
        "print(hasattr(torch.Tensor, 'rename'), p is not None and p.default is True)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    has_rename, dynamo_default = out.stdout.split()
    if has_rename == "True" and dynamo_default == "False":
        pytest.skip("this torch build needs neither adjustment")
    # With compat applied in this process, both needs are met.
    assert compat.status() == {"onnx_export_dynamo_false": True, "tensor_rename_none": True}
    assert not compat.needs_onnx_patch()
    assert not compat.needs_rename_patch()


def test_apply_is_idempotent():
    export_before = torch.onnx.export
    rename_before = torch.Tensor.rename
    assert compat.apply() == {"onnx_export_dynamo_false": True, "tensor_rename_none": True}
    assert compat.apply() == {"onnx_export_dynamo_false": True, "tensor_rename_none": True}
    assert torch.onnx.export is export_before
    assert torch.Tensor.rename is rename_before
    # Not wrapped twice: the wrapped function is torch's own exporter.
    assert not getattr(torch.onnx.export.__wrapped_original__, compat._MARK, False)


def test_export_wrapper_only_changes_the_default():
    calls = []

    def fake_export(*args, **kwargs):
        calls.append(kwargs)

    wrapped = compat._onnx_export_default_dynamo_false(fake_export)
    wrapped("m", ("x",), "f.onnx", opset_version=14)
    wrapped("m", ("x",), "f.onnx", dynamo=True)
    assert calls[0] == {"opset_version": 14, "dynamo": False}
    assert calls[1] == {"dynamo": True}


def test_patched_export_writes_torchscript_onnx_graph():
    """The call pattern Concrete ML and hummingbird use (no dynamo argument) works."""
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3)).eval()
    x = torch.randn(5, 6)
    buf = io.BytesIO()
    torch.onnx.export(model, (x,), buf, opset_version=14, input_names=["x"])
    proto = onnx.load_model_from_string(buf.getvalue())
    onnx.checker.check_model(proto)
    assert {o.domain: o.version for o in proto.opset_import}.get("", None) == 14
    assert [n.op_type for n in proto.graph.node] == ["Gemm", "Relu", "Gemm"]
    assert [i.name for i in proto.graph.input] == ["x"]
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_rename_none_is_identity_and_setting_names_is_refused():
    t = torch.arange(6.0).reshape(2, 3)
    assert t.rename(None) is t
    p = torch.nn.Parameter(torch.ones(2))
    assert p.rename(None) is p
    with pytest.raises(NotImplementedError, match="named tensors"):
        t.rename("N", "C")
    with pytest.raises(NotImplementedError, match="named tensors"):
        t.rename(N="batch")


def test_brevitas_eager_forward_uses_rename():
    """brevitas' QuantLayerMixin.unpack_input calls value.rename(None) on every eager forward."""
    qnn = pytest.importorskip("brevitas.nn")
    torch.manual_seed(0)
    layer = qnn.QuantLinear(8, 3, bias=True, weight_bit_width=4, bias_quant=None).eval()
    x = torch.randn(4, 8)
    with torch.no_grad():
        got = layer(x)
        w_q = layer.quant_weight().value.detach()
        want = x @ w_q.T + layer.bias
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=1e-6)
    # The quantized weight really is on a 4-bit grid (so the layer is not a plain Linear).
    scale = float(layer.quant_weight().scale.detach())
    levels = np.unique(np.round(w_q.numpy() / scale))
    assert levels.size <= 16
    np.testing.assert_allclose(w_q.numpy() / scale, np.round(w_q.numpy() / scale), rtol=0, atol=1e-4)


def test_concrete_sklearn_and_brevitas_compile_end_to_end():
    """Both Concrete ML entry points that go through torch.onnx.export compile and run in FHE."""
    from linalign.fhe.concrete_backend import _import_concrete

    _import_concrete()
    import brevitas.nn as qnn
    from concrete.ml.sklearn import LogisticRegression
    from concrete.ml.torch.compile import compile_brevitas_qat_model

    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 8)).astype(np.float32)
    y = (x @ rng.normal(size=(8, 3))).argmax(1)
    model = LogisticRegression(n_bits=6).fit(x, y)  # hummingbird -> torch.onnx.export
    model.compile(x)
    clear = model.predict(x[:3], fhe="disable")
    np.testing.assert_array_equal(model.predict(x[:3], fhe="simulate"), clear)
    np.testing.assert_array_equal(model.predict(x[:2], fhe="execute"), clear[:2])

    class QatNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q = qnn.QuantIdentity(bit_width=4, return_quant_tensor=True)
            self.fc = qnn.QuantLinear(8, 3, bias=True, weight_bit_width=4, bias_quant=None)

        def forward(self, inp):
            return self.fc(self.q(inp))

    torch.manual_seed(0)
    net = QatNet().eval()
    with torch.no_grad():
        want = net(torch.from_numpy(x[:2])).numpy()
    qm = compile_brevitas_qat_model(net, x, n_bits=4)
    got = qm.forward(x[:2], fhe="execute")
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
