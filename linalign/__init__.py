"""linalign: linear alignment between independently trained language models.

Subpackages, one capability each:
  assets       fetch and verify the bundled real models and corpora
  data         text loaders (bundled corpora, user JSONL/CSV), splits, streaming readers
  models       Flax ports of Hugging Face language models
  checkpoints  loading safetensors directories and GGUF files into those ports
  extract      hidden-state extraction pipeline and on-disk embedding stores
  generate     KV-cached decoding, including cross-model generation through a map
  align        streamed sufficient statistics, closed-form ridge solve, AffineMap
  metrics      representational similarity (CKA, SVCCA, mutual k-NN)
  eval         the paper's evaluations (classification heads, OOD scores, pairing)
  fhe          homomorphic-encryption backends (CKKS, Concrete ML)
  helix        the two-party HELIX protocol over sockets
  distributed  multi-host runtime, checkpointed streaming, memory planning
  experiments  the runnable studies
"""

__version__ = "0.1.0"
