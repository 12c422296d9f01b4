"""Cross-model generation: cached source + map + target head vs a brute-force re-reading reference."""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from linalign.generate import cross, decode
from linalign.models import gemma3, llama
from linalign.models.base import LoadedModel
from linalign.models.tokenizer import Tokenizer

tokenizers = pytest.importorskip("tokenizers")

# A small alphabet and a BPE vocabulary full of its pairs and triples: almost every appended
# character merges with the previous piece, so re-tokenization rollbacks happen all the time.
CHARS = list("abcd ")
CORPUS = ["".join(np.random.default_rng(i).choice(CHARS, size=40)) for i in range(50)]


def char_tokenizer(name="chars"):
    """Target side: one token per character, so decoding is plain concatenation."""
    from tokenizers import Regex, decoders, models, pre_tokenizers

    vocab = {"<eos>": 0, **{c: i + 1 for i, c in enumerate(CHARS)}}
    tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="<eos>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(["<eos>"])
    return Tokenizer(tok, bos_id=None, eos_id=0, pad_id=0, add_bos=False, chat_template=None, name=name)


def bpe_tokenizer():
    """Source side: BPE with merges across characters, so growing text re-tokenizes earlier pieces."""
    from tokenizers import decoders, models, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.decoder = decoders.Fuse()
    trainer = trainers.BpeTrainer(vocab_size=60, special_tokens=["<eos>", "<pad>"], initial_alphabet=CHARS,
                                  show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    return Tokenizer(tok, bos_id=None, eos_id=0, pad_id=1, add_bos=False, chat_template=None, name="bpe")


def random_model(mod, cfg_dict, seed):
    cfg = mod.Config.from_hf_config(cfg_dict)
    model = mod.Model(cfg)
    params = jax.jit(model.init)(jax.random.PRNGKey(seed), jnp.zeros((1, 4), jnp.int32))["params"]
    # Sharpen the head so greedy choices are clear-cut, not float near-ties; a zero EOS row keeps
    # EOS (logit 0) from ending the random text at once.
    params["embed_tokens"]["embedding"] = (params["embed_tokens"]["embedding"] * 30.0).at[0].set(0.0)
    return cfg, model, params


def loaded(name, mod, cfg_dict, tok, seed):
    cfg, model, params = random_model(mod, cfg_dict, seed)
    return LoadedModel(name=name, family=mod.__name__, config=cfg, module=model, params=params, tokenizer=tok,
                       is_causal=True)


def llama_cfg(vocab, hidden=48):
    return dict(model_type="llama", vocab_size=vocab, hidden_size=hidden, intermediate_size=64,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                tie_word_embeddings=True, eos_token_id=0)


def gemma_cfg(vocab):
    return dict(model_type="gemma3_text", vocab_size=vocab, hidden_size=32, intermediate_size=64,
                num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                query_pre_attn_scalar=16, sliding_window=8, layer_types=["sliding_attention", "full_attention"],
                eos_token_id=0)


def reference(source, w, b, target, prompt, n):
    """Re-reads prompt + generated text from scratch at every step (no cache, no rollback)."""
    s_tok, t_tok = source.tokenizer, target.tokenizer
    prompt_ids = s_tok.encode(prompt, add_special_tokens=True)
    tgt, prev = [], None

    @jax.jit
    def last_state(ids, n):  # right-padded to a fixed length: one compile for every step
        mask = (jnp.arange(ids.shape[1]) < n)[None].astype(jnp.int32)
        h = source.module.apply({"params": source.params}, ids, mask).last_hidden_state
        return h[0, n - 1]

    for _ in range(n):
        text = t_tok.decode(tgt).rstrip("\ufffd")
        src = prompt_ids + (s_tok.encode(text, add_special_tokens=False) if text else [])
        if src == prev:
            return tgt, "stalled"
        prev = src
        h = last_state(jnp.asarray([src + [0] * (128 - len(src))]), len(src))
        logits = target.module.apply({"params": target.params}, h @ w + b, method=type(target.module).lm_head)
        tok = int(jnp.argmax(logits))
        if tok == 0:
            return tgt, "eos"
        tgt.append(tok)
    return tgt, "length"


@pytest.mark.slow  # ~30 s each on two shared cores
@pytest.mark.parametrize("target_family", ["gemma3", "llama"])
def test_cached_cross_generation_matches_rereading_reference(target_family):
    s_tok, t_tok = bpe_tokenizer(), char_tokenizer()
    source = loaded("src", llama, llama_cfg(s_tok.vocab_size), s_tok, seed=0)
    if target_family == "gemma3":
        target = loaded("tgt", gemma3, gemma_cfg(t_tok.vocab_size), t_tok, seed=1)
    else:
        target = loaded("tgt", llama, llama_cfg(t_tok.vocab_size, hidden=32), t_tok, seed=1)
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.normal(size=(48, 32)) / np.sqrt(48), jnp.float32)
    b = jnp.asarray(rng.normal(size=(32,)) * 0.1, jnp.float32)
    dec = cross.CrossDecoder(source, (w, b), target)
    total_rollbacks, longest = 0, 0
    for prompt in ["abca", "dd cab", "b"]:
        got = dec.generate(prompt, max_new_tokens=16)
        ref_ids, ref_reason = reference(source, w, b, target, prompt, 16)
        assert got.target_ids == ref_ids, prompt
        assert got.finish_reason == ref_reason
        assert got.text == t_tok.decode(ref_ids)
        assert got.source_ids == (s_tok.encode(got.text, add_special_tokens=False) if got.text else [])
        total_rollbacks += got.rollbacks
        longest = max(longest, len(got.target_ids))
    assert longest >= 8, "the random pair should produce some text before stopping"
    assert total_rollbacks > 0, "the test should exercise re-tokenization rollbacks"


