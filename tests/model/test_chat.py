"""Chat formatting: the checkpoint's own template, rendered and encoded as transformers does it.

The reference is transformers' `apply_chat_template(tokenize=True)` on the same files. Two
tokenizers per template: the family's tiny tokenizer (its split pattern keeps words apart) and a
byte-level BPE trained here on rendered dialogues with no split pattern, so that its merges
cross message boundaries ("user\\nWhat", "\\n\\nThe"): there encoding a dialogue piece by piece
gives other ids than encoding it whole.
"""
import functools
import itertools
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import AddedToken, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers, processors, trainers

from rl2f.engine import SamplingParams
from rl2f.engine.types import CompletionOutput, RequestOutput
from rl2f.episodes import EpisodeRunner, summarize
from rl2f.errors import UserError
from rl2f.model.chat import TEMPLATE_DIR, ChatTemplate
from rl2f.model.tokenizer import TINY_SPECIALS, build_tiny_tokenizer, load_tokenizer, save_tokenizer_files
from rl2f.roles import Role
from rl2f.tasks import get_task
from rl2f.teacher import make_teacher
from rl2f.train.sft import chat_sequence, episode_sequence

FIXTURES = Path(__file__).parent / "fixtures" / "chat_templates"
FAMILIES = ["gemma3", "qwen2", "qwen3", "llama"]
# (name, the tokenizer's vocabulary family, config.json model_type, template file): SmolLM2 is a
# Llama-architecture checkpoint whose template is ChatML.
CHECKPOINTS = [(f, f, f, TEMPLATE_DIR / f"{f}.jinja") for f in FAMILIES] + [
    ("smollm2", "qwen2", "llama", FIXTURES / "smollm2.jinja")]

SYSTEM = {"role": "system", "content": "You are a careful math tutor. Put the final answer last."}
TURNS = [  # an RL2F exchange: attempt, teacher feedback, second attempt, ...
    {"role": "user", "content": "What is 17 * 23?"},
    {"role": "assistant", "content": "17 * 23 = 17 * 20 + 17 * 3 = 340 + 41 = 381.\nThe answer is 381."},
    {"role": "user", "content": "Check 17 * 3 again."},
    {"role": "assistant", "content": "17 * 3 = 51, so 340 + 51 = 391.\nThe answer is 391."},
    {"role": "user", "content": "Correct. What is 391 + 9?"},
]
# Whitespace at the edges, code indentation, a blank line, unicode: exercises trimming (Gemma,
# Llama) versus verbatim content (Qwen, ChatML).
ODD = [
    {"role": "system", "content": "  Solve the maze.\n"},
    {"role": "user", "content": "  S . #\n  . . G\nReach G from S (π ≈ 3.14, √2, é).  "},
    {"role": "assistant",
     "content": "def path():\n    return ['right', 'down', 'right']\n\n\nMoves: right, down, right. "},
]
DIALOGUES = [sys + TURNS[:n] for n in (2, 3, 4, 5) for sys in ([], [SYSTEM])] + [ODD, ODD[1:]]


def _random_dialogue(rng: random.Random) -> list[dict]:
    """Dialogue text for training: varied words and numbers (no message repeats, so the BPE learns
    the junctions between template and content rather than whole messages)."""
    words = "the answer is what check again correct so then step first number sum total you are a careful".split()
    opener = ["What", "Check", "The", "Correct.", "So", "You", "17", " ", "\n"]
    say = lambda: " ".join([rng.choice(opener)] + [rng.choice(words + [str(rng.randint(0, 999))])
                                                   for _ in range(rng.randint(2, 12))])
    messages = [{"role": "system", "content": say()}] if rng.random() < 0.5 else []
    return messages + [{"role": r, "content": say()} for r in ["user", "assistant"] * rng.randint(1, 3)]


