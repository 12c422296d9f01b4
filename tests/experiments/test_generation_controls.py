"""Controls of the generation study: the self-map, the perturbed self-map, and the measures."""

import numpy as np
import pytest

from linalign.eval import textgen
from linalign.experiments import chatdata, gencontrols
from linalign.experiments import generation as G


@pytest.mark.slow
def test_identity_self_map_reproduces_native_generation():
    # Source = target = SmolLM2, identity map: cross decoding must give exactly the model's own
    # greedy chat answers. The fourth prompt is a study prompt where SmolLM2 writes "\n" "\n" as
    # two tokens: re-read as text ("\n\n", one token) the answer diverges after 51 tokens, so
    # the shared tokenizer's ids must be fed as generated.
    from linalign.experiments import common as C
    from linalign.experiments import tokenpairs as TP

    m = C.load_model("smollm2-135m-instruct")
    prompts = ["What is the capital of France?",
               "Explain what this saying means and give an example.\n\nA penny saved is a penny earned.",
               "Summarise this news article in three sentences.\n\nAd sales boost Time Warner profit\n\n"
               "Quarterly profits at US media giant TimeWarner jumped 76% to $1.13bn for the three months "
               "to December, from $639m year-earlier.",
               TP.eval_prompts(C.StudyConfig(), 3)[2]]
    native = G.native_all(m, prompts, 64)
    d = m.config.hidden_size
    cross = G.cross_all(m, m, (np.eye(d, dtype=np.float32), np.zeros(d, np.float32)), prompts, 64)
    assert [c.ids for c in cross] == [n.ids for n in native]
    assert all(len(n.ids) > 5 for n in native) and len(native[3].ids) == 64
    assert "Paris" in native[0].text


def test_rotation_turns_every_vector_by_the_angle():
    q = gencontrols.rotation(16, 30.0, seed=3)
    np.testing.assert_allclose(q @ q.T, np.eye(16), rtol=0, atol=1e-12)
    h = np.random.default_rng(0).normal(size=(50, 16))
    cos = np.sum(h * (h @ q), 1) / np.sum(h * h, 1)
    np.testing.assert_allclose(cos, np.cos(np.deg2rad(30.0)), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="even dimension"):
        gencontrols.rotation(5, 10.0)


@pytest.mark.parametrize("deg,sigma", [(0.0, 0.0), (30.0, 0.0), (0.0, 0.5), (20.0, 0.3)])
def test_perturbed_map_r2_follows_the_known_amounts(deg, sigma):
    from linalign.experiments import common as C

    rng = np.random.default_rng(1)
    d = 64
    mu = rng.normal(size=d) * 3
    z = mu + rng.normal(size=(4000, d))  # isotropic about mu, so R^2 has a closed form
    w, b = gencontrols.perturbed_map(mu, deg, sigma, seed=0)
    expect = 2 * np.cos(np.deg2rad(deg)) - 1 - sigma ** 2
    np.testing.assert_allclose(C.r2(z @ w + b, z), expect, rtol=0, atol=0.03)


def test_repetition_rate():
    assert textgen.repetition_rate([1, 2, 3, 4, 5, 6, 7]) == 0.0
    assert textgen.repetition_rate([9] * 12) == pytest.approx(8 / 9, rel=1e-12, abs=0)
    assert textgen.repetition_rate([1, 2]) == 0.0
    # "a b c d a b c d": 5 4-grams, the last one repeats the first.
    assert textgen.repetition_rate([1, 2, 3, 4, 1, 2, 3, 4]) == pytest.approx(1 / 5, rel=1e-12, abs=0)
    with pytest.raises(ValueError, match="n must be >= 1"):
        textgen.repetition_rate([1], n=0)


def test_teacher_forced_measures():
    tf = G.teacher_forced([1, 2, 3, 4], [1, 2, 0, 0], [1, 9, 3, 4])
    assert tf["top1_agreement"] == 0.5 and tf["native_next_acc"] == 0.75
    assert tf["hybrid_next_acc"] == 0.25 and tf["next_acc_kept"] == pytest.approx(1 / 3, rel=1e-12, abs=0)
    with pytest.raises(ValueError, match="non-empty and alike"):
        G.teacher_forced([1], [1, 2], [1])


class _Tok:
    """A tokenizer stand-in for layouts: a chat template and no BOS of its own."""

    name, bos_token, eos_token, add_bos = "t", "<s>", "</s>", False

    def __init__(self, template):
        self.chat_template = template

    def apply_chat_template(self, msgs, add_generation_prompt=True):
        from linalign.models.tokenizer import Tokenizer

        return Tokenizer.apply_chat_template(self, msgs, add_generation_prompt)


def test_chat_layout_and_content_coordinates():
    tpl = ("{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '<|end|>\n' }}{% endfor %}"
           "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}")
    lay = chatdata.chat_layout(_Tok(tpl), "Hi there", "Hello.\nBye.", finished=True)
    assert lay.text == "<|user|>\nHi there<|end|>\n<|assistant|>\nHello.\nBye.<|end|>\n"
    (u0, u1), (r0, r1) = lay.spans
    assert lay.text[u0:u1] == "Hi there" and lay.text[r0:r1] == "Hello.\nBye."
    unfinished = chatdata.chat_layout(_Tok(tpl), "Hi there", "Hello.", finished=False)
    assert unfinished.text.endswith("Hello.") and unfinished.pieces[2][0] == unfinished.pieces[2][1]
    plain = chatdata.chat_layout(_Tok(chatdata.GEMMA_PLAIN_TEMPLATE), "Hi there", "Hello.", finished=True)
    assert plain.text == "<s>Question: Hi there\nAnswer: Hello.\n"
    # Tokens: "<|user|>\n" | "Hi" | " there" | "<|end|>\n<|assistant|>\n" | "Hello" | "." ...
    t = lay.text
    offs = np.array([[0, 9], [9, 11], [11, 17], [17, r0], [r0, r0 + 5], [r0 + 5, r0 + 6]])
    c = chatdata.to_content(offs, lay)
    assert c[1].tolist() == [0, 2] and c[2].tolist() == [2, 8]
    assert c[4, 0] == 8 + 8 and c[0, 0] > c[5, 1] and c[3, 0] > c[0, 0]  # pieces pair past the content
    other = chatdata.chat_layout(_Tok(chatdata.GEMMA_PLAIN_TEMPLATE), "Hi there", "Hello.\nBye.", finished=True)
    o = other.text.index("Answer:")
    # " Hello" carries the template's space: it still counts as the response's first token.
    offs2 = np.array([[o, o + 6], [o + 6, o + 7], [o + 7, o + 13]])
    c2 = chatdata.to_content(offs2, other)
    assert c2[2].tolist() == c[4].tolist() and c2[1].tolist() == c[3].tolist()
    assert chatdata.response_mask(offs2, other).tolist() == [False, False, True]
    assert t[offs[4, 0]:offs[4, 1]] == "Hello"
