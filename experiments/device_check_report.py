"""JSON and Markdown output of ``experiments/device_check.py`` (format in BUILD_NOTES.md)."""

from __future__ import annotations

import pathlib

from linalign.atomic import atomic_write, atomic_write_json

# Reported, not asserted: the accelerator targets of the device check.
GRAM_VS_BARE = 0.70
BF16_VS_PEAK = 0.50


def _ok(result: dict, stage: str):
    st = result["stages"].get(stage, {})
    return st.get("results") if st.get("status") == "ok" else None


def targets(result: dict) -> list[dict]:
    """Each target with its measured value and whether it is met (None: not measured)."""
    out = []
    gram = _ok(result, "gram")
    for mode in ("float32", "tf32", "bfloat16"):
        row = (gram or {}).get("modes", {}).get(mode)
        v = row.get("ratio_to_bare") if isinstance(row, dict) else None
        out.append(dict(target=f"gram {mode} >= {GRAM_VS_BARE:.0%} of bare matmul", value=v,
                        met=None if v is None else v >= GRAM_VS_BARE))
    row = (gram or {}).get("modes", {}).get("bfloat16")
    v = row.get("fraction_of_peak") if isinstance(row, dict) else None
    out.append(dict(target=f"gram bfloat16 >= {BF16_VS_PEAK:.0%} of device peak", value=v,
                    met=None if v is None else v >= BF16_VS_PEAK))
    for stage in ("extract", "decode"):
        runs = ((_ok(result, stage) or {}).get("runs") or {})
        for key, r in runs.items():
            v = r.get("ratio") if isinstance(r, dict) else None
            out.append(dict(target=f"{stage} {key} >= transformers", value=v,
                            met=None if v is None else v >= 1.0))
    return out


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1e4 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return lines + [""]


def markdown(result: dict) -> str:
    st = result["stages"]
    env = _ok(result, "env") or {}
    md = [f"# linalign device check ({result['mode']} mode)", "",
          f"Command: `{result['command']}`  ", f"Started {result['started']}, "
          f"{result['total_s']} s in all (budget {result['budget_s']} s).  ",
          f"Device: {env.get('device_kind', '?')} x {env.get('device_count', '?')} "
          f"({env.get('backend', '?')}), CPU: {env.get('cpu', '?')}, Python {env.get('python', '?')}.",
          "", "## Stages", ""]
    md += _table(["stage", "status", "seconds", "error"],
                 [[k, v["status"], v["seconds"], v.get("error") or v.get("reason")]
                  for k, v in st.items()])
    if env:
        md += ["## Versions", ""] + _table(["package", "version"], sorted(env["versions"].items()))
    par = _ok(result, "parity")
    if par:
        md += ["## Parity with transformers", "",
               f"{par['reference']}; batch {par['batch']} x {par['tokens']} tokens. Relative errors "
               "are max |ours - ref| / max |ref| over every hidden state.", ""]
        rows = []
        for name, by_dtype in par["models"].items():
            if not isinstance(by_dtype, dict):
                rows.append([name, by_dtype] + [None] * 5)
                continue
            for dtype, r in by_dtype.items():
                rows.append([name, dtype, r["hidden_max_rel_err"],
                             r.get("transformers_hidden_max_rel_err"), r.get("next_token_kl_max"),
                             r.get("transformers_next_token_kl_max"), r.get("next_token_top1_agree")])
        md += _table(["model", "dtype", "hidden rel err", "transformers' own (same dtype)",
                      "next-token KL", "transformers' own KL", "top-1 agree"], rows)
    gram = _ok(result, "gram")
    if gram:
        md += ["## Gram accumulation", "",
               f"[{gram['rows']}, {gram['d_b']}] rows per step; fit error on {gram['fit_rows']} rows "
               f"x {gram['fit_d']} vs a float64 fit on the host. {gram['note']}.", ""]
        md += _table(["precision", "linalign TFLOP/s", "bare matmul TFLOP/s", "ratio", "peak",
                      "of peak", "fit rel err vs float64"],
                     [[m, r["linalign_tflops"], r["bare_matmul_tflops"], r["ratio_to_bare"],
                       r["peak_tflops"], r["fraction_of_peak"], r["fit_rel_err_vs_float64"]]
                      if isinstance(r, dict) else [m, r] + [None] * 5
                      for m, r in gram["modes"].items()])
    sf = _ok(result, "streamed_fit")
    if sf:
        md += ["## Streamed fit", ""] + _table(
            ["rows", "d_b -> d_a", "accumulate s", "total s", "rows/s", "TFLOP/s",
             "peak device bytes", "W rel err vs truth"],
            [[sf["rows"], f"{sf['d_b']} -> {sf['d_a']}", sf["accumulate_s"], sf["total_s"],
              sf["rows_per_s"], sf["gram_tflops"], sf["peak_bytes_in_use"],
              sf["w_rel_err_vs_truth"]]])
    for stage, title in (("extract", "Extraction"), ("decode", "Greedy decoding")):
        r = _ok(result, stage)
        if r:
            md += [f"## {title} tokens/s vs transformers", ""]
            if r.get("note"):
                md += [r["note"] + ".", ""]
            md += _table(["model", "dtype", "batch", "linalign tok/s", "transformers tok/s",
                          "ratio"],
                         [[x["model"], x["dtype"], x["batch"], x["linalign_tok_s"],
                           x["transformers_tok_s"], x["ratio"]] if isinstance(x, dict)
                          else [k, x, None, None, None, None] for k, x in r["runs"].items()])
    wh = _ok(result, "wheels")
    if wh:
        md += ["## Wheels to carry", "", wh["why"] + ".", "", "```", wh["fetch_command"],
               wh["install_command"], "```", ""]
    md += ["## Targets (reported, not asserted)", ""]
    md += _table(["target", "value", "met"], [[t["target"], t["value"], t["met"]]
                                              for t in result["targets"]])
    return "\n".join(md)


def write(result: dict, out_dir: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    j, m = out_dir / "device_check.json", out_dir / "device_check.md"
    atomic_write_json(j, result, sort_keys=False, default=str)  # stages in run order
    atomic_write(m, markdown(result))
    return j, m