@pytest.mark.slow
def test_same_model_identity_map_equals_native_greedy():
    tok = char_tokenizer()
    model = loaded("m", llama, llama_cfg(tok.vocab_size), tok, seed=3)
    got = cross.generate_from_hidden(model, lambda h: h, model, "abc dab", max_new_tokens=12)
    ids = np.asarray([tok.encode("abc dab")])
    native = decode.Decoder(model.module, model.params).generate(ids, max_new_tokens=12, eos_ids=(0,)).rows()[0]
    if native and native[-1] == 0:
        native = native[:-1]
    assert got.target_ids == native
    assert got.rollbacks == 0


def test_same_tokens_as():
    assert char_tokenizer().same_tokens_as(char_tokenizer("other name"))
    assert not char_tokenizer().same_tokens_as(bpe_tokenizer())
    assert not char_tokenizer().same_tokens_as(object())


@pytest.mark.slow
def test_shared_tokenizer_feeds_ids_and_forced_retokenization_rereads_text():
    # One model with a BPE tokenizer as source and target: a random model writes non-canonical
    # splits ("a" "b" where the merge "ab" exists). Fed back as ids (the default with a shared
    # tokenizer), cross decoding is native greedy decoding; forced through the text round trip,
    # it equals re-reading the canonical tokenization from scratch, and that context differs.
    tok = bpe_tokenizer()
    model = loaded("m", llama, llama_cfg(tok.vocab_size), tok, seed=5)
    eye = (jnp.eye(48, dtype=jnp.float32), jnp.zeros(48, jnp.float32))
    dec = cross.CrossDecoder(model, eye, model)
    assert dec.shared_tokenizer
    differs = 0
    for prompt in ["abca", "dd cab"]:
        got = dec.generate(prompt, 16)
        ids = np.asarray([tok.encode(prompt)])
        native = decode.Decoder(model.module, model.params).generate(ids, max_new_tokens=16, eos_ids=(0,)).rows()[0]
        native = native[:-1] if native and native[-1] == 0 else native
        assert got.target_ids == native and got.rollbacks == 0 and got.source_ids == native
        forced = dec.generate(prompt, 16, retokenize=True)
        ref_ids, _ = reference(model, *eye, model, prompt, 16)
        assert forced.target_ids == ref_ids
        differs += forced.target_ids != got.target_ids
    assert differs, "re-reading the canonical tokenization should change some output here"
    other = loaded("o", llama, llama_cfg(char_tokenizer().vocab_size), char_tokenizer(), seed=1)
    with pytest.raises(ValueError, match="retokenize=False needs one tokenizer"):
        cross.CrossDecoder(model, (jnp.eye(48), jnp.zeros(48)), other).generate("ab", 4, retokenize=False)


def test_bad_arguments():
    tok = char_tokenizer()
    model = loaded("m", llama, llama_cfg(tok.vocab_size), tok, seed=3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        cross.generate_from_hidden(model, lambda h: h, model, "abc", max_new_tokens=0)
    with pytest.raises(ValueError, match="no source tokens"):
        cross.generate_from_hidden(model, lambda h: h, model, "", max_new_tokens=3)


@pytest.mark.slow
def test_real_smollm2_through_identity_map_answers_like_native():
    """SmolLM2 as both source and target, identity map: the cross path (decode with the target
    tokenizer, re-encode with the source tokenizer) must reproduce native greedy decoding."""
    from linalign import assets
    from linalign.checkpoints.gguf import read_gguf

    cfg, tensors, tok = read_gguf(assets.path("smollm2-135m-instruct"))
    config = llama.Config.from_hf_config(cfg)
    model = LoadedModel(name="smollm2", family="llama", config=config, module=llama.Model(config),
                        params=llama.convert_params(tensors, config), tokenizer=tok, is_causal=True)
    got = cross.generate_from_hidden(model, lambda h: h, model, "What is the capital of France?",
                                     max_new_tokens=20, chat=True)
    native = decode.generate_text(model, ["What is the capital of France?"], max_new_tokens=20, chat=True)[0]
    assert got.text == native
    assert got.text.strip() == "The capital of France is Paris."
    assert got.finish_reason == "eos"


def test_map_given_as_a_saved_file_or_affine_map(tmp_path):
    from linalign.align.affine_map import AffineMap, MapMetadata

    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32)
    amap = AffineMap(w, b, MapMetadata(d_b=6, d_a=4, source_model="s", target_model="t"))
    path = amap.save(tmp_path / "m.safetensors")
    assert amap.save(tmp_path / "fit").name == "map.safetensors"  # a fit's folder
    h = rng.normal(size=(3, 6)).astype(np.float32)
    for given in (path, str(path), tmp_path / "fit", amap, (w, b)):
        got = np.asarray(cross.as_map_fn(given, 6, 4)(jnp.asarray(h)))
        np.testing.assert_allclose(got, h @ w + b, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"the map's W is \(6, 4\) but the source's hidden size is 8"):
        cross.as_map_fn(path, 8, 4)
    with pytest.raises(FileNotFoundError):
        cross.as_map_fn(tmp_path / "none.safetensors")
