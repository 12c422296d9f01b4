"""End-to-end fitting of an AffineMap from two row-aligned embedding sources.

One streaming pass: every batch goes into the accumulator with held-out rows masked out, and
the held-out rows are kept in memory for lambda selection and evaluation. Then one solve.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import sys
import time
from typing import Optional, Sequence

import numpy as np
from absl import logging

import linalign.align.solve  # noqa: F401  (the package re-exports a function of the same name)
from linalign.align.affine_map import AffineMap, MapMetadata
from linalign.atomic import atomic_dir, atomic_write, atomic_write_json
from linalign.align.sources import EmbeddingSource, check_paired
from linalign.align.stats import Accumulator
from linalign.align.validate import AlignInputError

solve_lib = sys.modules["linalign.align.solve"]

EVAL_MAX_ROWS = 20000


@dataclasses.dataclass
class FitResult:
    """A fitted map and the report describing it (JSON-serialisable)."""

    map: AffineMap
    report: dict
    val_scores: Optional[np.ndarray] = None
    grid: Optional[np.ndarray] = None


def _finite_or_none(x: float) -> Optional[float]:
    return float(x) if math.isfinite(x) else None


def _split_mask(n: int, val_fraction: float, seed: int) -> np.ndarray:
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    is_val = np.zeros(n, bool)
    n_val = int(round(n * val_fraction))
    if n_val:
        is_val[np.random.default_rng(seed).permutation(n)[:n_val]] = True
    return is_val


def fit_sources(src: EmbeddingSource, tgt: EmbeddingSource, *, lam: Optional[float] = None,
                lam_grid: Optional[Sequence[float]] = None, val_fraction: float = 0.1,
                seed: int = 0, batch_size: int = 8192, mesh=None, method: str = "cholesky",
                progress: bool = True) -> FitResult:
    """Streams both sources, accumulates statistics on the training rows, solves.

    Args:
      src: source-model embeddings (Z_B), [n, d_b].
      tgt: target-model embeddings (Z_A), [n, d_a], same texts in the same order.
      lam: fixed ridge strength; exclusive with ``lam_grid``.
      lam_grid: candidate lambdas, chosen by held-out MSE (val_fraction > 0) or GCV. If both
        are None, a default grid scaled by the mean eigenvalue of C_bb is searched.
      val_fraction: fraction of rows held out (random, fixed by ``seed``).
      batch_size: rows per accumulation step.
      mesh: optional jax Mesh for the accumulation.
      method: solve method for a fixed lambda ("cholesky" or "eigh").
      progress: show a tqdm bar.

    Returns:
      FitResult with the map (fitted on the training rows) and a report dict.
    """
    if lam is not None and lam_grid is not None:
        raise ValueError("give either lam or lam_grid, not both")
    check_paired(src, tgt)
    n = src.num_rows
    is_val = _split_mask(n, val_fraction, seed)
    if n - is_val.sum() < 2:
        raise AlignInputError(f"only {n - int(is_val.sum())} training rows; need at least 2")
    acc = Accumulator(src.dim, tgt.dim, mesh=mesh)
    val_b, val_a = [], []
    # The first training rows (up to EVAL_MAX_ROWS) are kept for the training cosine and CKA.
    tr_b, tr_a, n_tr = [], [], 0
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=n, unit="rows", desc="accumulating", mininterval=2.0)
    row = 0
    for zb, za in zip(src.iter_batches(batch_size), tgt.iter_batches(batch_size)):
        m = zb.shape[0]
        if za.shape[0] != m:
            raise AlignInputError(f"sources went out of step at row {row}")
        v = is_val[row:row + m]
        acc.add(zb, za, mask=~v)
        if n_tr < EVAL_MAX_ROWS:
            keep = np.flatnonzero(~v)[:EVAL_MAX_ROWS - n_tr]
            tr_b.append(np.asarray(zb[keep], np.float32))
            tr_a.append(np.asarray(za[keep], np.float32))
            n_tr += len(keep)
        if v.any():
            val_b.append(np.asarray(zb[v], np.float32))
            val_a.append(np.asarray(za[v], np.float32))
        row += m
        if bar is not None:
            bar.update(m)
    if bar is not None:
        bar.close()
    if row != n:
        raise AlignInputError(f"read {row} rows but the sources declare {n}")
    stats = acc.stats
    t_acc = time.perf_counter() - t0
    logging.info("accumulated %d rows (%d train) in %.1f s", n, int(stats.n), t_acc)
    zb_val = np.concatenate(val_b) if val_b else None
    za_val = np.concatenate(val_a) if val_a else None

    selection, scores, grid = "fixed", None, None
    if lam is None:
        grid = np.asarray(lam_grid if lam_grid is not None else solve_lib.default_lambda_grid(stats),
                          np.float64)
        if zb_val is not None and len(zb_val) >= 2:
            lam, scores = solve_lib.select_lambda(stats, zb_val, za_val, grid)
            selection = "held-out MSE"
        else:
            lam, scores = solve_lib.select_lambda_gcv(stats, grid)
            selection = "GCV"
        logging.info("selected lambda %.4g by %s", lam, selection)
    w, b = solve_lib.solve(stats, lam, method=method if grid is None else "eigh")
    t_fit = time.perf_counter() - t0

    meta = MapMetadata(
        d_b=src.dim, d_a=tgt.dim, source_model=src.model, target_model=tgt.model, lam=float(lam),
        pooling=src.pooling if src.pooling == tgt.pooling else f"{src.pooling}|{tgt.pooling}",
        n=int(stats.n), data_fingerprint=src.data_fingerprint or tgt.data_fingerprint)
    amap = AffineMap(w, b, meta)
    report = {
        "source": str(src.path), "target": str(tgt.path),
        "source_model": src.model, "target_model": tgt.model,
        "d_b": src.dim, "d_a": tgt.dim, "n_rows": n, "n_train": int(stats.n),
        "n_val": 0 if zb_val is None else int(len(zb_val)),
        "lambda": float(lam), "lambda_selection": selection,
        "lambda_grid": None if grid is None else [float(x) for x in grid],
        "lambda_scores": None if scores is None else [float(x) for x in scores],
        "condition_number": _finite_or_none(solve_lib.RidgePath(stats).condition(float(lam))),
        "train": {"r2": solve_lib.train_r2(stats, w, b)},
        "seconds_accumulate": t_acc, "seconds_fit": t_fit,
        "rows_per_second": n / max(t_acc, 1e-9),
    }
    from linalign import metrics
    tr_b, tr_a = np.concatenate(tr_b), np.concatenate(tr_a)
    report["train"].update(rows_for_cosine=int(len(tr_b)),
                           cosine=amap.evaluate(tr_b, tr_a)["cosine"])
    if zb_val is not None:
        report["val"] = amap.evaluate(zb_val, za_val)
        # CKA on held-out rows when there are any, else on the kept training rows.
        cka_b, cka_a, where = zb_val[:EVAL_MAX_ROWS], za_val[:EVAL_MAX_ROWS], "held-out"
    else:
        cka_b, cka_a, where = tr_b, tr_a, "train"
    report["cka"] = {"rows": int(len(cka_b)), "on": where,
                     "source_vs_target": float(metrics.linear_cka(cka_b, cka_a)),
                     "mapped_vs_target": float(metrics.linear_cka(np.asarray(amap(cka_b)), cka_a))}
    meta.extra.update({"lambda_selection": selection, "train_r2": report["train"]["r2"],
                       **({"val_r2": report["val"]["r2"]} if "val" in report else {})})
    return FitResult(amap, report, scores, grid)


def _plot_scores(result: FitResult, path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ok = np.isfinite(result.val_scores)
    ax.loglog(result.grid[ok], result.val_scores[ok], "o-")
    ax.axvline(result.report["lambda"], color="k", ls="--", lw=1)
    ax.set_xlabel("lambda")
    ax.set_ylabel("held-out MSE" if result.report["lambda_selection"] != "GCV" else "GCV score")
    ax.set_title(f"{result.report['source_model']} -> {result.report['target_model']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _markdown(report: dict) -> str:
    rows = [("source", f"{report['source_model']} (d={report['d_b']})"),
            ("target", f"{report['target_model']} (d={report['d_a']})"),
            ("rows train / held-out", f"{report['n_train']} / {report['n_val']}"),
            ("lambda", f"{report['lambda']:.4g} ({report['lambda_selection']})"),
            ("train R^2", f"{report['train']['r2']:.4f}"),
            ("train cosine", f"{report['train']['cosine']:.4f}")]
    if "val" in report:
        rows += [("held-out R^2", f"{report['val']['r2']:.4f}"),
                 ("held-out cosine", f"{report['val']['cosine']:.4f}")]
    rows += [(f"CKA source vs target ({report['cka']['on']})",
              f"{report['cka']['source_vs_target']:.4f}"),
             ("CKA mapped vs target", f"{report['cka']['mapped_vs_target']:.4f}")]
    return "| quantity | value |\n|---|---|\n" + "".join(f"| {a} | {b} |\n" for a, b in rows)


def write_fit(result: FitResult, out_dir, overwrite: bool = False) -> pathlib.Path:
    """Writes map/, report.json, report.md (and lambda.png) into ``out_dir`` atomically.

    Everything is written into a hidden temporary sibling first and renamed into place, so a
    failure leaves no partial output.
    """
    out = pathlib.Path(out_dir).absolute()
    with atomic_dir(out, replace=overwrite) as tmp:
        result.map.save(tmp / "map")
        atomic_write_json(tmp / "report.json", result.report, sort_keys=False)
        atomic_write(tmp / "report.md", _markdown(result.report))
        if result.val_scores is not None:
            _plot_scores(result, tmp / "lambda.png")
    return out
