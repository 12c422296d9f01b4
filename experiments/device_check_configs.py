"""Configurations for ``experiments/device_check.py``: the architectures (real config dicts,
random weights), the device peaks, every size per mode, and the tokenizer written next to each
random checkpoint (the device has no network, so nothing is downloaded)."""

from __future__ import annotations

# Published dense peaks in TFLOP/s (no sparsity), by a substring of jax's device_kind. PCIe
# variants come first so that "H100 PCIe" does not match the SXM row.
PEAKS = (
    ("H100 PCIe", {"float32": 51.2, "tf32": 378.0, "bfloat16": 756.0}),
    ("H100", {"float32": 66.9, "tf32": 494.7, "bfloat16": 989.4}),
    ("H200", {"float32": 66.9, "tf32": 494.7, "bfloat16": 989.4}),
    ("GH200", {"float32": 66.9, "tf32": 494.7, "bfloat16": 989.4}),
    ("A100", {"float32": 19.5, "tf32": 156.0, "bfloat16": 312.0}),
    ("L40S", {"float32": 91.6, "tf32": 183.0, "bfloat16": 366.0}),
    ("L4", {"float32": 30.3, "tf32": 60.0, "bfloat16": 121.0}),
)

# Real configurations (the published config.json of each model, trimmed to what defines the
# architecture). Weights are random.
FULL_ARCHS = {
    "smollm2-135m": dict(
        model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
        num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, hidden_act="silu",
        max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=100000.0,
        tie_word_embeddings=True, attention_bias=False, mlp_bias=False, bos_token_id=0,
        eos_token_id=0),
    "qwen2.5-0.5b": dict(
        model_type="qwen2", vocab_size=151936, hidden_size=896, intermediate_size=4864,
        num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, hidden_act="silu",
        max_position_embeddings=32768, rms_norm_eps=1e-6, rope_theta=1000000.0,
        tie_word_embeddings=True, use_sliding_window=False, bos_token_id=151643,
        eos_token_id=151643),
    "gemma3-270m": dict(
        model_type="gemma3_text", vocab_size=262144, hidden_size=640, intermediate_size=2048,
        num_hidden_layers=18, num_attention_heads=4, num_key_value_heads=1, head_dim=256,
        hidden_activation="gelu_pytorch_tanh", max_position_embeddings=32768,
        rms_norm_eps=1e-6, rope_theta=1000000.0, rope_local_base_freq=10000.0,
        sliding_window=512, query_pre_attn_scalar=256, tie_word_embeddings=True,
        bos_token_id=2, eos_token_id=1, pad_token_id=0),
    "all-minilm-l6-v2": dict(
        model_type="bert", vocab_size=30522, hidden_size=384, intermediate_size=1536,
        num_hidden_layers=6, num_attention_heads=12, hidden_act="gelu",
        max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=1e-12, pad_token_id=0),
}
_TINY = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2)
SMALL_ARCHS = {
    "smollm2-135m": {**FULL_ARCHS["smollm2-135m"], **_TINY, "num_attention_heads": 4,
                     "num_key_value_heads": 2},
    "qwen2.5-0.5b": {**FULL_ARCHS["qwen2.5-0.5b"], **_TINY, "num_attention_heads": 4,
                     "num_key_value_heads": 2, "bos_token_id": 1, "eos_token_id": 1},
    "gemma3-270m": {**FULL_ARCHS["gemma3-270m"], **_TINY, "num_attention_heads": 2,
                    "num_key_value_heads": 1, "head_dim": 32, "query_pre_attn_scalar": 32,
                    "sliding_window": 8},
    "all-minilm-l6-v2": {**FULL_ARCHS["all-minilm-l6-v2"], **_TINY, "num_attention_heads": 4,
                         "max_position_embeddings": 64},
}

# Wheels the device image lacks for the full (non-FHE) package, pinned as in requirements.lock.
CARRY_WHEELS = ("gguf==0.19.0",)


def sizes(small: bool) -> dict:
    """Every size the stages use, in one place."""
    if small:
        return dict(archs=SMALL_ARCHS, parity_bt=(2, 12), extract_batches=(4,), extract_t=16,
                    extract_steps=2, decode_batches=(2,), prompt_t=8, new_tokens=4,
                    speed_dtypes=("float32",),
                    gram_rows=1024, gram_d=64, gram_reps=2, fit_rows=4096, fit_d=32,
                    stream_rows=20_000, stream_d=32, stream_chunk=4096)
    # Parity runs 600 tokens so that Gemma 3's sliding-window layers (window 512) are exercised.
    return dict(archs=FULL_ARCHS, parity_bt=(4, 600), extract_batches=(32, 128), extract_t=128,
                extract_steps=4, decode_batches=(1, 16), prompt_t=32, new_tokens=64,
                speed_dtypes=("bfloat16",),
                gram_rows=16384, gram_d=4096, gram_reps=10, fit_rows=65536, fit_d=1024,
                stream_rows=10_000_000, stream_d=4096, stream_chunk=65536)


def write_tokenizer(path, causal: bool, vocab: int):
    """A small trained tokenizer (byte-level BPE, or WordPiece for BERT) saved like HF does."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    corpus = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(12)) for i in range(200)]
    size = min(vocab, 400)
    if causal:
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.train_from_iterator(corpus, trainers.BpeTrainer(
            vocab_size=size, special_tokens=["<s>", "</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        cfg = {"bos_token": "<s>", "eos_token": "</s>"}
    else:
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        sp = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=size, special_tokens=sp))
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
        tok.decoder = decoders.WordPiece()
        cfg = {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]",
               "unk_token": "[UNK]"}
    tok.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(cfg))


WORDS = ("the market rose as shares in tech firms gained while the team won the match and the "
         "minister said the new film was a hit with fans of music and sport in london today "
         "after weeks of talks between unions and the government over pay").split()
