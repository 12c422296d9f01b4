"""Bad inputs get clear errors; AffineMap save/load is atomic and checks widths."""

import json

import numpy as np
import pytest

from linalign import align
from linalign.align import affine_map as am


def _pair(n=50, d_b=6, d_a=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d_b)).astype(np.float32), rng.normal(size=(n, d_a)).astype(np.float32)


def test_mismatched_rows():
    z_b, z_a = _pair()
    with pytest.raises(align.AlignInputError, match="row counts differ: source .* 50 rows, target .* 49"):
        align.from_arrays(z_b, z_a[:49])


@pytest.mark.parametrize("side", ["b", "a"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_row_is_named(side, bad):
    z_b, z_a = _pair()
    (z_b if side == "b" else z_a)[17, 2] = bad
    name = "source \\(z_b\\)" if side == "b" else "target \\(z_a\\)"
    with pytest.raises(align.AlignInputError, match=f"{name}: row 17 contains a non-finite"):
        align.from_arrays(z_b, z_a)


def test_non_finite_row_index_is_global_when_streaming():
    z_b, z_a = _pair(n=100)
    z_a[73, 0] = np.nan
    acc = align.Accumulator(6, 4)
    acc.add(z_b[:60], z_a[:60])
    with pytest.raises(align.AlignInputError, match="row 73"):
        acc.add(z_b[60:], z_a[60:])


def test_empty_input():
    with pytest.raises(align.AlignInputError, match="empty input"):
        align.from_arrays(np.zeros((0, 3), np.float32), np.zeros((0, 2), np.float32))


@pytest.mark.parametrize("dtype", [np.int32, np.int64, bool, object])
def test_wrong_dtype(dtype):
    z_b, z_a = _pair()
    with pytest.raises(align.AlignInputError, match="must be floating point"):
        align.from_arrays(z_b.astype(dtype), z_a)


def test_wrong_rank():
    z_b, z_a = _pair()
    with pytest.raises(align.AlignInputError, match="expected a rank-2"):
        align.from_arrays(z_b[None], z_a)
    with pytest.raises(align.AlignInputError, match="expected a rank-2"):
        align.from_arrays(z_b[:, 0], z_a)


def test_wrong_width_in_stream():
    z_b, z_a = _pair()
    acc = align.Accumulator(6, 4)
    with pytest.raises(align.AlignInputError, match="expected width 6, got 5"):
        acc.add(z_b[:, :5], z_a)


def test_bad_rows_accumulate_nothing():
    z_b, z_a = _pair()
    acc = align.Accumulator(6, 4)
    acc.add(z_b[:10], z_a[:10])
    z_b[20, 1] = np.nan
    with pytest.raises(align.AlignInputError):
        acc.add(z_b[10:], z_a[10:])
    assert int(acc.stats.n) == 10


def _fitted_map(seed=0):
    z_b, z_a = _pair(n=200, seed=seed)
    s = align.from_arrays(z_b, z_a)
    w, b = align.solve(s, 1.0)
    meta = align.MapMetadata(d_b=6, d_a=4, source_model="src", target_model="tgt", lam=1.0,
                             pooling="mean", n=200, data_fingerprint=am.array_fingerprint(z_b, z_a))
    return align.AffineMap(w, b, meta), z_b, z_a


def test_save_load_roundtrip(tmp_path):
    m, z_b, z_a = _fitted_map()
    out = m.save(tmp_path / "m.safetensors")
    assert out == tmp_path / "m.safetensors"
    loaded = align.AffineMap.load(out)
    assert loaded.metadata == m.metadata and loaded.metadata.linalign_version
    np.testing.assert_allclose(np.asarray(loaded(z_b)), np.asarray(m(z_b)), rtol=0, atol=0)
    np.testing.assert_allclose(np.asarray(loaded.w), np.asarray(m.w), rtol=0, atol=0)
    # Nothing temporary left next to the map.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    with pytest.raises(FileExistsError):
        m.save(out)
    m2, _, _ = _fitted_map(seed=1)
    m2.save(out, overwrite=True)
    np.testing.assert_allclose(np.asarray(align.AffineMap.load(out).w), np.asarray(m2.w), rtol=0, atol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    # A directory path holds map.safetensors; loading the directory finds it.
    d = m.save(tmp_path / "fit_out")
    assert d == tmp_path / "fit_out" / "map.safetensors"
    assert align.AffineMap.load(tmp_path / "fit_out").metadata == m.metadata


def test_map_file_is_readable_without_linalign(tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import load_file

    m, _, _ = _fitted_map()
    p = m.save(tmp_path / "m.safetensors")
    t = load_file(p)
    np.testing.assert_array_equal(t["W"], np.asarray(m.w))
    np.testing.assert_array_equal(t["b"], np.asarray(m.b))
    head = safe_open(p, "np").metadata()
    assert head["format"] == "linalign.affine_map" and head["format_version"] == "1"
    meta = json.loads(head["metadata"])
    assert meta["d_b"] == 6 and meta["d_a"] == 4 and meta["source_model"] == "src"
    assert set(meta) >= {"lam", "lam_spec", "lam_selection", "n", "heldout", "dtype", "pooling",
                         "layer", "source_fingerprint", "target_fingerprint", "created",
                         "linalign_version"}


def test_apply_batched_and_width_mismatch(tmp_path):
    m, z_b, _ = _fitted_map()
    loaded = align.AffineMap.load(m.save(tmp_path / "map"))
    want = z_b.astype(np.float64) @ np.asarray(m.w, np.float64) + np.asarray(m.b, np.float64)
    np.testing.assert_allclose(np.asarray(loaded(z_b.reshape(20, 10, 6))).reshape(200, 4), want,
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(align.AlignInputError, match="expects source embeddings of width 6 \\(src\\), got .*\\(200, 5\\)"):
        loaded(z_b[:, :5])


def test_evaluate_matches_direct_formulas():
    m, z_b, z_a = _fitted_map()
    ev = m.evaluate(z_b, z_a)
    pred = z_b.astype(np.float64) @ np.asarray(m.w, np.float64) + np.asarray(m.b, np.float64)
    r2 = 1 - np.sum((pred - z_a) ** 2) / np.sum((z_a - z_a.mean(0)) ** 2)
    cos = np.mean(np.sum(pred * z_a, 1) / np.linalg.norm(pred, axis=1) / np.linalg.norm(z_a, axis=1))
    np.testing.assert_allclose(ev["r2"], r2, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ev["cosine"], cos, rtol=1e-4, atol=1e-5)


def _rewrite(path, tensors=None, header=None):
    from safetensors.numpy import load_file, save_file
    from safetensors import safe_open

    t = load_file(path)
    h = safe_open(path, "np").metadata()
    t.update(tensors or {})
    h.update(header or {})
    save_file(t, path, metadata=h)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no saved map"):
        align.AffineMap.load(tmp_path / "missing.safetensors")
    m, _, _ = _fitted_map()
    p = m.save(tmp_path / "m.safetensors")
    raw = p.read_bytes()
    # Truncated file.
    (tmp_path / "cut.safetensors").write_bytes(raw[: len(raw) - 10])
    with pytest.raises(align.MapFormatError, match="truncated or corrupt"):
        align.AffineMap.load(tmp_path / "cut.safetensors")
    (tmp_path / "tiny.safetensors").write_bytes(raw[:5])
    with pytest.raises(align.MapFormatError, match="truncated or corrupt"):
        align.AffineMap.load(tmp_path / "tiny.safetensors")
    # Arrays that do not match the metadata.
    _rewrite(p, tensors={"W": np.zeros((6, 5), np.float32)})
    with pytest.raises(align.MapFormatError, match=r"W \(6, 5\) / b \(4,\) do not match .*d_a=4"):
        align.AffineMap.load(p)
    p = m.save(p, overwrite=True)
    _rewrite(p, tensors={"b": np.full(4, np.nan, np.float32)})
    with pytest.raises(align.MapFormatError, match="non-finite"):
        align.AffineMap.load(p)
    p = m.save(p, overwrite=True)
    _rewrite(p, header={"format_version": "99"})
    with pytest.raises(align.MapFormatError, match="format version '99'"):
        align.AffineMap.load(p)
    p = m.save(p, overwrite=True)
    _rewrite(p, header={"metadata": "{not json"})
    with pytest.raises(align.MapFormatError, match="metadata JSON in its header is corrupt"):
        align.AffineMap.load(p)
    from safetensors.numpy import save_file
    save_file({"x": np.zeros(3, np.float32)}, tmp_path / "other.safetensors")
    with pytest.raises(align.MapFormatError, match="not a linalign map"):
        align.AffineMap.load(tmp_path / "other.safetensors")


def test_old_orbax_map_is_refused_and_converted(tmp_path):
    import orbax.checkpoint as ocp
    from linalign.align import convert_map

    m, z_b, _ = _fitted_map()
    old = tmp_path / "old"
    old.mkdir()
    ocp.PyTreeCheckpointer().save((old / "params").absolute(),
                                  {"W": np.asarray(m.w), "b": np.asarray(m.b)})
    (old / "metadata.json").write_text(json.dumps(
        {"d_b": 6, "d_a": 4, "source_model": "src", "target_model": "tgt", "lam": 0.5,
         "pooling": "mean", "n": 200, "data_fingerprint": "", "format_version": 1,
         "extra": {"lambda_selection": "GCV"}}))
    with pytest.raises(align.MapFormatError,
                       match=r"old orbax layout.*safetensors.*python -m linalign.align.convert_map"):
        align.AffineMap.load(old)
    new = convert_map.convert(old, tmp_path / "new.safetensors")
    conv = align.AffineMap.load(new)
    np.testing.assert_array_equal(np.asarray(conv.w), np.asarray(m.w))
    np.testing.assert_array_equal(np.asarray(conv(z_b)), np.asarray(m(z_b)))
    assert conv.metadata.lam == 0.5 and conv.metadata.n == 200 and conv.metadata.lam_selection == "GCV"
    with pytest.raises(FileExistsError):
        convert_map.convert(old, new)
    assert convert_map.main([str(old), str(tmp_path / "cli.safetensors")]) == 0
    assert align.AffineMap.load(tmp_path / "cli.safetensors").metadata.lam == 0.5


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    m, _, _ = _fitted_map()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(json, "dumps", boom)
    with pytest.raises(OSError, match="disk full"):
        m.save(tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []
