"""Tokenizer: a Hugging Face tokenizer.json read with `tokenizers`, plus the family's special
tokens and the checkpoint's chat template; and the tiny tokenizer the CPU default and the tests
train at run time.

    tok = load_tokenizer("path/to/checkpoint")     # tokenizer.json + config.json (+ optional configs)
    ids = tok.apply_chat(messages)                  # prompt ids, ending in the generation prompt
    ids, owner = tok.render(dialogue)               # training ids + per-token message index

Special tokens come, first found wins, from tokenizer_config.json, special_tokens_map.json,
generation_config.json, config.json, then the family's defaults. `stop_ids` is every id that
ends an assistant turn: the token the chat template closes an assistant turn with, eos, the
family's end-of-turn tokens, and the eos ids of the configs.

A dialogue is rendered to text by its chat template and encoded once, as transformers'
`apply_chat_template(tokenize=True)` does; which message each token belongs to comes from the
encoding's character offsets (`ChatTemplate.spans`).
"""
from __future__ import annotations

import functools
import json
import random
from pathlib import Path

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors, trainers

from rl2f.errors import UserError
from rl2f.model.chat import ChatTemplate, builtin_template

MODEL_TYPES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3": "gemma3", "gemma3_text": "gemma3"}

# Per family: the default special tokens (as the official instruct checkpoints set them) and the
# tokens that end an assistant turn. Llama 3.1 has no pad token; Meta reserves this one for it.
FAMILY_TOKENS = {
    "gemma3": dict(bos="<bos>", eos="<eos>", pad="<pad>", eot="<end_of_turn>"),
    "qwen2": dict(bos=None, eos="<|im_end|>", pad="<|endoftext|>", eot="<|im_end|>"),
    "qwen3": dict(bos=None, eos="<|im_end|>", pad="<|endoftext|>", eot="<|im_end|>"),
    "llama": dict(bos="<|begin_of_text|>", eos="<|eot_id|>", pad="<|finetune_right_pad_id|>", eot="<|eot_id|>"),
}
STOP_TOKENS = {
    "gemma3": ("<end_of_turn>", "<eos>"),
    "qwen2": ("<|im_end|>", "<|endoftext|>"),
    "qwen3": ("<|im_end|>", "<|endoftext|>"),
    "llama": ("<|eot_id|>", "<|end_of_text|>", "<|eom_id|>"),
}


