"""Fitting an AffineMap: sources -> folded accumulator -> lambda policy -> solve -> map.

One streaming pass. Each row's global index decides whether it is held out (a hash, fixed by
``seed``) and, if not, its cross-validation fold (``fold_of``); held-out rows go into their
own statistics, training rows into per-fold statistics. Then ``choose_lambda`` (exact k-fold
CV from the fold statistics by default), one float64 solve on the merged statistics, and the
held-out R^2 exactly from the held-out statistics (cosine on up to EVAL_MAX_ROWS kept rows).

``fit`` (re-exported as ``linalign.fit``) takes arrays, stores or iterables of batches;
``fit_sources`` is the same pipeline over two EmbeddingSources with a report for the CLI
(``python -m linalign.fit``) and ``write_fit``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import time
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
from absl import logging

from linalign.align.affine_map import AffineMap, MapMetadata, array_fingerprint
from linalign.align.folded import FoldedAccumulator, HostAccumulator
from linalign.align.lambdas import LambdaSpec, _mix, choose_lambda
from linalign.align.sources import EmbeddingSource, check_paired, open_embeddings
from linalign.align.stats import merge_all, std_scale
from linalign.align.validate import AlignInputError
from linalign.atomic import atomic_dir, atomic_write, atomic_write_json

EVAL_MAX_ROWS = 20000
HELDOUT_SEED_OFFSET = 0x5EED


@dataclasses.dataclass
class FitResult:
    """A fitted map and the report describing it (JSON-serialisable)."""

    map: AffineMap
    report: dict
    val_scores: Optional[np.ndarray] = None
    grid: Optional[np.ndarray] = None


def _finite_or_none(x: float) -> Optional[float]:
    return float(x) if math.isfinite(x) else None


def heldout_mask(row_index, fraction: float, seed: int = 0) -> np.ndarray:
    """Whether each global row is held out: a hash of its index below ``fraction``.

    Deterministic per row (the same on every process, whatever the batching).
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"held-out fraction must be in [0, 1), got {fraction}")
    idx = np.asarray(row_index, np.int64).reshape(-1)
    if fraction == 0:
        return np.zeros(idx.shape, bool)
    u = (_mix(idx, seed + HELDOUT_SEED_OFFSET) >> np.uint64(11)).astype(np.float64) / 2.0 ** 53
    return u < fraction


