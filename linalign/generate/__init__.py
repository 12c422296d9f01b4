"""KV-cached decoding for the causal ports, including cross-model generation through a map.

  decode   ``Decoder`` (jitted prefill + ``lax.while_loop`` decoding, greedy / top-k / top-p),
           ``generate_text`` for a loaded model and text prompts.
  cross    ``generate_from_hidden``: source blocks -> affine map -> target LM head, with target
           tokens re-read by the source model through its own tokenizer.
"""

from linalign.generate.cross import CrossDecoder, CrossGeneration, generate_from_hidden
from linalign.generate.decode import GREEDY, Decoder, Generation, Sampling, generate_text

__all__ = ["CrossDecoder", "CrossGeneration", "Decoder", "GREEDY", "Generation", "Sampling",
           "generate_from_hidden", "generate_text"]
