"""Ahead-of-time memory plans: what a fit or a model's forward pass needs on each device.

Nothing is allocated: inputs are ``jax.ShapeDtypeStruct`` with shardings, parameters come from
``jax.eval_shape(model.init, ...)``, and ``jax.jit(f, in_shardings, out_shardings)
.lower(...).compile().memory_analysis()`` reports the per-device bytes XLA's SPMD partitioner
settled on (arguments, outputs, temporaries, aliased donations). The compile is real, so a plan
that does not fit fails here with XLA's own message instead of an hour into a job.

Large hidden sizes: the accumulators keep C_bb [d_b, d_b] and C_ba [d_b, d_a] with their d_b
rows split over the "model" axis (d=8192: 256 MiB + 256 MiB float32 in total, a quarter of
that per device with model=4). The solve runs once, in float64 on the host
(``linalign.align.solve``), so its plan is analytic.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from linalign.align import sharding as shd
from linalign.atomic import atomic_file
from linalign.align import stats as stats_lib

MiB = float(1 << 20)

# Public config.json of Meta-Llama-3-8B (the shapes are all a plan needs).
LLAMA3_8B_HF_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu", "hidden_size": 4096,
    "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 8192,
    "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32,
    "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None,
    "rope_theta": 500000.0, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "vocab_size": 128256,
}
MODEL_PRESETS = {"llama3-8b": LLAMA3_8B_HF_CONFIG}


@dataclasses.dataclass(frozen=True)
class MemoryReport:
    """Per-device bytes of one compiled program (from ``Compiled.memory_analysis()``)."""

    name: str
    argument_bytes: int
    output_bytes: int
    temp_bytes: int
    alias_bytes: int
    code_bytes: int

    @property
    def peak_bytes(self) -> int:
        """Arguments + outputs + temporaries, minus outputs that reuse donated arguments."""
        return self.argument_bytes + self.output_bytes + self.temp_bytes - self.alias_bytes

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["peak_bytes"] = self.peak_bytes
        return d

    def line(self) -> str:
        return (f"{self.name:<22} args {self.argument_bytes / MiB:10.1f} MiB  out "
                f"{self.output_bytes / MiB:10.1f} MiB  temp {self.temp_bytes / MiB:10.1f} MiB  "
                f"alias {self.alias_bytes / MiB:8.1f} MiB  peak {self.peak_bytes / MiB:10.1f} MiB")


def compile_report(name: str, fn: Callable, args: tuple, in_shardings, out_shardings,
                   donate_argnums=()) -> MemoryReport:
    """AOT-compiles ``fn`` on abstract ``args`` and returns its per-device memory."""
    # keep_unused: weights a program does not read (the LM head of a hidden-state forward) are
    # still resident, so they count.
    compiled = jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings,
                       donate_argnums=donate_argnums, keep_unused=True).lower(*args).compile()
    m = compiled.memory_analysis()
    if m is None:
        raise RuntimeError(f"the {jax.default_backend()} backend reports no memory analysis")
    return MemoryReport(name, int(m.argument_size_in_bytes), int(m.output_size_in_bytes),
                        int(m.temp_size_in_bytes), int(m.alias_size_in_bytes),
                        int(m.generated_code_size_in_bytes))


def _abstract(tree, shardings):
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), tree, shardings)


# --------------------------------------------------------------------------- fit plan
def _update(state, z_b, z_a, mask):
    """One accumulation step of ``stats.Accumulator``: merge a batch's statistics."""
    return stats_lib.merge(state, stats_lib.batch_stats(z_b, z_a, mask, state.c_bb.dtype))


