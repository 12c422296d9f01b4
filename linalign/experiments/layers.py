"""Layer study: which layer of a source model aligns best with the target's final layer?

One streaming pass over the chat-format fitting conversations (``tokenpairs``): each batch of
texts goes once through both models with every hidden state kept (``output_hidden_states``:
index 0 the embeddings, index L the final layer after the final norm), tokens are paired by
character offsets, and the rows of every layer feed per-fold sufficient statistics
(``FoldedAccumulator``, 5 folds by global row index):

* for each layer l of source B: B_l -> [A's final layer] (and, for the layers of a coarse grid,
  B_l -> [A's grid layers stacked side by side], whose column blocks are the statistics of each
  layer pair: the C_bb of B_l is shared and the cross products of a target block are exactly
  those of that pair);
* for each grid layer of A: its own centred Gram matrix on the same rows (for CKA);
* both directions (SmolLM2 -> Gemma3 and Gemma3 -> SmolLM2) in the same pass.

From the statistics alone: per layer pair, the lambda policy (``solve_folds``), the cross-validated
R^2 (exact k-fold from per-fold statistics) and linear CKA (``cka_from_stats``). For the best and
the last source layer against A's final layer: classification through the map (a logistic head
on A's mean-pooled final states of BBC News, applied to B's mapped layer-l states) and
teacher-forced next-token agreement on held-out conversations.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np
from absl import logging

from linalign.eval.report import Report
from linalign.experiments import common as C
from linalign.experiments import tokenpairs as TP
from linalign.experiments.pairs import PairRunner


def grid_layers(num_states: int, stride: int) -> list[int]:
    """Hidden-state indices 0, stride, 2 stride, ... and always the last one."""
    g = list(range(0, num_states, stride))
    return g if g[-1] == num_states - 1 else g + [num_states - 1]


def cka_from_stats(c_bb: np.ndarray, c_ba: np.ndarray, c_aa: np.ndarray) -> float:
    """Linear CKA from centred (co)variance sums: ||C_ba||_F^2 / (||C_bb||_F ||C_aa||_F).

    Equal to ``linalign.metrics.linear_cka`` on the rows the sums were accumulated from.
    """
    c_bb, c_ba, c_aa = (np.asarray(x, np.float64) for x in (c_bb, c_ba, c_aa))
    return float(np.sum(c_ba ** 2) / (np.linalg.norm(c_bb) * np.linalg.norm(c_aa)))


def hidden_all(model):
    """A jitted (params, ids [B, T], mask [B, T]) -> [L + 1, B, T, d] float32 of every hidden state."""
    import jax
    import jax.numpy as jnp

    mod = model.module

    def f(params, ids, mask):
        out = mod.apply({"params": params}, ids, mask, output_hidden_states=True, return_logits=False)
        return jnp.stack(out.hidden_states).astype(jnp.float32)

    return jax.jit(f)


def _encode(model, texts, max_length: int):
    from linalign.extract.pipeline import bucket_lengths

    enc = model.tokenizer.encode_batch(texts, max_length=max_length, truncation="silent", padding_side="right")
    t = next(b for b in bucket_lengths(max_length) if b >= int(np.max(enc.lengths)))
    ids = np.zeros((len(texts), t), np.int32)
    mask = np.zeros((len(texts), t), np.int32)
    ids[:, : enc.ids.shape[1]] = enc.ids[:, :t]
    mask[:, : enc.mask.shape[1]] = enc.mask[:, :t]
    return enc, ids, mask


def states_batches(models: Sequence, texts_by_model: Sequence[Sequence[str]], batch_size: int, max_length: int):
    """Yields, per batch of texts, for each model: (per-text ids, per-text offsets, [L+1, n, T, d]).

    The texts of model k are ``texts_by_model[k]`` (the same conversations in each model's
    layout); batch i holds texts [i * batch_size, (i + 1) * batch_size) of every model.
    """
    fns = [hidden_all(m) for m in models]
    n = len(texts_by_model[0])
    for s in range(0, n, batch_size):
        out = []
        for m, fn, texts in zip(models, fns, texts_by_model):
            enc, ids, mask = _encode(m, list(texts[s:s + batch_size]), max_length)
            h = np.asarray(fn(m.params, ids, mask))
            lens = np.asarray(enc.lengths)
            out.append(([enc.ids[i, :lens[i]] for i in range(len(lens))],
                        [enc.offsets[i, :lens[i]] for i in range(len(lens))], h, lens))
        yield s, out


class Direction:
    """Accumulators of one direction, source B -> target A (see the module docstring)."""

    def __init__(self, nb: int, db: int, na: int, da: int, b_grid: Sequence[int], a_grid: Sequence[int],
                 folds: int = 5, seed: int = 0):
        from linalign.align.folded import FoldedAccumulator

        self.nb, self.na, self.db, self.da = nb, na, db, da
        self.b_grid, self.a_grid = list(b_grid), list(a_grid)
        self.targets = {lb: (self.a_grid if lb in self.b_grid else [na - 1]) for lb in range(nb)}
        self.acc = {lb: FoldedAccumulator(db, da * len(t), folds=folds, seed=seed)
                    for lb, t in self.targets.items()}
        self.gram = {la: FoldedAccumulator(da, da, folds=1) for la in self.a_grid}
        self.rows = 0
        self._merged: dict = {}

    def merged(self, lb: int):
        """All rows' statistics of source layer lb (the exact merge of its folds), computed once."""
        if lb not in self._merged:
            self._merged[lb] = self.acc[lb].stats
        return self._merged[lb]

    def add(self, hb_lnd: np.ndarray, ha_lnd: np.ndarray) -> None:
        """Adds paired rows: hb [L_b + 1, n, d_b] and ha [L_a + 1, n, d_a] (the same n tokens)."""
        n = hb_lnd.shape[1]
        if n == 0:
            return
        self._merged.clear()
        idx = np.arange(self.rows, self.rows + n)
        for lb, t in self.targets.items():
            za = ha_lnd[t].transpose(1, 0, 2).reshape(n, -1)
            self.acc[lb].add(hb_lnd[lb], za, row_index=idx)
        for la in self.a_grid:
            self.gram[la].add(ha_lnd[la], ha_lnd[la])
        self.rows += n

    def pair_folds(self, lb: int, la: int) -> list:
        """Per-fold SufficientStats of the pair (B layer lb, A layer la): a column block of lb's."""
        k = self.targets[lb].index(la)
        sl = slice(k * self.da, (k + 1) * self.da)
        return [s.replace(mean_a=s.mean_a[sl], c_ba=s.c_ba[:, sl], ss_a=s.ss_a[sl], mean_a_lo=s.mean_a_lo[sl])
                for s in self.acc[lb].fold_stats]