def fit_stream(batches: Iterable, *, lam: Any = "auto", folds: int = 5, seed: int = 0,
               heldout: float = 0.0, dtype="float32", scale: Optional[str] = None,
               grid: Optional[Sequence[float]] = None, mesh=None, chunk_rows: Optional[int] = None,
               method: str = "cholesky", total_rows: Optional[int] = None, progress: bool = False,
               metadata: Optional[dict] = None) -> FitResult:
    """The pipeline every fit runs: accumulate (folded), choose lambda, solve, evaluate.

    Args:
      batches: iterable of (z_b [m, d_b], z_a [m, d_a]) pairs, rows in dataset order.
      lam: lambda spec ("auto", "cv:K", "gcv", "rel:F" or a number; see ``LambdaSpec``).
      folds: CV folds accumulated (1 = none; "auto"/"cv" then need a fixed lambda instead).
        A fixed or relative lambda accumulates no folds.
      seed: seed of the fold and held-out assignments.
      heldout: fraction of rows held out of the fit for evaluation (0: none).
      dtype: accumulation dtype, "float32" (jax) or "float64" (numpy on the host).
      scale: None/"none" or "std" (fit on unit-variance source dimensions, undone in W, b).
      grid: absolute lambdas to search (default: 13 values, 1e-6..1e2 x mean eigenvalue).
      mesh: optional jax Mesh for the accumulation.
      chunk_rows: rows per compiled accumulation step.
      method: solve method ("cholesky" or "eigh").
      total_rows: for the progress bar.
      progress: show a tqdm bar.
      metadata: MapMetadata fields to record (models, fingerprints, pooling, layer...).

    Returns:
      FitResult; its map's metadata holds lam, lam_spec, lam_selection, n, heldout.
    """
    spec = LambdaSpec.parse(lam)
    if scale not in (None, "none", "std"):
        raise ValueError(f"scale must be None, 'none' or 'std', got {scale!r}")
    k = int(folds) if spec.needs_folds else 1
    acc = acc_val = None
    keep_b, keep_a, n_keep = [], [], 0
    row = 0
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total_rows, unit="rows", desc="accumulating", mininterval=2.0)
    for zb, za in batches:
        m = int(np.shape(zb)[0])
        if np.shape(za)[0] != m:
            raise AlignInputError(f"source and target batches differ in rows at row {row}: "
                                  f"{m} vs {np.shape(za)[0]}")
        if acc is None:
            if np.ndim(zb) != 2 or np.ndim(za) != 2:
                raise AlignInputError(f"batches must be [m, d] arrays, got shapes {np.shape(zb)} "
                                      f"and {np.shape(za)}")
            d_b, d_a = int(np.shape(zb)[1]), int(np.shape(za)[1])
            acc = FoldedAccumulator(d_b, d_a, folds=k, seed=seed, dtype=dtype, mesh=mesh,
                                    chunk_rows=chunk_rows)
            if heldout:
                acc_val = HostAccumulator(d_b, d_a)
        idx = np.arange(row, row + m)
        is_val = heldout_mask(idx, heldout, seed)
        acc.add(zb, za, mask=None if acc_val is None else ~is_val, row_index=idx)
        if acc_val is not None and is_val.any():
            sel = np.flatnonzero(is_val)
            vb, va = np.asarray(zb)[sel], np.asarray(za)[sel]
            acc_val.add(vb, va, _checked=True)
            if n_keep < EVAL_MAX_ROWS:
                keep_b.append(np.asarray(vb[:EVAL_MAX_ROWS - n_keep], np.float32))
                keep_a.append(np.asarray(va[:EVAL_MAX_ROWS - n_keep], np.float32))
                n_keep += len(keep_b[-1])
        row += m
        if bar is not None:
            bar.update(m)
    if bar is not None:
        bar.close()
    if acc is None or row == 0:
        raise AlignInputError("empty input: no rows to fit")
    fold_stats = acc.fold_stats
    total = acc.stats
    t_acc = time.perf_counter() - t0
    n_train = int(total.n)
    logging.info("accumulated %d rows (%d for fitting) in %.1f s", row, n_train, t_acc)
    if n_train < 2:
        raise AlignInputError(f"only {n_train} training rows; need at least 2")
    if spec.needs_folds and k > n_train:
        raise ValueError(f"{k}-fold cross-validation needs at least {k} rows, got {n_train}: use "
                         "fewer folds or a fixed lambda")
    sc = None if scale in (None, "none") else std_scale(total)

    def cosine(w, b):
        if not keep_b:
            return None
        return (AffineMap(w, b).evaluate(np.concatenate(keep_b), np.concatenate(keep_a))["cosine"],
                int(n_keep))

    result = solve_folds(fold_stats, spec, total=total, val_stats=None if acc_val is None else acc_val.stats,
                         cosine=cosine, grid=grid, scale=sc, method=method,
                         metadata={**(metadata or {}), "scale": scale or "none"})
    result.report.update({
        "n_rows": row, "n_val": 0 if acc_val is None else int(acc_val.stats.n),
        "accumulation_dtype": str(np.dtype(acc.dtype)), "seconds_accumulate": t_acc,
        "seconds_fit": time.perf_counter() - t0, "rows_per_second": row / max(t_acc, 1e-9)})
    return result