def _bpe(family: str) -> HFTokenizer:
    """Byte-level BPE with no split pattern, trained on the official templates' renderings of
    dialogues (special tokens left out of the text), so frequent header + content and content +
    separator pairs become single tokens."""
    import transformers.utils.chat_template_utils as ctu

    specials = [t for t, _ in TINY_SPECIALS[family]]
    strip = re.compile("|".join(map(re.escape, specials + ["<bos>", "<|begin_of_text|>"])))
    rng = random.Random(0)
    corpus = []
    for path in (TEMPLATE_DIR / f"{f}.jinja" for f in FAMILIES):
        template = ctu._compile_jinja_template(path.read_text(encoding="utf-8"))
        for _ in range(300):
            text = template.render(messages=_random_dialogue(rng), add_generation_prompt=rng.random() < 0.5)
            corpus.append(strip.sub("", text))
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=1500, min_frequency=2, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return tok


@functools.lru_cache(maxsize=None)
def _checkpoint(name: str, kind: str, root: str) -> Path:
    """A tokenizer directory as a checkpoint ships it: tokenizer.json, tokenizer_config.json with the
    chat template, special_tokens_map.json, config.json naming the architecture."""
    _, vocab, model_type, template = next(c for c in CHECKPOINTS if c[0] == name)
    d = Path(root) / f"{name}-{kind}"
    tok = build_tiny_tokenizer(vocab) if kind == "tiny" else _bpe(vocab)
    if name == "smollm2" and kind == "bpe":  # GPT-2-style: offsets leave out a token's leading whitespace
        tok.post_processor = processors.ByteLevel(trim_offsets=True)
    save_tokenizer_files(tok, vocab, d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["chat_template"] = template.read_text(encoding="utf-8")
    if name == "smollm2":  # SmolLM2-Instruct's own special tokens
        cfg.update(bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>")
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    (d / "special_tokens_map.json").write_text(json.dumps({k: cfg[k] for k in ("bos_token", "eos_token", "pad_token")
                                                          if cfg.get(k)}))
    _hf(d)  # load once before config.json exists: transformers would import the model's modules for it
    (d / "config.json").write_text(json.dumps({"model_type": model_type}))
    return d


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("chat"))
    return lambda name, kind="tiny": _checkpoint(name, kind, root)


@functools.lru_cache(maxsize=None)
def _hf(path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(path))


def _hf_ids(path, messages, gen, **kw):
    return list(_hf(path).apply_chat_template(messages, tokenize=True, add_generation_prompt=gen, **kw)["input_ids"])


def _straddles(offsets, regions) -> int:
    """Tokens that hold characters of a message and characters outside it."""
    return sum(any(r and s < r[1] and e > r[0] and (s < r[0] or e > r[1]) for r in regions) for s, e in offsets)


# --------------------------------------------------------------------------------------
# Ids: the template's, for any tokenizer


@pytest.mark.parametrize("kind", ["tiny", "bpe"])
@pytest.mark.parametrize("name", [c[0] for c in CHECKPOINTS])
def test_ids_equal_transformers(name, kind, checkpoint):
    """apply_chat and render equal transformers' apply_chat_template(tokenize=True) token for token
    on dialogues of 2-5 turns, with and without a system message and a generation prompt, and on
    content with edge whitespace, code and unicode; the text equals tokenize=False. With the
    dialogue-trained BPE, merges do cross message boundaries and encoding the dialogue piece by
    piece (cut at the messages' boundaries, as rl2f did before) gives other ids: the case this guards."""
    d = checkpoint(name, kind)
    tok = load_tokenizer(d)
    assert tok.family == next(c[2] for c in CHECKPOINTS if c[0] == name)  # smollm2: the Llama architecture
    straddling, piecewise_differs = 0, 0
    for messages, gen in itertools.product(DIALOGUES, (True, False)):
        ref = _hf_ids(d, messages, gen)
        assert tok.apply_chat(messages, add_generation_prompt=gen) == ref, (name, messages, gen)
        ids, owner = tok.render(messages, add_generation_prompt=gen)
        assert ids == ref
        text, regions = tok.chat_template.spans(messages, gen)
        assert text == _hf(d).apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        straddling += _straddles(tok.backend.encode(text, add_special_tokens=False).offsets, regions)
        cuts = sorted({0, len(text), *(c for r in regions if r for c in r)})
        piecewise_differs += [i for a, b in zip(cuts, cuts[1:]) for i in tok.encode(text[a:b])] != ids
    if kind == "bpe":
        assert straddling > 0 and piecewise_differs > 0, (straddling, piecewise_differs)


def _char_spans(tok, ids, text) -> list[tuple[int, int]]:
    """Each token's characters in `text`, from the token's own bytes (byte-level vocabularies), not
    from the encoding's offsets: the reference the owners are checked against."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    added = tok.backend.get_added_tokens_decoder()
    char_at = [i for i, c in enumerate(text) for _ in c.encode("utf-8")] + [len(text)]
    spans, pos = [], 0
    for i in ids:
        piece = added[i].content.encode("utf-8") if i in added else bytes(byte_of[c] for c in tok.id_to_token(i))
        spans.append((char_at[pos], char_at[pos + len(piece) - 1] + 1))
        pos += len(piece)
    assert pos == len(text.encode("utf-8"))
    return spans


@pytest.mark.parametrize("kind", ["tiny", "bpe"])
@pytest.mark.parametrize("name", [c[0] for c in CHECKPOINTS])
def test_owners_cover_every_token(name, kind, checkpoint):
    """Every token has an owner (-1 or a message index); every character of a message lies in a token
    it owns (or, merged across a boundary, an earlier message's); no template token holds a
    message's character; an assistant's own tokens end with the end-of-turn token, a stop id."""
    tok = load_tokenizer(checkpoint(name, kind))
    for messages, gen in itertools.product(DIALOGUES, (True, False)):
        ids, owner = tok.render(messages, add_generation_prompt=gen)
        text, regions = tok.chat_template.spans(messages, gen)
        spans = _char_spans(tok, ids, text)
        assert len(owner) == len(ids) and set(owner) <= {-1, *range(len(messages))}
        for m, (a, b) in enumerate(regions):
            assert text[a:b].strip()
            holders = [o for (s, e), o in zip(spans, owner) if s < b and e > a]
            assert set(holders) <= {m, *range(m)} and m in holders, (m, holders)
            if messages[m]["role"] == "assistant":
                assert ids[max(k for k, o in enumerate(owner) if o == m)] in tok.stop_ids


SMALL = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"},
         {"role": "assistant", "content": "4"}]
EXPECTED_OWNERS = {  # written out by hand from each template
    "gemma3": [(-1, "<bos><start_of_turn>user\n"), (0, "Be brief."), (-1, "\n\n"), (1, "What is 2+2?<end_of_turn>"),
               (-1, "\n<start_of_turn>model\n"), (2, "4<end_of_turn>"), (-1, "\n")],
    "qwen2": [(-1, "<|im_start|>system\n"), (0, "Be brief.<|im_end|>"), (-1, "\n<|im_start|>user\n"),
              (1, "What is 2+2?<|im_end|>"), (-1, "\n<|im_start|>assistant\n"), (2, "4<|im_end|>"), (-1, "\n")],
    "qwen3": [(-1, "<|im_start|>system\n"), (0, "Be brief.<|im_end|>"), (-1, "\n<|im_start|>user\n"),
              (1, "What is 2+2?<|im_end|>"), (-1, "\n<|im_start|>assistant\n"),
              (2, "<think>\n\n</think>\n\n4<|im_end|>"), (-1, "\n")],
    "llama": [(-1, "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: "
                   "December 2023\nToday Date: 26 Jul 2024\n\n"), (0, "Be brief.<|eot_id|>"),
              (-1, "<|start_header_id|>user<|end_header_id|>\n\n"), (1, "What is 2+2?<|eot_id|>"),
              (-1, "<|start_header_id|>assistant<|end_header_id|>\n\n"), (2, "4<|eot_id|>")],
    "smollm2": [(-1, "<|im_start|>system\n"), (0, "Be brief.<|im_end|>"), (-1, "\n<|im_start|>user\n"),
                (1, "What is 2+2?<|im_end|>"), (-1, "\n<|im_start|>assistant\n"), (2, "4<|im_end|>"), (-1, "\n")],
}


def _groups(tok, ids, owner):
    """Consecutive tokens of one owner, decoded with special tokens kept."""
    return [(o, tok.decode([i for i, _ in g], skip_special_tokens=False))
            for o, g in itertools.groupby(zip(ids, owner), key=lambda x: x[1])]


@pytest.mark.parametrize("name", [c[0] for c in CHECKPOINTS])
def test_render_owner_segments(name, checkpoint):
    """Each message owns its content and its closing end-of-turn token, headers are -1 (hand-written
    expectation on one small dialogue per template); the end-of-turn token is the template's."""
    tok = load_tokenizer(checkpoint(name))
    ids, owner = tok.render(SMALL)
    assert ids == tok.apply_chat(SMALL, add_generation_prompt=False)
    assert _groups(tok, ids, owner) == EXPECTED_OWNERS[name]
    last = max(i for i, o in enumerate(owner) if o == 2)
    assert ids[last] == tok.eot_id == tok.stop_ids[0]


@pytest.mark.parametrize("name", [c[0] for c in CHECKPOINTS])
def test_generation_prompt_is_a_prefix_of_the_rendered_dialogue(name, checkpoint):
    """The prompt a model answers (history + generation prompt) is a token prefix of the dialogue rendered
    with that answer, and the tokens after it are exactly the answer's (owner = its index): the
    property that lets training score the tokens the model emitted."""
    tok = load_tokenizer(checkpoint(name))
    for messages in ([SYSTEM] + TURNS[:4], TURNS[:2]):
        prompt = tok.apply_chat(messages[:-1], add_generation_prompt=True)
        ids, owner = tok.render(messages)
        assert ids[:len(prompt)] == prompt
        tail = [o for o in owner[len(prompt):] if o != -1]
        assert tail and set(tail) == {len(messages) - 1}


def test_chatml_on_a_llama_checkpoint(checkpoint):
    """A Llama-architecture checkpoint with a ChatML template (SmolLM2) is the llama family for the
    model and ChatML for the chat: the end-of-turn token is <|im_end|>, read off the template, and
    SFT marks the assistant's tokens as the student's."""
    tok = load_tokenizer(checkpoint("smollm2"))
    assert tok.family == "llama" and tok.eot_id == tok.token_to_id("<|im_end|>") == tok.stop_ids[0]
    seq = chat_sequence(TURNS[:2], tok)
    student = [i for i, r in zip(seq.token_ids, seq.roles) if r == Role.STUDENT]
    assert tok.decode(student, skip_special_tokens=False) == TURNS[1]["content"] + "<|im_end|>"


def test_checkpoint_without_a_template_uses_the_builtin(checkpoint, tmp_path):
    """A checkpoint that ships no chat template (Gemma 3 270M base) is formatted with the family's
    built-in template, as transformers formats it when handed that template."""
    d = tmp_path / "base"
    save_tokenizer_files(build_tiny_tokenizer("gemma3"), "gemma3", d, with_template=False)
    assert "chat_template" not in json.loads((d / "tokenizer_config.json").read_text())
    builtin = (TEMPLATE_DIR / "gemma3.jinja").read_text(encoding="utf-8")
    ref = list(_hf(d).apply_chat_template([SYSTEM] + TURNS[:3], chat_template=builtin, tokenize=True,
                                          add_generation_prompt=True)["input_ids"])
    (d / "config.json").write_text(json.dumps({"model_type": "gemma3_text"}))
    tok = load_tokenizer(d)
    assert tok.apply_chat([SYSTEM] + TURNS[:3]) == ref
    assert "built in" in tok.chat_template.origin and str(d) in tok.chat_template.origin


def test_qwen3_thinking(checkpoint):
    """Qwen 3: reasoning in an answer after the last query is kept in a think block, dropped from earlier
    answers; enable_thinking=False closes the prompt with an empty think block; all as the template does."""
    d = checkpoint("qwen3")
    tok = load_tokenizer(d)
    thought = [
        {"role": "user", "content": "What is 6 * 7?"},
        {"role": "assistant", "content": "<think>\n6 * 7 = 42\n</think>\n\nThe answer is 42."},
        {"role": "user", "content": "And 6 * 8?"},
        {"role": "assistant", "content": "<think>6 * 8 = 48</think>The answer is 48."},
    ]
    for messages in (thought, thought[:3]):
        for gen in (True, False):
            assert tok.apply_chat(messages, gen) == _hf_ids(d, messages, gen)
            assert tok.render(messages, gen)[0] == _hf_ids(d, messages, gen)
    assert tok.apply_chat(thought[:3], enable_thinking=False) == _hf_ids(d, thought[:3], True, enable_thinking=False)
    text = tok.chat_template.text(thought, add_generation_prompt=False)
    assert "6 * 7 = 42" not in text and "<think>\n6 * 8 = 48\n</think>\n\nThe answer is 48." in text
    ids, owner = tok.render(thought)
    assert _groups(tok, ids, owner)[-2] == (3, "<think>\n6 * 8 = 48\n</think>\n\nThe answer is 48.<|im_end|>")


def test_template_variables(checkpoint):
    """Template variables pass through: Llama 3.1's date_string (default 26 Jul 2024)."""
    d = checkpoint("llama")
    tok = load_tokenizer(d)
    assert tok.apply_chat(TURNS[:1], date_string="01 Jan 2025") == _hf_ids(d, TURNS[:1], True, date_string="01 Jan 2025")
    assert tok.apply_chat(TURNS[:1]) != tok.apply_chat(TURNS[:1], date_string="01 Jan 2025")


@pytest.mark.parametrize("family,variant", [("qwen2", "qwen2_0"), ("llama", "llama3_0")])
def test_older_release_templates(family, variant, checkpoint, tmp_path):
    """A checkpoint of an older release (Qwen2-Instruct's default system prompt, Llama 3.0 without the
    date block) is formatted as its own template says."""
    d = tmp_path / variant
    d.mkdir()
    for name in ("tokenizer.json", "special_tokens_map.json", "tokenizer_config.json"):
        (d / name).write_bytes((checkpoint(family) / name).read_bytes())
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg["chat_template"] = (FIXTURES / "variants" / f"{variant}.jinja").read_text(encoding="utf-8")
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    _hf(d)
    (d / "config.json").write_text(json.dumps({"model_type": family}))
    tok = load_tokenizer(d)
    for messages in (TURNS[:4], [SYSTEM] + TURNS[:3]):
        for gen in (True, False):
            assert tok.apply_chat(messages, gen) == _hf_ids(d, messages, gen), (variant, messages, gen)


# --------------------------------------------------------------------------------------
# Templates that cannot be rendered


@pytest.mark.parametrize("where,template,match", [
    ("tokenizer_config.json", "{% for m in messages %}{{ m['content'] }}", r"not valid Jinja \(line 1: .*endfor"),
    ("chat_template.jinja", "{{ messages[0]['content'] }\n", r"not valid Jinja \(line 1"),
    ("tokenizer_config.json", "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not\\n"
     "supported') }}{% endif %}{{ messages[0]['content'] }}", r"cannot render.*System role not supported"),
])
def test_unrenderable_template_is_one_user_error_naming_the_file(where, template, match, checkpoint, tmp_path):
    """A template with a syntax error, or one that raises, gives one UserError (one line) naming the
    file it came from; the tokenizer still encodes."""
    d = tmp_path / "ckpt"
    d.mkdir()
    for name in ("tokenizer.json", "special_tokens_map.json", "tokenizer_config.json", "config.json"):
        (d / name).write_bytes((checkpoint("qwen2") / name).read_bytes())
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    if where == "chat_template.jinja":
        (d / where).write_text(template)
    else:
        cfg["chat_template"] = template
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = load_tokenizer(d)
    assert tok.decode(tok.encode("12 + 3")) == "12 + 3"
    with pytest.raises(UserError, match=rf"{re.escape(str(d / where))}: .*{match}") as e:
        tok.apply_chat([SYSTEM, TURNS[0]])
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("messages,match", [
    ([], "non-empty"),
    ([{"role": "user"}], "'role' and 'content'"),
    ([{"role": "tool", "content": "x"}], "role 'tool'"),
    ([{"role": "user", "content": 3}], "content must be a string"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "system message may only come first"),
    ([{"role": "assistant", "content": "a"}], "expected role 'user'"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "expected role 'assistant'"),
    ([{"role": "system", "content": "a"}], "at least one user message"),
])
def test_bad_messages_raise_user_error(messages, match, checkpoint):
    """Bad roles, non-string content and broken alternation raise UserError saying which message."""
    tok = load_tokenizer(checkpoint("gemma3"))
    with pytest.raises(UserError, match=match):
        tok.apply_chat(messages)


def test_sandbox_and_helpers():
    """As in transformers: tojson does not escape HTML, namespaces refuse underscore attributes,
    `{% generation %}` renders its body, loop controls work."""
    t = ChatTemplate("{{ messages[0] | tojson }}|{% generation %}{{ messages[0]['content'] }}{% endgeneration %}|"
                     "{% for i in [1, 2, 3] %}{% if i == 2 %}{% break %}{% endif %}{{ i }}{% endfor %}", "t.jinja")
    assert t.text([{"role": "user", "content": "<a & b>"}]) == '{"role": "user", "content": "<a & b>"}|<a & b>|1'
    with pytest.raises(UserError, match="t.jinja: .*underscore"):
        ChatTemplate("{% set ns = namespace(_x=1) %}", "t.jinja").text([{"role": "user", "content": "x"}])


def test_a_template_that_loops_for_ever_is_stopped(monkeypatch):
    """A template with 10^10 loop iterations is one UserError after chat.RENDER_SECONDS
    (before: it rendered for hours); the limit is gone afterwards (no alarm left behind)."""
    import signal
    import time

    from rl2f.model import chat

    monkeypatch.setattr(chat, "RENDER_SECONDS", 1.0)
    t = ChatTemplate("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x", "t.jinja")
    start = time.monotonic()
    with pytest.raises(UserError, match=r"t.jinja: the chat template did not finish rendering in 1 s"):
        t.text([{"role": "user", "content": "x"}])
    assert time.monotonic() - start < 10
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0) and signal.getsignal(signal.SIGALRM) == signal.SIG_DFL
    assert ChatTemplate("{{ messages[0]['content'] }}", "t.jinja").text([{"role": "user", "content": "ok"}]) == "ok"


def test_block_whitespace_as_transformers(checkpoint):
    """A template written without `-` whitespace control (indented blocks, a newline after each tag)
    renders as transformers renders it: trim_blocks and lstrip_blocks on."""
    template = ("{% for message in messages %}\n    {% if message['role'] == 'user' %}\n<|user|>\n"
                "    {{ message['content'] }}\n    {% else %}\n<|assistant|>\n{{ message['content'] }}\n"
                "    {% endif %}\n{% endfor %}\n{% if add_generation_prompt %}\n<|assistant|>\n{% endif %}\n")
    hf = _hf(checkpoint("qwen2"))
    for messages in (TURNS[:2], TURNS[:3]):
        assert ChatTemplate(template, "t.jinja").text(messages) == hf.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=True)


