r"""Runs one of the paper's studies and writes OUT_DIR/<study>/ (report.md, results.json, PNGs).

  linalign experiments --list
  linalign experiments --study=demo
  linalign experiments --study=classification --models=all-minilm-l6-v2,gemma3-270m \
      --corpus=my_data.jsonl --n_texts=2000

A model or pair that fails is recorded in results.json ("failures") and named in report.md; the
other pairs go on, and the report is rewritten as each pair finishes. The exit status is then 1.
Also `python -m linalign.experiments`.
"""

import dataclasses
import json
import sys

from absl import app, flags

from linalign.experiments import common as C
from linalign.experiments import registry

_D = C.StudyConfig()
FLAGS = flags.FLAGS


def _check_study(name):
    if name is not None and name not in registry.STUDIES:
        raise flags.ValidationError(f"unknown study {name!r}; use one of {', '.join(registry.STUDIES)} "
                                    "(--list describes them)")
    return True


def define_flags() -> None:
    from linalign import flags as shared

    flags.DEFINE_bool("list", False, "List the studies and exit.")
    flags.DEFINE_string("study", None, "Study to run: " + ", ".join(registry.STUDIES) + " (see --list).")
    flags.register_validator("study", _check_study)
    flags.DEFINE_list("models", list(_D.models), "Models: asset names, checkpoint paths or "
                      "org/name from the local Hugging Face cache.")
    flags.DEFINE_string("corpus", _D.corpus, "Labelled corpus: bbc_news or a .jsonl/.csv path.")
    flags.DEFINE_string("public_corpus", _D.public_corpus, "Public corpus for the public map regime.")
    flags.DEFINE_string("ood_corpus", _D.ood_corpus, "OOD corpus.")
    flags.DEFINE_string("ood_holdout", _D.ood_holdout, "Class held out of head training as OOD.")
    flags.DEFINE_integer("n_texts", None, "Texts sampled from --corpus (study default if unset).")
    flags.DEFINE_integer("n_public", None, "Texts sampled from --public_corpus.")
    flags.DEFINE_integer("n_in_dist", None, "Task texts added to the public set.")
    flags.DEFINE_integer("max_length", None, "Tokens per text.")
    flags.DEFINE_integer("clip_chars", None, "Cut texts to this many characters (0 = no cut).")
    flags.DEFINE_bool("title_only", None, "Use only each text's first line.")
    shared.define_batch_size("extract")
    shared.define_pooling()
    shared.define_lam(_D.lam, "the ridge of the pooled maps.")
    flags.DEFINE_string("gen_lam", _D.gen_lam, "Generation and layers: lambda spec of the per-token "
                        "maps ('auto': the lambda policy's 5-fold CV; the paper used an absolute 1e-4).")
    flags.DEFINE_integer("seed", _D.seed, "Sampling seed.")
    shared.define_out_dir("Output root; the report goes to OUT_DIR/<study>/.")
    flags.FLAGS.set_default("out_dir", _D.out_root)
    shared.alias("out", "out_dir")
    shared.define_cache_dir()
    flags.DEFINE_integer("n_gen_fit", None, "Generation: texts whose per-token states fit the map.")
    flags.DEFINE_integer("n_gen", None, "Generation: prompts generated from.")
    flags.DEFINE_integer("max_new_tokens", None, "Generation: tokens generated per prompt.")


def config_from_flags(study: str) -> C.StudyConfig:
    cfg = dataclasses.replace(C.StudyConfig(), **registry.get(study).defaults)
    over = dict(models=tuple(FLAGS.models), corpus=FLAGS.corpus, public_corpus=FLAGS.public_corpus,
                ood_corpus=FLAGS.ood_corpus, ood_holdout=FLAGS.ood_holdout,
                batch_size=FLAGS.batch_size, pooling=FLAGS.pooling, lam=FLAGS.lam, seed=FLAGS.seed, out_root=FLAGS.out_dir,
                cache_dir=FLAGS.cache_dir, gen_lam=FLAGS.gen_lam)
    for k in ("n_texts", "n_public", "n_in_dist", "max_length", "clip_chars", "title_only",
              "n_gen_fit", "n_gen", "max_new_tokens"):
        if getattr(FLAGS, k) is not None:
            over[k] = getattr(FLAGS, k)
    return dataclasses.replace(cfg, **over)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.list or not FLAGS.study:
        for s in registry.STUDIES.values():
            print(f"{s.name:16s}{s.description}")
        return
    from linalign import cli

    out = registry.run(FLAGS.study, config_from_flags(FLAGS.study),
                       command=cli.COMMAND_LINE)
    print(f"wrote {out}/report.md")
    failures = json.loads((out / "results.json").read_text())["failures"]
    if failures:
        # The study went on past them and wrote everything else; the exit status still says so.
        for f in failures:
            print(f"FAILED {f['step']}: {f['type']}: {f['message']}", file=sys.stderr)
        return 1


def _program():
    from linalign.cli import Program

    return Program(__doc__, define_flags, main, summary="the paper's studies")


PROGRAM = _program()

if __name__ == "__main__":
    from linalign.cli import module_main

    module_main("experiments")