class Tokenizer:
    """A `tokenizers.Tokenizer` with the family's special tokens and a chat template.

    `tokens` overrides the family defaults by name (bos / eos / pad / eot, a token string or None);
    without an `eot` there, the end-of-turn token is the one the chat template closes an
    assistant turn with. `chat_template` defaults to the family's built-in template. A
    tokenizer whose template cannot be compiled still encodes and decodes; `apply_chat` /
    `render` then raise the UserError naming the template's file."""

    def __init__(self, backend: tokenizers.Tokenizer, family: str, tokens: dict | None = None,
                 extra_stop_ids=(), chat_template: ChatTemplate | None = None, source: str = "tokenizer"):
        if family not in FAMILY_TOKENS:
            raise UserError(f"{source}: unknown family {family!r} (known: {', '.join(FAMILY_TOKENS)})")
        self.backend = backend
        self.family = family
        self.source = source
        names = {**FAMILY_TOKENS[family], **(tokens or {})}
        if chat_template is None:  # the template sees the special tokens as transformers passes them
            chat_template = builtin_template(family, {f"{k}_token": names[k] for k in ("bos", "eos", "pad")
                                                      if names[k] is not None})
        self.chat_template = chat_template
        self.bos_id = self._id(names["bos"])
        self.eos_id = self._id(names["eos"])
        if self.eos_id is None:
            raise UserError(f"{source}: eos token {names['eos']!r} is not in the vocabulary")
        self.pad_id = self._id(names["pad"])
        if self.pad_id is None:
            self.pad_id = self.eos_id  # padding is masked out; any real id serves
        self._chat_error = None
        self.eot_id = self._id(names["eot"])
        try:
            chat_template.compile()
        except UserError as e:
            self._chat_error = str(e)
        if self._chat_error is None and "eot" not in (tokens or {}):
            try:
                self.eot_id = self._template_turn_end() or self.eot_id
            except UserError:  # a template that refuses the probe exchange: the family's end-of-turn token
                pass
        stops = [self.eot_id, self.eos_id, *(self._id(t) for t in STOP_TOKENS[family]), *extra_stop_ids]
        self.stop_ids = list(dict.fromkeys(i for i in stops if i is not None))

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    def _template_turn_end(self) -> int | None:
        """The added token the chat template writes right after an assistant's content, if any."""
        text, regions = self.chat_template.spans([{"role": "user", "content": "x"},
                                                  {"role": "assistant", "content": "y"}])
        if regions[1] is None:
            return None
        tail = self.backend.encode(text[regions[1][1]:], add_special_tokens=False).ids
        added = self.backend.get_added_tokens_decoder()
        return tail[0] if tail and tail[0] in added else None

    @functools.cached_property
    def _untrimmed(self) -> tokenizers.Tokenizer:
        # The same tokenizer without its post-processor, for offsets: a ByteLevel post-processor with
        # trim_offsets (GPT-2 style) leaves a token's edge whitespace out of its span. Encoding
        # without special tokens, a post-processor adds no ids, so the ids are the same.
        backend = tokenizers.Tokenizer.from_str(self.backend.to_str())
        backend.post_processor = None
        return backend

    @property
    def vocab_size(self) -> int:
        """Tokens the tokenizer knows, added ones included (a model's embedding may be larger)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self.backend.id_to_token(i)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; no bos/eos added (special-token strings in the text still map to their ids)."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def render(self, messages, add_generation_prompt: bool = False, enable_thinking: bool | None = None,
               **variables):
        """(ids, owner): the dialogue's ids exactly as `apply_chat` gives them, and per token the index
        of the message it belongs to, -1 for template text (role headers, bos, separators).

        A token belongs to the first message whose characters it overlaps (as transformers'
        assistant mask counts a token that overlaps a span), so a token merged across a
        boundary is the message's. A message also owns the end-of-turn token right after its
        text (what the model must emit to stop); an assistant message owns all it emits after
        its generation prompt (Qwen 3's think block included)."""
        text, regions = self._chat("spans", messages, add_generation_prompt, enable_thinking, variables)
        ids = self.encode(text)
        offsets = self._untrimmed.encode(text, add_special_tokens=False).offsets
        owner = [-1] * len(ids)
        stops = set(self.stop_ids)
        for k, (s, e) in enumerate(offsets):
            for m, region in enumerate(regions):
                if region is None:
                    continue
                a, b = region
                if s < b and e > a or (s == b and ids[k] in stops):
                    owner[k] = m
                    break
        return ids, owner

    def apply_chat(self, messages, add_generation_prompt: bool = True, enable_thinking: bool | None = None,
                   **variables) -> list[int]:
        """Prompt ids for a dialogue: the chat template's text encoded once, as
        `apply_chat_template(tokenize=True)` gives them. enable_thinking is Qwen 3's switch (False:
        an empty think block closes the prompt); None leaves it to the template. Other keyword
        arguments are template variables (e.g. Llama 3.1's date_string)."""
        return self.encode(self._chat("text", messages, add_generation_prompt, enable_thinking, variables))

    def _chat(self, how, messages, add_generation_prompt, enable_thinking, variables):
        if self._chat_error is not None:
            raise UserError(self._chat_error)
        if enable_thinking is not None:
            variables = {**variables, "enable_thinking": enable_thinking}
        return getattr(self.chat_template, how)(messages, add_generation_prompt, **variables)

    def __repr__(self):
        return f"Tokenizer(family={self.family!r}, vocab_size={self.vocab_size}, source={self.source!r})"


# --------------------------------------------------------------------------- loading a checkpoint


def _read_json(path: Path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None


def _token_str(value):
    # tokenizer_config.json stores a token as a string or as an AddedToken dict.
    return value.get("content") if isinstance(value, dict) else value


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, list) else [value])]


def _family(path: Path) -> str:
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise UserError(f"{cfg_path}: not found; it names the model family (or pass family=...)")
    cfg = _read_json(cfg_path)
    model_type = cfg.get("model_type")
    if model_type not in MODEL_TYPES and isinstance(cfg.get("text_config"), dict):
        model_type = cfg["text_config"].get("model_type")
    if model_type not in MODEL_TYPES:
        raise UserError(f"{cfg_path}: model_type {model_type!r} is not supported "
                        f"(supported: {', '.join(sorted(MODEL_TYPES))})")
    return MODEL_TYPES[model_type]


def _chat_template(path: Path, tok_cfg: dict) -> tuple[str | None, str]:
    # Newer checkpoints keep the template beside tokenizer_config.json.
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8"), str(jinja)
    template, source = tok_cfg.get("chat_template"), path / "tokenizer_config.json"
    if template is None and (path / "chat_template.json").is_file():
        source = path / "chat_template.json"
        template = _read_json(source).get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    if template is not None and not isinstance(template, str):
        raise UserError(f"{source}: chat_template must be a string (or a list of named templates)")
    return template, str(source)