# --------------------------------------------------------------------------------------
# Episodes: sampled ids are what is trained; drift is counted


class SampledIdsEngine:
    """Answers every prompt with `text`, sampled as the ids `encode(text)` gives, then the stop id."""

    def __init__(self, tok, text, encode):
        self.tok, self.text, self.encode = tok, text, encode
        self.sampled: list[list[int]] = []

    def generate(self, prompts, params, use_adapter=True):
        params = params if isinstance(params, list) else [params] * len(prompts)
        outs = []
        for ids, p in zip(prompts, params):
            completions = []
            for i in range(p.n):
                tokens = self.encode(self.text) + [self.tok.eot_id]
                self.sampled.append(tokens)
                completions.append(CompletionOutput(i, self.text, tokens, [-0.25] * len(tokens), "stop"))
            outs.append(RequestOutput(str(len(outs)), list(ids), completions))
        return outs


@pytest.mark.parametrize("name", ["gemma3", "llama", "smollm2"])
def test_episode_trains_the_sampled_ids_and_counts_drift(name, checkpoint):
    """Through EpisodeRunner: the student ids an episode trains on (loss mask of its training sequence)
    are the sampled ids, turn after turn, also when they are not how the tokenizer would encode
    their text (here one token per character); the template's tokens around them are the whole
    rendering's, so an episode sampled canonically has no retokenization drift and the
    character-by-character one drifts, as the summary counts."""
    tok = load_tokenizer(checkpoint(name))
    task = get_task("secret")
    problems = task.problems(2, split="train")
    wrong = "The answer: 00"
    char_by_char = lambda text: [i for c in text for i in tok.encode(c)]
    assert char_by_char(wrong) != tok.encode(wrong)  # the case is built to drift
    for encode, drift in ((tok.encode, 0.0), (char_by_char, 1.0)):
        engine = SampledIdsEngine(tok, wrong, encode)
        runner = EpisodeRunner(task, engine, tok, make_teacher("programmatic", task), SamplingParams(), max_turns=3)
        eps = runner.run(problems, group_size=2)
        for k, ep in enumerate(eps):
            seq = episode_sequence(ep)
            trained = [i for i, m in zip(seq.token_ids, seq.loss_mask) if m]
            turns = [engine.sampled[k]] + [engine.sampled[len(eps) * t + k] for t in (1, 2)]
            assert trained == [i for t in turns for i in t]
            if drift == 0.0:  # canonical samples: the episode is the template's rendering of its dialogue
                ids = tok.apply_chat(ep.messages, add_generation_prompt=False)
                assert ids[:len(ep.token_ids)] == ep.token_ids
        assert summarize(eps, 3, tokenizer=tok)["retokenization_drift"] == drift
        assert "retokenization_drift" not in summarize(eps, 3)


