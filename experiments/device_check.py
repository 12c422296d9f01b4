"""Device check: linalign on an accelerator, measured against transformers on the same device.

Made for a GPU machine with no network (Python 3.12, jax with its CUDA plugin, numpy 2, flax,
optax, orbax, transformers, tokenizers, safetensors, torch; no gguf or FHE libraries). Nothing is
downloaded: the four architectures are built from config dicts written below, with random
weights, saved by transformers and loaded by ``linalign.checkpoints.load``.

    bash launch/device_check.sh OUT_DIR                       # full mode, <= 8 minutes
    PYTHONPATH=. python experiments/device_check.py --out_dir=OUT --small   # CPU, seconds

Stages (each guarded: a failure is recorded with its traceback and the rest go on; a stage
that would start after ``--budget_s`` is recorded as skipped):
  env           versions, devices, CPU model
  wheels        what the device lacks for the full package (gguf) and the command to fetch it
  build         SmolLM2-135M, Qwen2.5-0.5B, Gemma-3-270M, all-MiniLM-L6-v2 with random weights
  parity        hidden states and next-token KL vs transformers, float32 and bfloat16
  gram          sufficient-statistics accumulation vs a bare matmul and the device peak, per
                precision (float32, TF32, bfloat16 inputs), and the fit's error vs float64
  streamed_fit  10 million synthetic rows, 4096 -> 4096: time and peak device memory
  extract       extraction tokens/s vs transformers at batch 32 and 128
  decode        greedy decoding tokens/s vs transformers' generate at batch 1 and 16

Writes ``device_check.json`` and ``device_check.md`` to ``--out_dir`` (format in BUILD_NOTES.md).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
import platform
import shutil
import sys
import tempfile
import time
import traceback

from absl import app, flags, logging

# A sibling module: this file runs as a script, so its directory is on sys.path.
import device_check_report as report
from device_check_configs import CARRY_WHEELS, PEAKS, WORDS, sizes, write_tokenizer

FLAGS = flags.FLAGS
flags.DEFINE_string("out_dir", None, "directory for device_check.json and device_check.md")
flags.DEFINE_bool("small", False, "tiny configs and few rows (CPU, seconds): the tested mode")
flags.DEFINE_list("stages", None, "subset of stages to run (default: all)")
flags.DEFINE_float("budget_s", 420.0, "stages that would start after this many seconds are skipped")
flags.DEFINE_string("work_dir", None, "where the random checkpoints go (default: a temporary "
                    "directory, removed at the end)")
flags.DEFINE_list("speed_dtypes", None, "dtypes for the extraction/decoding timings (default: "
                  "bfloat16, float32 in --small mode)")

STAGES = ("env", "wheels", "build", "parity", "gram", "streamed_fit", "extract", "decode")
SCHEMA = 1


class Budget:
    """Wall-clock budget shared by every stage (inner loops ask it too)."""

    def __init__(self, seconds: float):
        self.t0, self.seconds = time.perf_counter(), seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> bool:
        return self.elapsed() < self.seconds


# ----------------------------------------------------------------------------- helpers
def _version(dist: str):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def peak_for(device_kind: str):
    for key, peaks in PEAKS:
        if key.lower() in device_kind.lower():
            return key, peaks
    return None, None


def torch_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def torch_sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def rel_err(ours, ref) -> float:
    import numpy as np

    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(ours - ref)) / max(np.max(np.abs(ref)), 1e-30))


def kl_rows(p_logits, q_logits):
    """KL(p || q) of softmax rows in float64: [B] for [B, V] logits."""
    import numpy as np
    from scipy.special import log_softmax

    lp = log_softmax(np.asarray(p_logits, np.float64), axis=-1)
    lq = log_softmax(np.asarray(q_logits, np.float64), axis=-1)
    return (np.exp(lp) * (lp - lq)).sum(-1)


# ----------------------------------------------------------------------------- stages
def stage_env(ctx):
    import jax

    from linalign.machine import cpu_model

    devs = jax.devices()
    kind = devs[0].device_kind
    name, peaks = peak_for(kind)
    out = dict(python=sys.version.split()[0], platform=platform.platform(), cpu=cpu_model(),
               backend=jax.default_backend(), device_kind=kind, device_count=len(devs),
               peak_row=name, peak_tflops=peaks,
               versions={d: _version(d) for d in (
                   "jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "flax", "optax",
                   "orbax-checkpoint", "numpy", "transformers", "tokenizers", "safetensors",
                   "torch", "gguf")})
    try:
        import torch

        out["torch_device"] = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
                               else "cpu")
    except ImportError as e:
        out["torch_device"] = f"unavailable: {e}"
    ctx["device_kind"], ctx["peaks"] = kind, peaks
    return out


def stage_wheels(ctx):
    missing = [w for w in CARRY_WHEELS if _version(w.split("==")[0]) is None]
    cmd = ("pip download --no-deps --only-binary=:all: --python-version 3.12 "
           "--platform manylinux_2_28_x86_64 -d wheels " + " ".join(CARRY_WHEELS))
    return dict(needed=list(CARRY_WHEELS), missing_here=missing, fetch_command=cmd,
                install_command="pip install --no-index --no-deps --find-links wheels " +
                " ".join(CARRY_WHEELS),
                why="gguf: reading GGUF checkpoints (linalign.checkpoints.gguf); everything else "
                    "the core needs is in the image. --no-deps: gguf's metadata names requests, "
                    "which it imports only to fetch remote files, and numpy, pyyaml and tqdm, "
                    "which the image has")


def stage_build(ctx):
    import torch
    import transformers

    out = {}
    for name, cfg in ctx["sizes"]["archs"].items():
        t0 = time.perf_counter()
        kw = dict(cfg)
        model_type = kw.pop("model_type")
        config = transformers.AutoConfig.for_model(model_type, **kw)
        torch.manual_seed(0)
        causal = model_type != "bert"
        cls = transformers.AutoModelForCausalLM if causal else transformers.AutoModel
        hf = cls.from_config(config, dtype=torch.float32).eval()
        path = ctx["work"] / name
        hf.save_pretrained(path, safe_serialization=True)
        write_tokenizer(path, causal, cfg["vocab_size"])
        ctx.setdefault("models", {})[name] = dict(path=path, hf=hf, causal=causal, cfg=cfg)
        out[name] = dict(model_type=model_type, causal=causal,
                         params=int(sum(p.numel() for p in hf.parameters())),
                         bytes_on_disk=int(sum(f.stat().st_size for f in path.iterdir())),
                         seconds=round(time.perf_counter() - t0, 2))
    return out


def _hf_forward(hf, ids, dtype):
    import torch

    dev = torch_device()
    hf.to(device=dev, dtype=getattr(torch, dtype))
    with torch.no_grad():
        o = hf(input_ids=torch.as_tensor(ids, device=dev),
               attention_mask=torch.ones(ids.shape, dtype=torch.long, device=dev),
               output_hidden_states=True)
    hs = [h.float().cpu().numpy() for h in o.hidden_states]
    logits = o.logits[:, -1].float().cpu().numpy() if hasattr(o, "logits") else None
    hf.to(dtype=torch.float32)
    return hs, logits


def stage_parity(ctx):
    import jax
    import numpy as np

    from linalign import checkpoints

    b, t = ctx["sizes"]["parity_bt"]
    out = {}
    for name, m in ctx["models"].items():
        if not ctx["budget"].left():
            out[name] = "skipped: time budget"
            continue
        rng = np.random.default_rng(0)
        ids = rng.integers(5, min(m["cfg"]["vocab_size"], 400), size=(b, t)).astype(np.int32)
        mask = np.ones_like(ids)
        ref_h, ref_l = _hf_forward(m["hf"], ids, "float32")
        rows = {}
        # "float32" at Precision.HIGHEST like torch's float32 matmuls; "float32_default" is
        # what a user gets from jax's default precision (TF32 on NVIDIA GPUs since Ampere).
        for key, dtype, precision in (("float32", "float32", "highest"),
                                      ("float32_default", "float32", None),
                                      ("bfloat16", "bfloat16", None)):
            lm = checkpoints.load(m["path"], dtype=dtype, cache=False)
            with (jax.default_matmul_precision(precision) if precision
                  else contextlib.nullcontext()):
                o = lm(ids, mask, output_hidden_states=True)
            ours_h = [np.asarray(h, np.float32) for h in o.hidden_states]
            if len(ours_h) != len(ref_h):
                raise ValueError(f"{name}: {len(ours_h)} hidden states vs transformers' {len(ref_h)}")
            r = dict(hidden_max_rel_err=max(rel_err(a, c) for a, c in zip(ours_h, ref_h)),
                     last_hidden_rel_err=rel_err(ours_h[-1], ref_h[-1]))
            if dtype != "float32":
                hf_h, hf_l = _hf_forward(m["hf"], ids, dtype)
                r["transformers_hidden_max_rel_err"] = max(rel_err(a, c) for a, c in zip(hf_h, ref_h))
            if m["causal"]:
                ours_l = np.asarray(o.logits, np.float32)[:, -1]
                r["next_token_kl_max"] = float(kl_rows(ref_l, ours_l).max())
                r["next_token_top1_agree"] = float(np.mean(ours_l.argmax(-1) == ref_l.argmax(-1)))
                if dtype != "float32":
                    r["transformers_next_token_kl_max"] = float(kl_rows(ref_l, hf_l).max())
            rows[key] = r
        out[name] = rows
    return dict(reference="transformers float32 on the same device", batch=b, tokens=t,
                models=out)


def _time(fn, reps: int) -> float:
    """Best-of-``reps`` wall time of ``fn()`` (which must block until its result is ready)."""
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def stage_gram(ctx):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from linalign import align
    from linalign.align import stats as stats_lib

    s = ctx["sizes"]
    m, d, reps = s["gram_rows"], s["gram_d"], s["gram_reps"]
    flops = 2.0 * m * d * (2 * d)  # x^T x and x^T y, [m, d] each
    key = jax.random.PRNGKey(0)
    xb32 = jax.random.normal(key, (m, d), jnp.float32) + 0.5
    xa32 = jax.random.normal(jax.random.fold_in(key, 1), (m, d), jnp.float32) - 0.25
    modes = {"float32": ("highest", jnp.float32), "tf32": ("tensorfloat32", jnp.float32),
             "bfloat16": ("default", jnp.bfloat16)}
    peaks = ctx.get("peaks") or {}
    # Fit problem for the error column: correlated, off-centre sources and a known map.
    rng = np.random.default_rng(0)
    n_fit, d_fit = s["fit_rows"], s["fit_d"]
    mix = rng.standard_normal((d_fit, d_fit)) / np.sqrt(d_fit)
    zb = (rng.standard_normal((n_fit, d_fit)) @ mix + 1.0).astype(np.float32)
    w_true = rng.standard_normal((d_fit, d_fit)) / np.sqrt(d_fit)
    za = (zb @ w_true + 0.1 * rng.standard_normal((n_fit, d_fit))).astype(np.float32)
    lam = 1e-3 * n_fit
    zb64, za64 = zb.astype(np.float64), za.astype(np.float64)
    cb, ca = zb64 - zb64.mean(0), za64 - za64.mean(0)
    w64 = np.linalg.solve(cb.T @ cb + lam * np.eye(d_fit), cb.T @ ca)

    out = {}
    for mode, (precision, in_dtype) in modes.items():
        if not ctx["budget"].left():
            out[mode] = "skipped: time budget"
            continue
        xb, xa = xb32.astype(in_dtype), xa32.astype(in_dtype)
        with jax.default_matmul_precision(precision):
            bare = jax.jit(lambda b_, a_: (
                jnp.einsum("mi,mj->ij", b_, b_, preferred_element_type=jnp.float32),
                jnp.einsum("mi,mj->ij", b_, a_, preferred_element_type=jnp.float32)))
            st = {"s": stats_lib.init_stats(d, d)}

            def lin():
                st["s"] = stats_lib.update(st["s"], xb, xa)
                jax.block_until_ready(st["s"].c_bb)

            jax.block_until_ready(bare(xb, xa))
            lin()
            t_bare = _time(lambda: jax.block_until_ready(bare(xb, xa)), reps)
            t_lin = _time(lin, reps)
            acc = align.Accumulator(d_fit, d_fit, check_finite=False, chunk_rows=min(n_fit, 8192))
            acc.add(jnp.asarray(zb, in_dtype), jnp.asarray(za, in_dtype), _checked=True)
            w, _ = align.solve(acc.stats, lam)
        tf_lin, tf_bare = flops / t_lin / 1e12, flops / t_bare / 1e12
        peak = peaks.get(mode)
        out[mode] = dict(
            linalign_tflops=tf_lin, bare_matmul_tflops=tf_bare, ratio_to_bare=tf_lin / tf_bare,
            peak_tflops=peak, fraction_of_peak=(tf_lin / peak) if peak else None,
            fit_rel_err_vs_float64=float(np.linalg.norm(np.asarray(w, np.float64) - w64)
                                         / np.linalg.norm(w64)))
    return dict(rows=m, d_b=d, d_a=d, flops_per_step=flops, fit_rows=n_fit, fit_d=d_fit,
                fit_lam=lam, modes=out,
                note="linalign's accumulator forms its products at Precision.HIGHEST in the "
                     "accumulator dtype (float32), so the TF32 and bfloat16-input rows show what "
                     "that costs against a bare matmul in those precisions")


def stage_streamed_fit(ctx):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from linalign import align

    s = ctx["sizes"]
    n, d, chunk = s["stream_rows"], s["stream_d"], s["stream_chunk"]
    scale = jax.random.uniform(jax.random.PRNGKey(1), (d,), jnp.float32, 0.5, 1.5)
    perm = jax.random.permutation(jax.random.PRNGKey(2), d)

    @jax.jit
    def make(i):
        k = jax.random.fold_in(jax.random.PRNGKey(0), i)
        zb = jax.random.normal(k, (chunk, d), jnp.float32) + 1.0
        noise = 0.1 * jax.random.normal(jax.random.fold_in(k, 1), (chunk, d), jnp.float32)
        return zb, zb[:, perm] * scale + noise  # target = a scaled permutation of the source

    dev = jax.devices()[0]
    acc = align.Accumulator(d, d, check_finite=False, chunk_rows=chunk)
    jax.block_until_ready(make(0))
    t0 = time.perf_counter()
    steps, done, last_log = -(-n // chunk), 0, time.perf_counter()
    for i in range(steps):
        zb, za = make(i)
        rows = min(chunk, n - done)
        acc.add(zb[:rows], za[:rows], _checked=True)
        done += rows
        if time.perf_counter() - last_log > 10:
            print(f"[device_check] streamed fit: {done:,}/{n:,} rows", flush=True)
            last_log = time.perf_counter()
    stats = acc.stats
    jax.block_until_ready(stats.c_bb)
    t_acc = time.perf_counter() - t0
    w, b = align.solve(stats, 1e-3 * n)
    jax.block_until_ready(w)
    total = time.perf_counter() - t0
    w_true = np.zeros((d, d), np.float32)
    w_true[np.asarray(perm), np.arange(d)] = np.asarray(scale)
    mem = dev.memory_stats() or {}
    return dict(rows=int(stats.n), d_b=d, d_a=d, chunk_rows=chunk, accumulate_s=t_acc,
                total_s=total, rows_per_s=n / t_acc,
                gram_tflops=2.0 * n * d * 2 * d / t_acc / 1e12,
                w_rel_err_vs_truth=float(np.linalg.norm(np.asarray(w) - w_true)
                                         / np.linalg.norm(w_true)),
                peak_bytes_in_use=mem.get("peak_bytes_in_use"),
                bytes_limit=mem.get("bytes_limit"),
                memory_stats="device.memory_stats()" if mem else "not reported by this backend")


def _texts(n: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=200)) for _ in range(n)]


def stage_extract(ctx):
    import numpy as np
    import torch

    from linalign import checkpoints, extract

    s = ctx["sizes"]
    t, steps = s["extract_t"], s["extract_steps"]
    out = {}
    for name, m in ctx["models"].items():
        for dtype in ctx["speed_dtypes"]:
            lm = checkpoints.load(m["path"], dtype=dtype, cache=False)
            hf = m["hf"].base_model.to(device=torch_device(), dtype=getattr(torch, dtype))
            for bsz in s["extract_batches"]:
                if not ctx["budget"].left():
                    out[f"{name}/{dtype}/{bsz}"] = "skipped: time budget"
                    continue
                texts = _texts(bsz * steps, bsz)
                run = lambda: extract.extract(lm, texts, max_length=t, batch_size=bsz,
                                              progress=False, truncation="silent")
                extract.extract(lm, texts[:bsz], max_length=t, batch_size=bsz, progress=False,
                                truncation="silent")  # compile
                t_ours = _time(run, 2)
                enc = lm.tokenizer.encode_batch(texts, max_length=t, truncation="silent")
                ids, mask = np.asarray(enc.ids, np.int64), np.asarray(enc.mask, np.int64)
                tokens = int(mask.sum())

                def ref():
                    dev = torch_device()
                    with torch.no_grad():
                        for i in range(0, len(texts), bsz):
                            x = torch.as_tensor(ids[i:i + bsz], device=dev)
                            mk = torch.as_tensor(mask[i:i + bsz], device=dev)
                            h = hf(input_ids=x, attention_mask=mk).last_hidden_state
                            if lm.default_pooling == "mean":
                                mf = mk[..., None].to(h.dtype)
                                p = (h * mf).sum(1) / mf.sum(1)
                            else:
                                p = h[:, -1]
                            p.float().cpu().numpy()

                ref()
                t_ref = _time(ref, 2)
                out[f"{name}/{dtype}/{bsz}"] = dict(
                    model=name, dtype=dtype, batch=bsz, tokens=tokens,
                    linalign_tok_s=tokens / t_ours, transformers_tok_s=tokens / t_ref,
                    ratio=t_ref / t_ours)
            hf.to(dtype=torch.float32)
    return dict(tokens_per_text=t, note="linalign times extract.extract on the texts (tokenizing "
                "included); transformers gets the same ids pre-tokenized, then forward, pooling "
                "and the copy to the host", runs=out)


def stage_decode(ctx):
    import numpy as np
    import torch

    from linalign import checkpoints
    from linalign.generate import decode

    s = ctx["sizes"]
    new, pt = s["new_tokens"], s["prompt_t"]
    out = {}
    for name, m in ctx["models"].items():
        if not m["causal"]:
            continue
        for dtype in ctx["speed_dtypes"]:
            lm = checkpoints.load(m["path"], dtype=dtype, cache=False)
            dec = decode.Decoder(lm.module, lm.params)
            hf = m["hf"].to(device=torch_device(), dtype=getattr(torch, dtype))
            for bsz in s["decode_batches"]:
                if not ctx["budget"].left():
                    out[f"{name}/{dtype}/{bsz}"] = "skipped: time budget"
                    continue
                ids = np.random.default_rng(bsz).integers(5, 400, size=(bsz, pt)).astype(np.int32)
                run = lambda: dec.generate(ids, max_new_tokens=new, eos_ids=())
                run()  # compile
                t_ours = _time(run, 2)
                x = torch.as_tensor(ids, dtype=torch.long, device=torch_device())

                def ref():
                    with torch.no_grad():
                        g = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new,
                                        min_new_tokens=new, do_sample=False, pad_token_id=0)
                    g.cpu()

                ref()
                t_ref = _time(ref, 2)
                out[f"{name}/{dtype}/{bsz}"] = dict(
                    model=name, dtype=dtype, batch=bsz, new_tokens=new,
                    linalign_tok_s=bsz * new / t_ours, transformers_tok_s=bsz * new / t_ref,
                    ratio=t_ref / t_ours)
            hf.to(dtype=torch.float32)
    return dict(prompt_tokens=pt, runs=out)


STAGE_FNS = {"env": stage_env, "wheels": stage_wheels, "build": stage_build,
             "parity": stage_parity, "gram": stage_gram, "streamed_fit": stage_streamed_fit,
             "extract": stage_extract, "decode": stage_decode}
NEEDS_MODELS = ("parity", "extract", "decode")


def run_stages(ctx, names, after_each=None) -> dict:
    """Runs ``names`` in order; one stage's failure is recorded and the next one starts.

    ``after_each(results_so_far)`` is called after every stage (the script writes its output
    there, so a run cut short still leaves every finished stage on disk).
    """
    res = {}
    for name in names:
        t0 = time.perf_counter()
        if not ctx["budget"].left():
            res[name] = dict(status="skipped", reason="time budget")
        elif name in NEEDS_MODELS and not ctx.get("models"):
            res[name] = dict(status="skipped", reason="no models (build did not run or failed)")
        else:
            print(f"[device_check] {name} ...", flush=True)
            try:
                res[name] = dict(status="ok", results=STAGE_FNS[name](ctx))
            except Exception as e:  # noqa: BLE001 -- record and go on, by design
                res[name] = dict(status="error", error=f"{type(e).__name__}: {e}",
                                 traceback=traceback.format_exc(limit=8)[-4000:])
        res[name]["seconds"] = round(time.perf_counter() - t0, 2)
        print(f"[device_check] {name}: {res[name]['status']} in {res[name]['seconds']} s",
              flush=True)
        if after_each is not None:
            after_each(res)
    return res


def main(argv):
    del argv
    if not FLAGS.out_dir:
        raise app.UsageError("--out_dir is required")
    names = FLAGS.stages or list(STAGES)
    unknown = sorted(set(names) - set(STAGES))
    if unknown:
        raise app.UsageError(f"unknown stage(s) {unknown}; choose from {list(STAGES)}")
    import pathlib


    logging.set_verbosity(logging.WARNING)  # per-call INFO lines from extract/load drown the log
    work = pathlib.Path(FLAGS.work_dir or tempfile.mkdtemp(prefix="linalign-device-check-"))
    work.mkdir(parents=True, exist_ok=True)
    s = sizes(FLAGS.small)
    ctx = dict(sizes=s, work=work, budget=Budget(FLAGS.budget_s),
               speed_dtypes=tuple(FLAGS.speed_dtypes or s["speed_dtypes"]))
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    out_dir = pathlib.Path(FLAGS.out_dir)

    def emit(stages):
        result = dict(schema=SCHEMA, mode="small" if FLAGS.small else "full", started=started,
                      command=" ".join(["python", "experiments/device_check.py", *sys.argv[1:]]),
                      total_s=round(ctx["budget"].elapsed(), 2), budget_s=FLAGS.budget_s,
                      stages=stages)
        result["targets"] = report.targets(result)
        return result, report.write(result, out_dir)

    try:
        stages = run_stages(ctx, [n for n in STAGES if n in names], after_each=emit)
    finally:
        if not FLAGS.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    result, paths = emit(stages)
    print(f"[device_check] done in {result['total_s']} s: " + ", ".join(
        f"{k} {v['status']}" for k, v in stages.items()) + f"; wrote {paths[0]} and {paths[1]}")
    return 0 if all(v["status"] != "error" for v in stages.values()) else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        app.run(main)