def plan_fit(d_b: int, d_a: int, batch_per_device: int, mesh: Mesh,
             rules: Optional[shd.ShardingRules] = None, folds: int = 5) -> dict[str, MemoryReport]:
    """Per-device memory of a streaming fit: the accumulation step, and the host solve.

    Args:
      d_b, d_a: source / target widths.
      batch_per_device: rows each data-axis position takes per step.
      mesh: mesh with a "data" axis (and optionally "model").
      rules: ShardingRules (default batch->data, feat_b->model).
      folds: per-fold accumulators kept (each fold holds its own statistics).

    Returns:
      {"update", "folds", "solve"}: the compiled step of one fold's accumulator (per step),
      the k folds' resident statistics, and the float64 host solve (``linalign.align.solve``,
      host bytes; analytic, it never runs on a device).
    """
    rules = rules or shd.ShardingRules()
    model = mesh.shape.get("model", 1)
    if d_b % model or d_a % model:
        raise ValueError(f"d_b={d_b} and d_a={d_a} must be divisible by the model axis ({model})")
    state_sh = stats_lib.stats_shardings(mesh, rules)
    shapes = jax.eval_shape(lambda: stats_lib.init_stats(d_b, d_a))
    state = _abstract(shapes, state_sh)
    rows_sh = NamedSharding(mesh, rules.spec((shd.BATCH, None), mesh))
    mask_sh = NamedSharding(mesh, rules.spec((shd.BATCH,), mesh))
    d = int(np.prod([mesh.shape[a] for a in rules.mesh_axes(shd.BATCH) if a in mesh.axis_names]))
    m = batch_per_device * d
    z_b = jax.ShapeDtypeStruct((m, d_b), jnp.float32, sharding=rows_sh)
    z_a = jax.ShapeDtypeStruct((m, d_a), jnp.float32, sharding=rows_sh)
    mask = jax.ShapeDtypeStruct((m,), jnp.bool_, sharding=mask_sh)
    step = compile_report("update (per step)", _update, (state, z_b, z_a, mask),
                          (state_sh, rows_sh, rows_sh, mask_sh), state_sh, donate_argnums=0)
    k = max(int(folds), 1)
    out = {"update": step,
           # Every fold keeps its own accumulator resident (analytic: nothing else runs).
           "folds": MemoryReport(f"fold statistics (x{k})", k * fit_state_bytes_per_device(d_b, d_a, model),
                                 0, 0, 0, 0)}
    # Host float64: C_bb + C_ba of every fold and their merge, plus one factor and W.
    host = 8 * (d_b * d_b + d_b * d_a)
    out["solve"] = MemoryReport("solve (host, float64)", host * (k + 1),
                                8 * (d_b * d_a + d_a), 8 * d_b * d_b, 0, 0)
    return out


def fit_state_bytes_per_device(d_b: int, d_a: int, model: int) -> int:
    """Analytic float32 bytes of one device's accumulators (C_bb, C_ba rows split by model)."""
    return 4 * (d_b // model * d_b + d_b // model * d_a + d_b + 2 * d_a + 1)


# --------------------------------------------------------------------------- model plan
def model_config(name_or_path: str):
    """(family module, Config) from a preset name or a config.json path."""
    from linalign.models import llama  # Llama-family port
    if name_or_path in MODEL_PRESETS:
        hf = MODEL_PRESETS[name_or_path]
    elif os.path.isfile(name_or_path):
        with open(name_or_path) as f:
            hf = json.load(f)
    else:
        raise ValueError(f"unknown model config {name_or_path!r}: expected one of "
                         f"{sorted(MODEL_PRESETS)} or a config.json path")
    if hf.get("model_type") not in llama.MODEL_TYPES:
        raise ValueError(f"model_type {hf.get('model_type')!r} is not served by the Llama-family "
                         f"port ({llama.MODEL_TYPES})")
    return llama, llama.Config.from_hf_config(hf)


# Which dimension of each parameter the model axis splits (Megatron-style tensor parallel:
# attention heads, MLP hidden units, vocabulary). Keys are parameter-path suffixes.
_TP_AXIS = {
    ("q_proj", "kernel"): 1, ("k_proj", "kernel"): 1, ("v_proj", "kernel"): 1,
    ("q_proj", "bias"): 0, ("k_proj", "bias"): 0, ("v_proj", "bias"): 0,
    ("o_proj", "kernel"): 0,
    ("gate_proj", "kernel"): 1, ("up_proj", "kernel"): 1, ("down_proj", "kernel"): 0,
    ("gate_proj", "bias"): 0, ("up_proj", "bias"): 0,
    ("embed_tokens", "embedding"): 0, ("lm_head_proj", "kernel"): 1, ("lm_head_proj", "bias"): 0,
}


def param_shardings(abstract_params, mesh: Mesh):
    """NamedSharding per parameter: the _TP_AXIS dimension over "model", else replicated."""
    model = mesh.shape.get("model", 1)

    def one(path, leaf):
        keys = tuple(getattr(k, "key", str(k)) for k in path)
        axis = _TP_AXIS.get(keys[-2:])
        spec = [None] * leaf.ndim
        if axis is not None and model > 1:
            if leaf.shape[axis] % model:
                raise ValueError(f"parameter {'/'.join(keys)} {leaf.shape}: dimension {axis} is "
                                 f"not divisible by the model axis ({model})")
            spec[axis] = "model"
        return NamedSharding(mesh, P(*spec))

    return jax.tree_util.tree_map_with_path(one, abstract_params)


def abstract_params(config, param_dtype=jnp.bfloat16, family=None):
    """Parameter shapes of ``family.Model(config)`` without allocating them."""
    if family is None:
        from linalign.models import llama as family
    model = family.Model(config)
    ids = jax.ShapeDtypeStruct((1, 8), jnp.int32)
    # return_logits=True so the LM head's parameters are created too.
    shapes = jax.eval_shape(lambda i: model.init(jax.random.PRNGKey(0), i, jnp.ones(i.shape, jnp.int32),
                                                 return_logits=True), ids)["params"]
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, param_dtype), shapes)