def test_drift_from_the_template_itself(checkpoint):
    """Qwen 3's template drops the reasoning of answers before the last query, so a multi-turn episode
    whose attempts think is not what the template renders for its dialogue afterwards: drift 1.0,
    from sampled ids that are canonical."""
    tok = load_tokenizer(checkpoint("qwen3"))
    task = get_task("secret")
    engine = SampledIdsEngine(tok, "<think>\nguess\n</think>\n\nAnswer: 00", tok.encode)
    runner = EpisodeRunner(task, engine, tok, make_teacher("retry", task), SamplingParams(), max_turns=2)
    eps = runner.run(task.problems(1, split="train"))
    assert summarize(eps, 2, tokenizer=tok)["retokenization_drift"] == 1.0
    single = EpisodeRunner(task, SampledIdsEngine(tok, engine.text, tok.encode), tok, make_teacher("retry", task),
                           SamplingParams(), max_turns=1).run(task.problems(1, split="train"))
    assert summarize(single, 1, tokenizer=tok)["retokenization_drift"] == 0.0


def test_drift_from_a_merge_across_the_generation_prompt(checkpoint):
    """With the dialogue-trained BPE, Llama 3.1's generation prompt ends in "\n\n" and the whole
    rendering merges it with the answer's first word ("\n\nThe"), a token the student, sampling
    after the prompt's own "\n\n", never produces: every episode drifts, sampled canonically or not."""
    tok = load_tokenizer(checkpoint("llama", "bpe"))
    task = get_task("secret")
    text = "The answer: 00"
    prompt = tok.apply_chat(TURNS[:1])
    whole = tok.apply_chat(TURNS[:1] + [{"role": "assistant", "content": text}], add_generation_prompt=False)
    assert whole[:len(prompt)] != prompt and tok.token_to_id("\u010a\u010aThe") in whole
    runner = EpisodeRunner(task, SampledIdsEngine(tok, text, tok.encode), tok, make_teacher("retry", task),
                           SamplingParams(), max_turns=2)
    assert summarize(runner.run(task.problems(2, split="train")), 2, tokenizer=tok)["retokenization_drift"] == 1.0