def solve_folds(fold_stats: Sequence, spec, *, total=None, val_stats=None,
                cosine: Optional[Callable] = None, grid: Optional[Sequence[float]] = None,
                scale=None, method: str = "cholesky", metadata: Optional[dict] = None,
                extra: Optional[dict] = None) -> FitResult:
    """What every fit does after accumulating: choose lambda, solve in float64, score, describe.

    Args:
      fold_stats: per-fold statistics (their merge is the training total).
      spec: a ``LambdaSpec`` (or anything ``choose_lambda`` takes).
      total: the training total if the caller has it (default: the exact merge of the folds).
      val_stats: statistics of held-out rows (R^2 is scored when they hold >= 2 rows).
      cosine: ``(w, b) -> (mean cosine, rows) or None`` over kept held-out rows.
      grid, scale, method: as in ``fit_stream``.
      metadata: MapMetadata fields to record; an ``extra`` dict in it is merged into the map's.
      extra: additional entries for the map's ``extra`` metadata.

    Returns:
      FitResult whose report holds the training and selection summary; drivers add their own
      timing and provenance keys.
    """
    from linalign.align.solve import solve, train_r2  # noqa: PLC0415 (package name clash)

    if total is None:
        total = merge_all(fold_stats)
    n_train = int(total.n)
    lam_v, info = choose_lambda(fold_stats, spec, grid=grid, scale=scale)
    w, b = solve(total, lam_v, method=method, scale=scale)
    held = None
    if val_stats is not None and int(val_stats.n) >= 2:
        held = {"r2": train_r2(val_stats, w, b), "rows": int(val_stats.n)}
        cos = None if cosine is None else cosine(w, b)
        if cos is not None:
            held.update(cosine=cos[0], cosine_rows=cos[1])
    grid_info = {key: info[key] for key in ("grid", "scores", "fold_rows", "gcv_refused")
                 if key in info}
    extra = {"train_r2": train_r2(total, w, b), **(extra or {}), **grid_info}
    if "scores" in info and info["lam_selection"].startswith("kfold"):
        # CV R^2 at the chosen lambda: 1 - held-out SSE / each fold's own total sum of squares.
        sst = sum(float(np.sum(np.asarray(fs.ss_a, np.float64))) for fs in fold_stats)
        extra["cv_r2"] = 1 - min(info["scores"]) / sst
    md = dict(metadata or {})
    md_extra = md.pop("extra", {}) or {}
    meta = MapMetadata(d_b=total.d_b, d_a=total.d_a, lam=float(lam_v), lam_spec=info["lam_spec"],
                       lam_selection=info["lam_selection"], n=n_train, heldout=held,
                       dtype="float64", extra={**extra, **md_extra}, **md)
    scores = np.asarray(info["scores"]) if "scores" in info else None
    report = {"n_train": n_train, "lambda": float(lam_v), "lambda_spec": info["lam_spec"],
              "lambda_selection": info["lam_selection"], **grid_info,
              "train": {"r2": extra["train_r2"]}}
    if "cv_r2" in extra:
        report["cv_r2"] = extra["cv_r2"]
    if held is not None:
        report["val"] = held
    return FitResult(AffineMap(w, b, meta), report, scores,
                     None if scores is None else np.asarray(info["grid"]))


FINGERPRINT_MAX_BYTES = 1 << 28  # hashing more would cost seconds; larger inputs go unhashed


def _nbytes(x) -> int:
    return int(np.prod(np.shape(x))) * np.dtype(x.dtype).itemsize


def _is_array(x) -> bool:
    return hasattr(x, "shape") and hasattr(x, "dtype")


def _as_source(x) -> Optional[EmbeddingSource]:
    if isinstance(x, EmbeddingSource):
        return x
    if isinstance(x, (str, os.PathLike)):
        return open_embeddings(x)
    if hasattr(x, "iter_batches") and hasattr(x, "num_rows"):  # an opened embedding store
        return open_embeddings(x.path)
    return None