# The special-token variables transformers hands a chat template (its `special_tokens_map`).
TEMPLATE_TOKENS = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")


def load_tokenizer(path, family: str | None = None) -> Tokenizer:
    """Reads path/tokenizer.json; the family from path/config.json `model_type` unless given; the chat
    template from the checkpoint, else the family's built-in one."""
    path = Path(path)
    if path.is_file() and path.name == "tokenizer.json":
        path = path.parent
    tok_path = path / "tokenizer.json"
    if not tok_path.is_file():
        raise UserError(f"{tok_path}: not found (a Hugging Face checkpoint directory needs tokenizer.json)")
    try:
        backend = tokenizers.Tokenizer.from_file(str(tok_path))
    except Exception as e:  # tokenizers raises a bare Exception for bad JSON or an unknown model
        raise UserError(f"{tok_path}: not a readable tokenizer.json ({e})") from None
    family = family or _family(path)

    # Later sources fill only what earlier ones leave unsaid; a key present as null (Qwen's bos) counts.
    tok_cfg = _read_json(path / "tokenizer_config.json") if (path / "tokenizer_config.json").is_file() else {}
    stmap = _read_json(path / "special_tokens_map.json") if (path / "special_tokens_map.json").is_file() else {}
    named: dict = {}  # what the tokenizer files themselves say: the template's variables
    for src in (tok_cfg, stmap):
        for name in TEMPLATE_TOKENS:
            if name not in named and f"{name}_token" in src:
                named[name] = _token_str(src[f"{name}_token"])
    tokens = {k: named[k] for k in ("bos", "eos", "pad") if k in named}
    extra_stop: list[int] = []
    for name in ("generation_config.json", "config.json"):
        if not (path / name).is_file():
            continue
        cfg = _read_json(path / name)
        text_cfg = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else {}
        for key in ("bos", "eos", "pad"):
            ids = _ids(cfg.get(f"{key}_token_id", text_cfg.get(f"{key}_token_id")))
            if key == "eos":
                extra_stop += ids
            if key not in tokens and ids:
                tokens[key] = backend.id_to_token(ids[0])

    template, origin = _chat_template(path, tok_cfg)
    variables = {f"{k}_token": v for k, v in named.items() if v is not None}
    if template is None:
        defaults = {**FAMILY_TOKENS[family], **tokens}
        variables = {**{f"{k}_token": defaults[k] for k in ("bos", "eos", "pad") if defaults[k] is not None},
                     **variables}
        chat_template = builtin_template(family, variables, why=f" (built in: {path} has no chat_template)")
    else:
        chat_template = ChatTemplate(template, origin, variables)
    return Tokenizer(backend, family, tokens, extra_stop, chat_template, source=str(path))


# --------------------------------------------------------------------------- the tiny tokenizer

