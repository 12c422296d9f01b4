"""Hidden-state extraction and on-disk embedding stores.

    from linalign import checkpoints, extract
    model = checkpoints.load("all-minilm-l6-v2")
    emb_nd = extract.extract(model, texts)                        # [N, 384] mean-pooled, in memory
    store = extract.extract(model, texts, out_dir="emb/minilm")   # sharded store, resumable
    z = extract.open_store("emb/minilm").read_all()

Command line: ``python -m linalign.extract --model=all-minilm-l6-v2 --corpus=bbc_news
--out_dir=emb/minilm``; on several processes ``python -m linalign.distributed extract`` runs the
same job (``linalign.extract.job``) and writes one store of one part per process.
"""

from linalign.extract.job import load_texts
from linalign.extract.pipeline import bucket_lengths, config_hash, extract
from linalign.extract.store import (EmbeddingStore, StoreError, StoreWriter, TokenRows, join_parts,
                                    open_store, sha256_file, text_fingerprint)

__all__ = ["EmbeddingStore", "StoreError", "StoreWriter", "TokenRows", "bucket_lengths",
           "config_hash", "extract", "join_parts", "load_texts", "open_store", "sha256_file",
           "text_fingerprint"]