def accumulate(models, lays, n_texts: int, batch_size: int, max_length: int, b_grid, a_grid,
               folds: int = 5, seed: int = 0, progress_every: int = 8) -> dict:
    """The one pass: both directions' statistics for every layer, from ``n_texts`` conversations.

    Args:
      models: (S, G) loaded causal models; direction "S->G" has S as source, "G->S" the reverse.
      lays: the two models' ``ChatLayout`` lists (same conversations).
      b_grid, a_grid: hidden-state grids of S and of G for the all-pairs part (S source).

    Returns:
      {"S->G": Direction, "G->S": Direction, "rows": {...}, "seconds": float}
    """
    s_mod, g_mod = models
    ns, ng = s_mod.config.num_layers + 1, g_mod.config.num_layers + 1
    ds, dg = s_mod.config.hidden_size, g_mod.config.hidden_size
    dirs = {"S->G": Direction(ns, ds, ng, dg, b_grid, a_grid, folds, seed),
            "G->S": Direction(ng, dg, ns, ds, [], [ns - 1], folds, seed)}
    texts = [[lay.text for lay in lays[0][:n_texts]], [lay.text for lay in lays[1][:n_texts]]]
    t0 = time.time()
    for s, ((ids_s, off_s, h_s, _), (ids_g, off_g, h_g, _)) in states_batches(models, texts, batch_size, max_length):
        k = len(ids_s)
        ls, lg = lays[0][s:s + k], lays[1][s:s + k]
        for key, (ida, offa, ha, la_), (idb, offb, hb, lb_) in (
                ("S->G", (ids_g, off_g, h_g, lg), (ids_s, off_s, h_s, ls)),
                ("G->S", (ids_s, off_s, h_s, ls), (ids_g, off_g, h_g, lg))):
            p = TP.pair_tokens(offa, ida, la_, offb, lb_)
            dirs[key].add(hb[:, p.text, p.b_pos], ha[:, p.text, p.a_pos])
        if (s // batch_size) % progress_every == 0:
            logging.info("layer pass: %d of %d texts, %d/%d rows, %.0f s", s + k, n_texts, dirs["S->G"].rows,
                         dirs["G->S"].rows, time.time() - t0)
    return {**dirs, "seconds": time.time() - t0}


def solve_pair(direction: Direction, lb: int, la: int, spec: str):
    """(FitResult, CKA) of one layer pair from the accumulated statistics.

    The FitResult's report gets "cv_r2" (exact k-fold R^2 at the chosen lambda, as
    ``solve_folds`` defines it) whatever the lambda spec.
    """
    from linalign.align.fitting import solve_folds
    from linalign.align.lambdas import kfold_sse

    folds = direction.pair_folds(lb, la)
    res = solve_folds(folds, spec)
    if "cv_r2" not in res.report:
        sse = float(kfold_sse(folds, [res.report["lambda"]]).sum())
        res.report["cv_r2"] = 1 - sse / sum(float(np.sum(np.asarray(f.ss_a, np.float64))) for f in folds)
    merged = direction.merged(lb)
    k = direction.targets[lb].index(la)
    c_ba = np.asarray(merged.c_ba)[:, k * direction.da:(k + 1) * direction.da]
    if la in direction.gram:
        cka = cka_from_stats(merged.c_bb, c_ba, direction.gram[la].stats.c_bb)
    else:
        cka = float("nan")
    return res, cka


def heldout_teacher_forced(models, lays, texts_idx, layer_maps: dict, batch_size: int, max_length: int) -> dict:
    """Teacher-forced agreement of maps from chosen source layers, on held-out conversations.

    Args:
      models: (S, G); lays: their layouts; texts_idx: held-out conversation indices.
      layer_maps: {(direction, source layer): AffineMap} with direction "S->G" or "G->S".

    Returns:
      {(direction, layer): generation.teacher_forced(...) dict}.
    """
    from linalign.experiments.generation import teacher_forced, top1_of

    texts = [[lays[0][i].text for i in texts_idx], [lays[1][i].text for i in texts_idx]]
    sub = [[lays[0][i] for i in texts_idx], [lays[1][i] for i in texts_idx]]
    got: dict = {k: ([], [], []) for k in layer_maps}
    for s, ((ids_s, off_s, h_s, _), (ids_g, off_g, h_g, _)) in states_batches(models, texts, batch_size, max_length):
        k = len(ids_s)
        ls, lg = sub[0][s:s + k], sub[1][s:s + k]
        for key in {d for d, _ in layer_maps}:
            if key == "S->G":
                p = TP.pair_tokens(off_g, ids_g, lg, off_s, ls)
                ha, hb = h_g, h_s
            else:
                p = TP.pair_tokens(off_s, ids_s, ls, off_g, lg)
                ha, hb = h_s, h_g
            keep = p.predicts_response
            for (d, lb), amap in layer_maps.items():
                if d != key:
                    continue
                za = ha[-1, p.text[keep], p.a_pos[keep]]
                zb = hb[lb, p.text[keep], p.b_pos[keep]]
                got[(d, lb)][0].append(za)
                got[(d, lb)][1].append(C.apply_map(amap, zb))
                got[(d, lb)][2].append(p.next_a[keep])
    out = {}
    for (d, lb), (za, zm, nxt) in got.items():
        tgt = models[1] if d == "S->G" else models[0]
        top1 = top1_of(tgt)
        out[(d, lb)] = teacher_forced(top1(np.concatenate(za)), top1(np.concatenate(zm)), np.concatenate(nxt))
    return out


def classification_through_map(cfg, source: str, target: str, layer_maps: dict, n_texts: int = 600) -> dict:
    """Topic accuracy of a head on the target's mean-pooled final states, fed the source's mapped states.

    BBC News (title and first paragraphs, 300 characters, 5 topics), 30% held out. The per-token
    map applied to mean-pooled source states equals the mean of the mapped token states (the map
    is affine). Returns {"native": acc, layer: acc, ...}.
    """
    from linalign.eval.cache import hidden_states
    from linalign.eval.head import fit_head

    texts, labels, _ = C.load_texts("bbc_news", n_texts, cfg, seed_offset=3, need_labels=True)
    tr, te = C.split(len(texts), labels, 0.3, cfg.seed)
    y = np.asarray(labels)
    mt, ms = C.load_model(target), C.load_model(source)
    za = np.asarray(hidden_states(mt, texts, pooling="mean", max_length=64, batch_size=cfg.batch_size,
                                  cache_dir=cfg.cache_dir), np.float32)
    head = fit_head(za[tr], list(y[tr]))  # lbfgs to convergence: deterministic
    out = {"native": head.accuracy(za[te], head_labels(head, y[te])), "n_train": int(len(tr)), "n_test": int(len(te))}
    for lb, amap in layer_maps.items():
        zb = np.asarray(hidden_states(ms, texts, pooling="mean", max_length=64, batch_size=cfg.batch_size,
                                      cache_dir=cfg.cache_dir, layer=int(lb)), np.float32)
        out[int(lb)] = head.accuracy(C.apply_map(amap, zb[te]), head_labels(head, y[te]))
    return out


def head_labels(head, labels) -> np.ndarray:
    """Class indices of ``labels`` in the head's class order."""
    names = list(head.label_names)
    return np.asarray([names.index(v) for v in labels])


def run_layers(cfg: C.StudyConfig, name: str = "layers") -> Report:
    """The layer study on the two causal models of ``cfg.models`` (module docstring)."""
    rep = Report(name, cfg.out_root, "Which layer to align? Per-layer R^2 and CKA from one streaming pass")
    runner = PairRunner(rep, cfg)
    causal = [m for m in cfg.models if C.load_model(m).is_causal]
    if len(causal) != 2:
        raise ValueError(f"the layer study takes exactly two causal models; got {causal} among {list(cfg.models)}")
    s_name = TP.WRITER if TP.WRITER in causal else causal[0]
    g_name = [m for m in causal if m != s_name][0]
    ms, mg = C.load_model(s_name), C.load_model(g_name)
    data = TP.chat_data(cfg)
    lays = [TP.layouts(ms, data.records), TP.layouts(mg, data.records)]
    n_texts = min(int(cfg.n_texts), data.n_fit)
    ns, ng = ms.config.num_layers + 1, mg.config.num_layers + 1
    s_grid, g_grid = grid_layers(ns, LAYER_STRIDE[0]), grid_layers(ng, LAYER_STRIDE[1])
    S, G = C.short(s_name), C.short(g_name)
    acc = accumulate((ms, mg), lays, n_texts, cfg.batch_size, cfg.max_length, s_grid, g_grid, seed=cfg.seed)
    rep.text(f"One pass over {n_texts} chat-format fitting conversations (the generation study's, "
             f"each model in its own template) through both models with every hidden state kept "
             f"(index 0 = token embeddings, the last = after the final norm): "
             f"{acc['S->G'].rows} paired rows with {G} as target, {acc['G->S'].rows} with {S} as target, "
             f"{acc['seconds']:.0f} s. Per layer pair, lambda by the lambda policy (`{cfg.lam}`), R^2 is the "
             f"exact 5-fold cross-validated R^2 at that lambda (from per-fold statistics), CKA is linear "
             f"CKA of the centred states. All pairs on a grid ({S} states {s_grid}, {G} states {g_grid}); "
             f"every source layer against the target's final layer in both directions.\n")
    res: dict = {"rows": {"S->G": acc["S->G"].rows, "G->S": acc["G->S"].rows}, "pass_seconds": acc["seconds"],
                 "source_models": {"S->G": S, "G->S": G}, "s_grid": s_grid, "g_grid": g_grid}
    t0 = time.time()
    final = {}
    for key, d in (("S->G", acc["S->G"]), ("G->S", acc["G->S"])):
        rows = []
        for lb in range(d.nb):
            fr, cka = solve_pair(d, lb, d.na - 1, cfg.lam)
            rows.append({"layer": lb, "cv_r2": fr.report["cv_r2"], "train_r2": fr.report["train"]["r2"],
                         "cka": cka, "lam": fr.report["lambda"], "map": fr.map})
        final[key] = rows
    grid_r2 = np.full((len(s_grid), len(g_grid)), np.nan)
    grid_cka = np.full_like(grid_r2, np.nan)
    for i, lb in enumerate(s_grid):
        for j, la in enumerate(g_grid):
            fr, cka = solve_pair(acc["S->G"], lb, la, cfg.lam)
            grid_r2[i, j], grid_cka[i, j] = fr.report["cv_r2"], cka
    res["solve_seconds"] = time.time() - t0
    res["grid"] = {"cv_r2": grid_r2.tolist(), "cka": grid_cka.tolist()}
    res["to_final"] = {k: [{kk: vv for kk, vv in r.items() if kk != "map"} for r in v] for k, v in final.items()}
    held = list(range(data.n_fit, len(data.records)))
    chosen = {}
    for key, rows in final.items():
        best = max(rows, key=lambda r: r["cv_r2"])
        chosen[key] = sorted({best["layer"], rows[-1]["layer"]})
        res.setdefault("best_layer", {})[key] = best["layer"]
    maps = {(k, lb): final[k][lb]["map"] for k, lbs in chosen.items() for lb in lbs}
    t0 = time.time()
    res["teacher_forced"] = {f"{k} layer {lb}": v for (k, lb), v in
                             heldout_teacher_forced((ms, mg), lays, held, maps, cfg.batch_size, cfg.max_length).items()}
    res["classification"] = {
        "S->G": runner.pair("classification S->G", lambda: classification_through_map(
            cfg, s_name, g_name, {lb: maps[("S->G", lb)] for lb in chosen["S->G"]})),
        "G->S": runner.pair("classification G->S", lambda: classification_through_map(
            cfg, g_name, s_name, {lb: maps[("G->S", lb)] for lb in chosen["G->S"]}))}
    res["eval_seconds"] = time.time() - t0
    rep.results[name] = res
    runner.start(1)
    runner.publish(lambda: _render(rep, res, S, G, s_grid, g_grid, final, chosen))
    runner.finish(lambda: _render(rep, res, S, G, s_grid, g_grid, final, chosen))
    return rep


LAYER_STRIDE = (3, 2)  # grid strides over the source's (SmolLM2, 31 states) and target's (Gemma3, 19) states


def _render(rep, res, S, G, s_grid, g_grid, final, chosen) -> None:
    names = {"S->G": f"{S} -> {G}", "G->S": f"{G} -> {S}"}
    for key, rows in final.items():
        rep.table(["source layer", "CV R2", "train R2", "CKA", "lambda"],
                  [[r["layer"], r["cv_r2"], r["train_r2"], r["cka"], r["lam"]] for r in rows],
                  caption=f"{names[key]}: every source layer against the target's final layer "
                          f"(best layer {res['best_layer'][key]}, last {rows[-1]['layer']})")
    for key, rows in final.items():
        x = [r["layer"] for r in rows]
        rep.curves(f"to_final_{key.replace('->', '_to_')}", x,
                   {"CV R^2": [r["cv_r2"] for r in rows], "CKA": [r["cka"] for r in rows]},
                   xlabel="source hidden state (0 = embeddings)", ylabel="value",
                   title=f"{names[key]} final layer")
    rep.heatmap("grid_cv_r2", np.array(res["grid"]["cv_r2"]), [f"{S} {i}" for i in s_grid],
                [f"{G} {j}" for j in g_grid], title=f"CV R^2, {S} layer -> {G} layer")
    rep.heatmap("grid_cka", np.array(res["grid"]["cka"]), [f"{S} {i}" for i in s_grid],
                [f"{G} {j}" for j in g_grid], title=f"linear CKA, {S} layer vs {G} layer")
    tf = res.get("teacher_forced", {})
    cls = res.get("classification", {})
    rows = []
    for key, lbs in chosen.items():
        for lb in lbs:
            t = tf.get(f"{key} layer {lb}", {})
            c = cls.get(key) or {}
            rows.append([names[key], lb, final[key][lb]["cv_r2"], t.get("top1_agreement"), t.get("next_acc_kept"),
                         c.get(lb), c.get("native")])
    rep.table(["direction", "source layer", "CV R2", "TF top-1 agreement", "TF next-token acc kept",
               "BBC topic acc through map", "target native acc"], rows,
              caption="Best and last source layer: what the map keeps")
