"""Controls of the generation study: the self-map and self-maps perturbed by known amounts.

Source = target = one model. The identity map must give exactly the model's own greedy output:
that checks the whole loop (prefill, cache steps, map, head, token choice, EOS). With one shared
tokenizer cross decoding feeds the generated ids as they are; the same identity map with the
text round trip forced (``retokenize=True``, what a pair with two tokenizers always does) shows
what re-reading the text canonically costs on its own (a generated "\n" "\n" becomes "\n\n", a
context the model did not write). A perturbed self-map rotates the (centred) source state by a known angle theta in d/2
random planes and adds a known amount sigma of state-dependent noise:

    map(h) = (h - mu) (Q_theta + sigma G / sqrt(d)) + mu,   G ~ N(0, 1)^{d x d} fixed,

so every centred state is turned by exactly theta (||h Q - h|| = 2 sin(theta/2) ||h||) and the
noise is about sigma ||h - mu|| in size. Its held-out R^2 is about 2 cos(theta) - 1 - sigma^2,
which puts a map-quality axis under every metric the study reports.
"""

from __future__ import annotations

import numpy as np

from linalign.experiments import common as C
from linalign.experiments import tokenpairs as TP

LEVELS = ((15.0, 0.0), (30.0, 0.0), (45.0, 0.0), (0.0, 0.5), (0.0, 0.8))
N_IDENTITY_PROMPTS = 8  # the identity check (exact tokens); the unit test repeats it on a few prompts
N_CONTROL_PROMPTS = 8  # generation under each perturbed map (cross decoding is batch 1: the CPU cost)


def rotation(d: int, degrees: float, seed: int = 0) -> np.ndarray:
    """[d, d] orthogonal Q turning every vector by exactly ``degrees`` (d even).

    Q = U B U^T with U a random orthogonal basis and B rotating each plane (u_2k, u_2k+1).
    """
    if d % 2:
        raise ValueError(f"a rotation of every vector by one angle needs an even dimension, got {d}")
    rng = np.random.default_rng(seed)
    u, r = np.linalg.qr(rng.normal(size=(d, d)))
    u = u * np.sign(np.diag(r))
    t = np.deg2rad(degrees)
    b = np.zeros((d, d))
    for k in range(0, d, 2):
        b[k:k + 2, k:k + 2] = [[np.cos(t), np.sin(t)], [-np.sin(t), np.cos(t)]]
    return u @ b @ u.T


def perturbed_map(mu: np.ndarray, degrees: float, sigma: float, seed: int = 0):
    """(W [d, d], b [d]) of the perturbed self-map about the mean ``mu`` (module docstring)."""
    d = mu.shape[0]
    w = rotation(d, degrees, seed)
    if sigma:
        w = w + sigma * np.random.default_rng(seed + 1).normal(size=(d, d)) / np.sqrt(d)
    return w.astype(np.float32), (mu - mu @ w).astype(np.float32)


def run_controls(cfg, m: str, data, lays, rows, native, prompts, emb_native) -> dict:
    """Identity and perturbed self-maps of model ``m``: teacher-forced and generated measures.

    Returns:
      {"model", "identity": {...}, "perturbed": [{degrees, sigma, heldout_r2, teacher_forced,
      generation}, ...]}.
    """
    from linalign.experiments.generation import cross_all, encode_texts, gen_measures, teacher_forced, top1_of

    model = C.load_model(m)
    # Source = target: every token is its own pair (only the positions and next tokens are used).
    pairs = TP.rows_pairs(rows, lays, rows, lays)
    z = TP.gather(rows, pairs, "a")
    fit = pairs.text < data.n_fit
    held = ~fit & pairs.predicts_response
    mu = z[fit].astype(np.float64).mean(0)
    top1 = top1_of(model)
    native_top1 = top1(z[held])
    ki = min(N_IDENTITY_PROMPTS, len(prompts))
    out = {"model": C.short(m), "n_prompts_identity": ki, "perturbed": []}
    d = z.shape[1]
    ident = (np.eye(d, dtype=np.float32), np.zeros(d, np.float32))

    def generated(amap, k: int, retokenize=None) -> dict:
        """Greedy cross decoding of the first k prompts through ``amap``, against the natives."""
        gens = cross_all(model, model, amap, prompts[:k], cfg.max_new_tokens, retokenize=retokenize)
        emb = encode_texts(cfg, [g.text for g in gens])
        return gen_measures(gens, native[:k], native[:k], emb, emb_native[:k], emb_native[:k])

    tf_identity = teacher_forced(native_top1, native_top1, pairs.next_a[held])
    out["identity"] = {"heldout_r2": 1.0, "teacher_forced": tf_identity, "generation": generated(ident, ki)}
    out["identity_retokenized"] = {"heldout_r2": 1.0, "teacher_forced": tf_identity,
                                   "generation": generated(ident, ki, retokenize=True)}
    k = min(N_CONTROL_PROMPTS, len(prompts))
    out["n_prompts_perturbed"] = k
    for deg, sig in LEVELS:
        w, b = perturbed_map(mu, deg, sig, seed=cfg.seed)
        zz = z[held] @ w + b
        out["perturbed"].append({
            "degrees": deg, "sigma": sig, "heldout_r2": C.r2(zz, z[held]),
            "teacher_forced": teacher_forced(native_top1, top1(zz), pairs.next_a[held]),
            "generation": generated((w, b), k)})
    return out