def param_bytes(abstract, mesh: Optional[Mesh] = None) -> int:
    """Total parameter bytes, or per device under ``param_shardings`` when a mesh is given."""
    leaves = jax.tree.leaves(abstract)
    if mesh is None:
        return int(sum(np.prod(a.shape) * np.dtype(a.dtype).itemsize for a in leaves))
    sh = jax.tree.leaves(param_shardings(abstract, mesh))
    return int(sum(np.prod(s.shard_shape(a.shape)) * np.dtype(a.dtype).itemsize
                   for a, s in zip(leaves, sh)))


def plan_forward(config_name: str, mesh: Mesh, batch: int, seq: int,
                 param_dtype=jnp.bfloat16, act_dtype=jnp.bfloat16,
                 return_logits: bool = False) -> tuple[MemoryReport, dict]:
    """Per-device memory of a forward pass (final hidden states, optionally logits).

    Args:
      config_name: preset name (e.g. "llama3-8b") or config.json path.
      mesh: mesh with "data" (batch rows) and "model" (tensor parallel) axes.
      batch, seq: input shape (batch must divide over "data").
      param_dtype, act_dtype: weights / activation dtypes.
      return_logits: include the LM head's [batch, seq, vocab] logits.

    Returns:
      (MemoryReport, facts) where facts holds the parameter count and analytic bytes.
    """
    family, config = model_config(config_name)
    params = abstract_params(config, param_dtype, family)
    p_sh = param_shardings(params, mesh)
    data = "data" if "data" in mesh.axis_names else None
    ids_sh = NamedSharding(mesh, P(data, None))
    ids = jax.ShapeDtypeStruct((batch, seq), jnp.int32, sharding=ids_sh)
    model = family.Model(config, dtype=act_dtype)

    def forward(p, ids_bt, mask_bt):
        out = model.apply({"params": p}, ids_bt, mask_bt, return_logits=return_logits)
        return out.logits if return_logits else out.last_hidden_state

    out_sh = NamedSharding(mesh, P(data, None, "model" if return_logits and "model" in mesh.axis_names
                                   else None))
    report = compile_report(f"forward {config_name}", forward, (_abstract(params, p_sh), ids, ids),
                            (p_sh, ids_sh, ids_sh), out_sh)
    facts = {"num_params": int(sum(np.prod(a.shape) for a in jax.tree.leaves(params))),
             "param_bytes_total": param_bytes(params),
             "param_bytes_per_device": param_bytes(params, mesh),
             "config": dataclasses.asdict(config) | {"rope": str(config.rope)}}
    return report, facts


def write_plan_report(out_dir: str, reports: list, facts: dict, mesh_shape: dict) -> None:
    """plan.json, plan.md (table) and plan.png (bar chart of per-device MiB), written atomically."""
    os.makedirs(out_dir, exist_ok=True)
    payload = {"mesh": mesh_shape, "backend": jax.default_backend(),
               "reports": [r.to_json() for r in reports], "model": facts}

    def put(name, write):
        with atomic_file(os.path.join(out_dir, name)) as tmp:
            write(tmp)

    put("plan.json", lambda t: open(t, "w").write(json.dumps(payload, indent=1, default=str)))
    rows = ["| program | arguments MiB | outputs MiB | temporaries MiB | aliased MiB | peak MiB |",
            "|---|---:|---:|---:|---:|---:|"]
    rows += [f"| {r.name} | {r.argument_bytes / MiB:.1f} | {r.output_bytes / MiB:.1f} | "
             f"{r.temp_bytes / MiB:.1f} | {r.alias_bytes / MiB:.1f} | {r.peak_bytes / MiB:.1f} |"
             for r in reports]
    put("plan.md", lambda t: open(t, "w").write(
        f"Per-device memory, mesh {mesh_shape} ({jax.default_backend()})\n\n" + "\n".join(rows) + "\n"))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.6 * len(reports) + 1.5))
    names = [r.name for r in reports]
    left = np.zeros(len(reports))
    for label, vals in (("arguments", [r.argument_bytes - r.alias_bytes for r in reports]),
                        ("outputs", [r.output_bytes for r in reports]),
                        ("temporaries", [r.temp_bytes for r in reports])):
        v = np.asarray(vals, float) / MiB
        ax.barh(names, v, left=left, label=label)
        left += v
    ax.set_xlabel("MiB per device")
    ax.set_title(f"AOT memory plan, mesh {mesh_shape}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    put("plan.png", lambda t: fig.savefig(t, format="png", dpi=110))
    plt.close(fig)