def test_jinja2_is_imported_only_to_render():
    """`rl2f --help` stays fast: the CLI, the tokenizer and the chat module import jinja2 only when a
    template is first rendered."""
    code = ("import sys, rl2f.cli.main, rl2f.model.tokenizer, rl2f.model.chat; assert 'jinja2' not in sys.modules; "
            "from rl2f.model.chat import builtin_template; builtin_template('qwen2').text([{'role': 'user', "
            "'content': 'x'}]); assert 'jinja2' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_llama_model_with_chatml_plays_an_episode(checkpoint, tmp_path):
    """The real path for a SmolLM2-shaped checkpoint: a Llama-architecture model whose tokenizer and
    template are ChatML loads, generates with the built-in engine, and its episode's trained
    student ids are the engine's sampled ids, each attempt closed by <|im_end|>."""
    from rl2f.engine import BuiltinEngine
    from rl2f.model import load_model
    from rl2f.model.tiny import build_tiny_model, write_checkpoint
    from rl2f.model.tokenizer import tiny_special_ids

    d = tmp_path / "smol"
    d.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (d / name).write_bytes((checkpoint("smollm2") / name).read_bytes())
    tok = load_tokenizer(checkpoint("smollm2"))
    hf, model = build_tiny_model("llama", tok.vocab_size, **tiny_special_ids(tok.backend, "qwen2"))
    write_checkpoint(d, hf, model)
    model, tok = load_model(d), load_tokenizer(d)
    assert tok.family == "llama" and tok.stop_ids[0] == tok.token_to_id("<|im_end|>")
    task = get_task("secret")
    sampled = []

    class Recording(BuiltinEngine):
        def generate(self, prompts, params, use_adapter=True):
            outs = super().generate(prompts, params, use_adapter)
            sampled.extend(list(c.token_ids) for o in outs for c in o.outputs)
            return outs

    runner = EpisodeRunner(task, Recording(model, tok), tok, make_teacher("programmatic", task),
                           SamplingParams(max_tokens=6, seed=0), max_turns=2)
    (ep,) = runner.run(task.problems(1, split="train"))
    seq = episode_sequence(ep)
    assert [i for i, m in zip(seq.token_ids, seq.loss_mask) if m] == [i for ids in sampled for i in ids]
    im_end = tok.token_to_id("<|im_end|>")
    for t in range(len(ep.turns)):  # sampled <|im_end|>, or the one appended to an attempt cut at max_tokens
        last = max(k for k, (r, u) in enumerate(zip(ep.token_roles, ep.token_turns)) if r == Role.STUDENT and u == t)
        assert im_end in ep.token_ids[last:last + 2]