def fit(z_b, z_a=None, lam: Any = "auto", *, folds: int = 5, seed: int = 0, heldout: float = 0.1,
        dtype="float32", scale: Optional[str] = None, grid: Optional[Sequence[float]] = None,
        batch_size: int = 8192, mesh=None, source_model: str = "", target_model: str = "",
        progress: bool = False, **metadata) -> AffineMap:
    """Fits z_a ~ z_b W + b by ridge least squares, choosing lambda by streamed k-fold CV.

    Args:
      z_b: source embeddings: an [n, d_b] array (numpy or jax), an embedding store path or
        object, or an iterable of (z_b, z_a) batches (then ``z_a`` is None).
      z_a: target embeddings, same rows ([n, d_a] array or store), or None for batches.
      lam: "auto" (5-fold CV from per-fold statistics), "cv:K", "gcv", "rel:F" or a number.
      folds: CV folds. seed: fold / held-out assignment seed.
      heldout: fraction of rows held out of the fit to score the map (R^2, cosine); 0 for none.
      dtype: accumulation dtype ("float32" or "float64").
      scale: None or "std" (per-dimension source scaling, undone exactly in W and b).
      grid: absolute lambdas to search.
      batch_size: rows per streamed batch for arrays and stores.
      mesh: optional jax Mesh for the accumulation.
      source_model, target_model: names recorded in the map (taken from stores if empty).
      progress: show a progress bar.
      **metadata: further MapMetadata fields (pooling, layer, fingerprints, extra).

    Returns:
      the AffineMap; ``repr`` shows lambda, how it was chosen, n and held-out scores.
    """
    meta = dict(metadata)
    total_rows = None
    if z_a is None:
        if _is_array(z_b) or _as_source(z_b) is not None:
            raise ValueError("z_a is missing: give both arrays/stores, or an iterable of "
                             "(z_b, z_a) batches as the only input")
        batches = iter(z_b)
    elif _is_array(z_b) and _is_array(z_a):
        if np.shape(z_b)[0] != np.shape(z_a)[0]:
            raise AlignInputError(f"source has {np.shape(z_b)[0]} rows, target {np.shape(z_a)[0]}: "
                                  "rows must be the same texts")
        total_rows = int(np.shape(z_b)[0])
        if _nbytes(z_b) + _nbytes(z_a) <= FINGERPRINT_MAX_BYTES:
            meta.setdefault("source_fingerprint", "sha256:" + array_fingerprint(z_b))
            meta.setdefault("target_fingerprint", "sha256:" + array_fingerprint(z_a))
        batches = ((z_b[i:i + batch_size], z_a[i:i + batch_size])
                   for i in range(0, total_rows, batch_size))
    else:
        src, tgt = _as_source(z_b), _as_source(z_a)
        if src is None or tgt is None:
            raise TypeError("fit takes two arrays, two stores (paths or opened stores), or one "
                            f"iterable of (z_b, z_a) batches; got {type(z_b).__name__} and "
                            f"{type(z_a).__name__}")
        check_paired(src, tgt)
        total_rows = src.num_rows
        source_model, target_model = source_model or src.model, target_model or tgt.model
        meta.setdefault("source_fingerprint", src.data_fingerprint)
        meta.setdefault("target_fingerprint", tgt.data_fingerprint)
        meta.setdefault("pooling", src.pooling if src.pooling == tgt.pooling
                        else f"{src.pooling}|{tgt.pooling}")
        batches = zip(src.iter_batches(batch_size), tgt.iter_batches(batch_size))
    if total_rows is not None and LambdaSpec.parse(lam).needs_folds and folds > total_rows:
        raise ValueError(f"{folds}-fold cross-validation needs at least {folds} rows, got "
                         f"{total_rows}: use fewer folds or a fixed lambda")
    meta.update(source_model=source_model, target_model=target_model)
    return fit_stream(batches, lam=lam, folds=folds, seed=seed, heldout=heldout, dtype=dtype,
                      scale=scale, grid=grid, mesh=mesh, total_rows=total_rows, progress=progress,
                      metadata=meta).map


