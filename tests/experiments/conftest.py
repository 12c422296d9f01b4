"""Tiny random Hugging Face models (saved with save_pretrained) and small corpora for study tests."""

import json
import pathlib

import numpy as np
import pytest

from linalign.experiments import common as C

WORDS = ("the market rose as shares in tech firms gained while the team won the match and the "
         "minister said the new film was a hit with fans of music and sport in london today").split()


def _sentences(n, seed, topic_words=()):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(5, 12))
        words = list(rng.choice(WORDS, size=k)) + list(rng.choice(topic_words, size=3)) if topic_words \
            else list(rng.choice(WORDS, size=k))
        rng.shuffle(words)
        out.append(" ".join(words).capitalize() + ".")
    return out


def _train_tokenizer(kind: str, out: pathlib.Path, corpus):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    if kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        sp = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=200, special_tokens=sp))
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
        tok.decoder = decoders.WordPiece()
        cfg = {"cls_token": "[CLS]", "sep_token": "[SEP]", "pad_token": "[PAD]", "unk_token": "[UNK]"}
    elif kind == "byte_level":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.train_from_iterator(corpus, trainers.BpeTrainer(
            vocab_size=320, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        cfg = {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True}
    else:  # metaspace, SentencePiece-like
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        tok.train_from_iterator(corpus, trainers.BpeTrainer(
            vocab_size=260, special_tokens=["<unk>", "<bos>", "<eos>"]))
        cfg = {"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>", "add_bos_token": True}
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(cfg))
    return tok


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """{name: path} of three tiny random models with three different tokenizers."""
    import torch
    import transformers

    root = tmp_path_factory.mktemp("tiny_models")
    corpus = _sentences(300, 0) + ["Hello world, café prices rose 3% today!"] * 5
    torch.manual_seed(0)
    paths = {}
    tok = _train_tokenizer("wordpiece", root / "bert", corpus)
    cfg = transformers.BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64, max_position_embeddings=128)
    transformers.BertModel(cfg, add_pooling_layer=False).save_pretrained(root / "bert")
    paths["bert"] = root / "bert"
    for name, kind, hidden in (("llama_a", "byte_level", 48), ("llama_b", "metaspace", 40)):
        tok = _train_tokenizer(kind, root / name, corpus)
        cfg = transformers.LlamaConfig(
            vocab_size=tok.get_vocab_size(), hidden_size=hidden, intermediate_size=64,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=256, tie_word_embeddings=True,
            bos_token_id=tok.token_to_id("<s>" if kind == "byte_level" else "<bos>"),
            eos_token_id=tok.token_to_id("</s>" if kind == "byte_level" else "<eos>"))
        transformers.LlamaForCausalLM(cfg).save_pretrained(root / name)
        paths[name] = root / name
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture(scope="session")
def tiny_corpora(tmp_path_factory):
    """A labelled 3-topic JSONL task corpus and an unlabelled public JSONL corpus."""
    root = tmp_path_factory.mktemp("corpora")
    topics = {"sport": ["goal", "match", "team", "coach"], "money": ["bank", "shares", "profit", "tax"],
              "arts": ["film", "music", "actor", "stage"]}
    rows = []
    for k, (lab, tw) in enumerate(topics.items()):
        rows += [{"text": t, "label": lab} for t in _sentences(40, 10 + k, tw)]
    task = root / "task.jsonl"
    task.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    public = root / "public.jsonl"
    public.write_text("\n".join(json.dumps({"text": t}) for t in _sentences(80, 99)) + "\n")
    return {"task": str(task), "public": str(public)}



MASSIVE_DIMS = (3, 17, 42)


def _llama_sharing_tokenizer(tiny_models, out: pathlib.Path, norm_scale, embed_offset=0.0, seed=1):
    """A tiny Llama (hidden 64) with llama_a's tokenizer; the final norm's weight in MASSIVE_DIMS
    set to ``norm_scale`` and ``embed_offset`` added to every token's embedding there."""
    import shutil

    import torch
    import transformers

    src = pathlib.Path(tiny_models["llama_a"])
    out.mkdir(parents=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / f, out / f)
    base = transformers.LlamaConfig.from_pretrained(src)
    cfg = transformers.LlamaConfig(
        vocab_size=base.vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        tie_word_embeddings=True, bos_token_id=base.bos_token_id, eos_token_id=base.eos_token_id)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():
        dims = list(MASSIVE_DIMS)
        model.model.norm.weight[dims] = torch.tensor(norm_scale, dtype=torch.float32)
        model.model.embed_tokens.weight[:, dims] += embed_offset
    model.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def massive_dims():
    return MASSIVE_DIMS


@pytest.fixture(scope="session")
def massive_model(tiny_models, tmp_path_factory):
    """A tiny Llama whose final hidden states have massive activations (Sun et al., 2024).

    Three dimensions of the final norm's weight are 300-1000 (so those dimensions of the final
    hidden state are hundreds of times larger than the rest, as in real decoders), and the token
    embeddings carry a constant offset in the same dimensions (so the residual stream's values
    there sit far from zero for every token, as massive activations do). The offset is the same
    for every token, so it shifts all logits of the tied head equally and greedy decoding is
    unaffected. Shares llama_a's tokenizer.
    """
    return _llama_sharing_tokenizer(tiny_models, tmp_path_factory.mktemp("massive") / "llama_massive",
                                    [300.0, 600.0, 1000.0], embed_offset=0.5)


@pytest.fixture(scope="session")
def dead_dims_model(tiny_models, tmp_path_factory):
    """A tiny Llama whose final hidden states are exactly zero in three dimensions (final norm
    weight 0 there): as a map's source at lambda 0 its C_bb is genuinely singular."""
    return _llama_sharing_tokenizer(tiny_models, tmp_path_factory.mktemp("dead") / "llama_dead",
                                    [0.0, 0.0, 0.0], seed=2)


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory):
    # One hidden-state cache for all study tests: they embed the same texts with the same models.
    return str(tmp_path_factory.mktemp("hidden_cache"))


@pytest.fixture()
def cfg(tiny_models, tiny_corpora, tmp_path, shared_cache):
    C._MODELS.clear()
    from linalign.eval import cache
    cache.clear_memo()
    return C.StudyConfig(models=(tiny_models["bert"], tiny_models["llama_a"], tiny_models["llama_b"]),
                         corpus=tiny_corpora["task"], public_corpus=tiny_corpora["public"],
                         ood_corpus=tiny_corpora["public"], ood_holdout="arts", n_texts=120,
                         n_public=80, n_in_dist=16, max_length=24, batch_size=16, lam="gcv",
                         knn_k=5, out_root=str(tmp_path / "results"), cache_dir=shared_cache,
                         scaling_sizes=(20, 40), n_gen_fit=40, n_gen=2, max_new_tokens=6,
                         gen_corpora=(tiny_corpora["public"],), encoder=tiny_models["bert"])