# Qwen 2's split pattern: single digits (\p{N}), letters with one leading non-letter, punctuation
# runs, newline runs; BPE never merges across these pieces, so every digit stays one token.
_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# Special tokens, in the official vocabularies' order: Gemma's open the vocabulary, Qwen's and
# Llama's follow the learned tokens. (name, special); Qwen 3's think tags are added, not special.
TINY_SPECIALS = {
    "gemma3": [(t, True) for t in ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>")],
    "qwen2": [(t, True) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")],
    "qwen3": [(t, True) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>")] + [("<think>", False),
                                                                                      ("</think>", False)],
    "llama": [(t, True) for t in ("<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                                  "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>",
                                  "<|reserved_special_token_2|>", "<|start_header_id|>", "<|end_header_id|>",
                                  "<|eom_id|>", "<|eot_id|>", "<|python_tag|>")],
}
TINY_VOCAB = 1024  # learned vocabulary incl. the 256 byte symbols; specials come on top

_WORDS = """
the a an is are was be of to and or not in on at for with from by as that this it its so if then else
answer question problem solution step steps first second next last final result correct incorrect wrong
right try again hint feedback teacher student check verify compute calculate add subtract multiply divide
sum difference product quotient remainder number numbers digit digits equal equals value total twice half
let find solve show because therefore since each every all none some only must cannot can will should
maze grid path move moves up down left right wall walls open start goal exit row column position reach
blocked cell cells north south east west step puzzle logic clue clues rule rules true false knight knave
liar says who which where what how why many more less than greater smaller largest smallest even odd prime
def return elif while range len print import class self list dict int str float bool None True False assert
lambda yield break continue pass try except raise input output test tests function code program error
x y z n k i j a b c f g s
"""
_SNIPPETS = [
    "Let's think step by step.", "The answer is", "Final answer:", "Your answer is incorrect.",
    "Your answer is correct.", "Hint: check the last step.", "Try again.", "\\boxed{", "```python\n",
    "def solve(n):\n    return n * (n + 1) // 2\n", "for i in range(n):\n    total += i\n",
    "assert solve(3) == 6\n", "S . . #\n# . # .\n. . . G\n", "Move: up, up, left, down.",
    "Knights always tell the truth and knaves always lie.",
]


def _tiny_corpus(seed: int) -> list[str]:
    rng = random.Random(seed)
    words = _WORDS.split()
    lines = list(_SNIPPETS) * 8 + [" ".join(words)] * 4
    for _ in range(1500):
        a, b = rng.randint(0, 999), rng.randint(1, 99)
        op, val = rng.choice([("+", a + b), ("-", a - b), ("*", a * b), ("/", a // b)])
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(3, 10)))
        lines.append(rng.choice([f"What is {a} {op} {b}?", f"{a} {op} {b} = {val}", f"The answer is {val}.",
                                 f"x = {a}, y = {b}", f"    return {a} {op} {b}\n"]))
        lines.append(sentence.capitalize() + rng.choice([".", "?", "!", ":", ",", "\n", "\n\n"]))
    rng.shuffle(lines)
    return lines


def build_tiny_tokenizer(family: str = "gemma3", seed: int = 0) -> tokenizers.Tokenizer:
    """A byte-level BPE tokenizer (about 1k tokens) trained on a built-in math / maze / puzzle /
    code corpus, with the family's special tokens. Same (family, seed): identical tokenizer.json."""
    if family not in TINY_SPECIALS:
        raise UserError(f"tiny tokenizer: unknown family {family!r} (known: {', '.join(TINY_SPECIALS)})")
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    specials = [AddedToken(t, special=s, normalized=False) for t, s in TINY_SPECIALS[family]]
    leading = specials if family == "gemma3" else []
    trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB + len(leading), min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=leading)
    tok.train_from_iterator(_tiny_corpus(seed), trainer=trainer)
    if not leading:
        tok.add_special_tokens([t for t in specials if t.special])
        tok.add_tokens([t for t in specials if not t.special])
    bos = FAMILY_TOKENS[family]["bos"]
    if bos is not None:  # like the official tokenizers: encode(..., add_special_tokens=True) prepends bos
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    return tok


def save_tokenizer_files(tokenizer: tokenizers.Tokenizer, family: str, out_dir, with_template: bool = True) -> Path:
    """Writes tokenizer.json, tokenizer_config.json (special tokens and, unless with_template=False as
    for a base checkpoint, the family's official chat_template, so transformers' AutoTokenizer
    loads it and applies the template) and special_tokens_map.json into out_dir."""
    if family not in FAMILY_TOKENS:
        raise UserError(f"save_tokenizer_files: unknown family {family!r} (known: {', '.join(FAMILY_TOKENS)})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    names = dict(FAMILY_TOKENS[family])
    if family == "llama":
        names["pad"] = None  # as in Llama 3.1's own files: no pad token
    special = {f"{k}_token": v for k, v in names.items() if k in ("bos", "eos", "pad") and v is not None}
    if family == "gemma3":
        special["unk_token"] = "<unk>"
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **special,
              "clean_up_tokenization_spaces": False, "model_max_length": 131072}
    if with_template:
        config["chat_template"] = builtin_template(family).source
    if family in ("qwen2", "qwen3"):
        config["bos_token"] = None
    for name, obj in (("tokenizer_config.json", config), ("special_tokens_map.json", special)):
        with open(out / name, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False)
            f.write("\n")
    return out


def write_tokenizer(tokenizer: tokenizers.Tokenizer, out_dir, family: str) -> Path:
    """`save_tokenizer_files` with the argument order `rl2f.model.tiny` calls it with."""
    return save_tokenizer_files(tokenizer, family, out_dir)


def tiny_special_ids(tokenizer: tokenizers.Tokenizer, family: str) -> dict:
    """config.json's bos/eos/pad ids for a tiny tokenizer, shaped as in the official checkpoints
    (Gemma 3 and Llama 3.1 list every turn-ending id as eos; Llama 3.1 has no pad id)."""
    ids = {t: tokenizer.token_to_id(t) for t, _ in TINY_SPECIALS[family]}
    if family == "gemma3":
        return dict(bos_token_id=ids["<bos>"], eos_token_id=[ids["<eos>"], ids["<end_of_turn>"]],
                    pad_token_id=ids["<pad>"])
    if family == "llama":
        return dict(bos_token_id=ids["<|begin_of_text|>"], pad_token_id=None,
                    eos_token_id=[ids["<|end_of_text|>"], ids["<|eom_id|>"], ids["<|eot_id|>"]])
    return dict(bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