def fit_sources(src: EmbeddingSource, tgt: EmbeddingSource, *, lam: Any = "auto",
                lam_grid: Optional[Sequence[float]] = None, val_fraction: float = 0.1,
                folds: int = 5, seed: int = 0, batch_size: int = 8192, mesh=None,
                method: str = "cholesky", dtype="float32", scale: Optional[str] = None,
                progress: bool = True) -> FitResult:
    """``fit_stream`` over two EmbeddingSources, with the report the CLI writes.

    Args:
      src: source-model embeddings (Z_B), [n, d_b].
      tgt: target-model embeddings (Z_A), [n, d_a], same texts in the same order.
      lam: lambda spec (default "auto": k-fold CV from per-fold statistics); a number is an
        absolute lambda. ``lam_grid`` gives the candidates searched.
      val_fraction: fraction of rows held out (hash of the row index, fixed by ``seed``).
      folds: CV folds.
      batch_size: rows per accumulation step. mesh: optional jax Mesh.
      method: solve method. dtype: accumulation dtype. scale: None or "std".
      progress: show a tqdm bar.

    Returns:
      FitResult with the map (fitted on the training rows) and a report dict.
    """
    check_paired(src, tgt)
    res = fit_stream(
        zip(src.iter_batches(batch_size), tgt.iter_batches(batch_size)), lam=lam, folds=folds,
        seed=seed, heldout=val_fraction, dtype=dtype, scale=scale, grid=lam_grid, mesh=mesh,
        method=method, total_rows=src.num_rows, progress=progress,
        metadata={"source_model": src.model, "target_model": tgt.model,
                  "source_fingerprint": src.data_fingerprint,
                  "target_fingerprint": tgt.data_fingerprint,
                  "pooling": src.pooling if src.pooling == tgt.pooling
                  else f"{src.pooling}|{tgt.pooling}",
                  "data_fingerprint": src.data_fingerprint or tgt.data_fingerprint})
    if res.report["n_rows"] != src.num_rows:
        raise AlignInputError(f"read {res.report['n_rows']} rows but the sources declare "
                              f"{src.num_rows}")
    res.report = {"source": str(src.path), "target": str(tgt.path), "source_model": src.model,
                  "target_model": tgt.model, "d_b": src.dim, "d_a": tgt.dim, **res.report}
    return res


def _plot_scores(result: FitResult, path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ok = np.isfinite(result.val_scores)
    ax.loglog(result.grid[ok], result.val_scores[ok], "o-")
    ax.axvline(result.report["lambda"], color="k", ls="--", lw=1)
    ax.set_xlabel("lambda")
    ax.set_ylabel("GCV score" if result.report["lambda_selection"] == "gcv"
                  else "k-fold held-out squared error")
    ax.set_title(f"{result.report['source_model']} -> {result.report['target_model']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _markdown(report: dict) -> str:
    rows = [("source", f"{report['source_model']} (d={report['d_b']})"),
            ("target", f"{report['target_model']} (d={report['d_a']})"),
            ("rows train / held-out", f"{report['n_train']} / {report['n_val']}"),
            ("lambda", f"{report['lambda']:.4g} ({report['lambda_selection']}, asked "
                       f"{report['lambda_spec']})"),
            ("train R^2", f"{report['train']['r2']:.4f}")]
    if "cv_r2" in report:
        rows.append(("k-fold CV R^2", f"{report['cv_r2']:.4f}"))
    if "val" in report:
        rows.append(("held-out R^2", f"{report['val']['r2']:.4f}"))
        if "cosine" in report["val"]:
            rows.append(("held-out cosine", f"{report['val']['cosine']:.4f}"))
    rows.append(("rows/s accumulated", f"{report['rows_per_second']:.0f}"))
    return "| quantity | value |\n|---|---|\n" + "".join(f"| {a} | {b} |\n" for a, b in rows)


def write_fit(result: FitResult, out_dir, overwrite: bool = False) -> pathlib.Path:
    """Writes map.safetensors, report.json, report.md (and lambda.png) into ``out_dir``.

    Everything is written into a hidden temporary sibling first and renamed into place, so a
    failure leaves no partial output.
    """
    out = pathlib.Path(out_dir).absolute()
    with atomic_dir(out, replace=overwrite) as tmp:
        result.map.save(tmp / "map.safetensors")
        atomic_write_json(tmp / "report.json", result.report, sort_keys=False)
        atomic_write(tmp / "report.md", _markdown(result.report))
        if result.val_scores is not None:
            _plot_scores(result, tmp / "lambda.png")
    return out
