"""Chat formatting: a checkpoint's own Jinja chat template, rendered as transformers and vLLM render it.

A Hugging Face checkpoint carries its chat format as a Jinja template (`chat_template` in
tokenizer_config.json, or chat_template.jinja), and architecture and chat format are
independent (SmolLM2 is Llama-shaped and speaks ChatML). `ChatTemplate` renders one the
way transformers' `apply_chat_template` does (vLLM calls the same code): a sandboxed
environment with trim_blocks and lstrip_blocks, the loop-controls extension, a `tojson` that
does not escape HTML, `raise_exception`, `strftime_now`, a no-op `{% generation %}` block, and
the tokenizer's special tokens (`bos_token`, `eos_token`, ...) as variables. Only where a
checkpoint has no template (Gemma 3 270M base ships none) does the family's official one,
shipped in `rl2f/model/templates/`, stand in (`builtin_template`).

`spans` also says which characters of the rendered text are each message's: the dialogue is
rendered again with that message's content swapped for a character the text does not hold,
and what changes is the message's. The tokenizer encodes the text once and hands each token
to the message its characters overlap (`rl2f.model.tokenizer`), so the ids are the
template's ids for any tokenizer.json, merges across message boundaries included.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
from datetime import datetime
from pathlib import Path

from rl2f.errors import UserError

FAMILIES = ("gemma3", "qwen2", "qwen3", "llama")
ROLES = ("system", "user", "assistant")
TEMPLATE_DIR = Path(__file__).parent / "templates"  # package data: one official template per family
RENDER_SECONDS = 10.0  # a render takes milliseconds; a checkpoint's template that loops for ever is stopped


def validate_messages(messages) -> list[dict]:
    """Checks roles and alternation: an optional system message first, then user, assistant, user, ..."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise UserError("chat messages: expected a non-empty list of {'role': ..., 'content': ...} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise UserError(f"chat message {i}: expected a dict with 'role' and 'content', got {m!r:.80}")
        if m["role"] not in ROLES:
            raise UserError(f"chat message {i}: role {m['role']!r} is not one of {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise UserError(f"chat message {i} ({m['role']}): content must be a string, "
                            f"got {type(m['content']).__name__}")
        if m["role"] == "system" and i != 0:
            raise UserError(f"chat message {i}: a system message may only come first")
    first = 1 if messages[0]["role"] == "system" else 0
    if first == len(messages):
        raise UserError("chat messages: need at least one user message after the system message")
    for i in range(first, len(messages)):
        want = "user" if (i - first) % 2 == 0 else "assistant"
        if messages[i]["role"] != want:
            raise UserError(f"chat message {i}: expected role {want!r} (roles must alternate user/assistant after "
                            f"an optional system message), got {messages[i]['role']!r}")
    return list(messages)


class ChatTemplate:
    """One Jinja chat template, compiled on first use.

    `origin` names the file the template came from (every error names it); `variables` are
    passed to every render (the special tokens, as transformers passes `special_tokens_map`;
    or a template's own knobs such as Llama 3.1's `date_string`)."""

    def __init__(self, source: str, origin: str, variables: dict | None = None):
        self.source = source
        self.origin = origin
        self.variables = dict(variables or {})
        self._compiled = None

    def __repr__(self):
        return f"ChatTemplate(origin={self.origin!r})"

    def text(self, messages, add_generation_prompt: bool = True, **variables) -> str:
        """The rendered dialogue: what `apply_chat_template(..., tokenize=False)` returns."""
        return self._render(validate_messages(messages), add_generation_prompt, variables)

    def spans(self, messages, add_generation_prompt: bool = False, **variables):
        """(text, regions): the rendered dialogue and, per message, the (start, end) characters that
        depend on its content, or None where the template does not write it.

        An assistant message's region starts where the generation prompt for it ends, so a
        think block the template writes before the content is the answer's: it is text the
        model emits after that prompt."""
        messages = validate_messages(messages)
        text = self._render(messages, add_generation_prompt, variables)
        probe = next(c for c in map(chr, range(0xE000, 0xF900)) if c not in text)  # private use: never trimmed
        regions: list[tuple[int, int] | None] = []
        for i, m in enumerate(messages):
            other = self._render([*messages[:i], {**m, "content": probe}, *messages[i + 1:]],
                                 add_generation_prompt, variables)
            if other == text:
                regions.append(None)
                continue
            start = len(os.path.commonprefix([text, other]))
            room = min(len(text), len(other)) - start
            end = len(text) - min(len(os.path.commonprefix([text[::-1], other[::-1]])), room)
            if m["role"] == "assistant":
                prompt = self._render(messages[:i], True, variables)
                if text.startswith(prompt) and len(prompt) <= start:
                    start = len(prompt)
            regions.append((start, end))
        return text, regions

    # ------------------------------------------------------------------ jinja

    def _render(self, messages, add_generation_prompt, variables) -> str:
        template = self.compile()
        # As transformers: messages are plain dicts; tools and documents are passed, as None.
        context = {**self.variables, **variables, "messages": [dict(m) for m in messages], "tools": None,
                   "documents": None, "add_generation_prompt": add_generation_prompt}
        try:
            with _time_limit(RENDER_SECONDS):
                return template.render(**context)
        except _RenderTimeout:
            raise UserError(f"{self.origin}: the chat template did not finish rendering in {RENDER_SECONDS:g} s "
                            "(a loop that runs for ever, or nearly?)") from None
        except Exception as e:  # the template is the checkpoint's code: any failure is its message
            raise UserError(f"{self.origin}: the chat template cannot render this dialogue "
                            f"({type(e).__name__}: {_one_line(e)})") from None

    def compile(self):
        """The compiled template (compiled once); a syntax error is a UserError naming the file."""
        if self._compiled is None:
            try:
                import jinja2  # lazy: keeps `rl2f --help` fast
            except ImportError:
                raise UserError(f"{self.origin}: rendering a chat template needs jinja2 (pip install 'jinja2>=3.1.6')") \
                    from None
            try:
                self._compiled = _environment().from_string(self.source)
            except jinja2.TemplateSyntaxError as e:
                raise UserError(f"{self.origin}: the chat template is not valid Jinja "
                                f"(line {e.lineno}: {_one_line(e.message)})") from None
        return self._compiled


def builtin_template(family: str, variables: dict | None = None, why: str = "") -> ChatTemplate:
    """The family's official chat template (rl2f/model/templates/FAMILY.jinja), for a checkpoint
    that ships none; `why` is added to the origin errors name (e.g. which checkpoint lacked one)."""
    if family not in FAMILIES:
        raise UserError(f"chat template: no built-in template for family {family!r} (known: {', '.join(FAMILIES)})")
    path = TEMPLATE_DIR / f"{family}.jinja"
    return ChatTemplate(path.read_text(encoding="utf-8"), f"{path}{why}", variables)


def _one_line(message) -> str:
    return " ".join(str(message).split())


_ENV = None


class _RenderTimeout(BaseException):
    """Raised inside a render by `_time_limit` (a BaseException: templates catch no such thing)."""


@contextlib.contextmanager
def _time_limit(seconds: float):
    """Stop the block after `seconds` of wall time with _RenderTimeout, through SIGALRM: Jinja
    renders in Python bytecode, which a signal interrupts. Only in the main thread and only
    when no one else has a SIGALRM handler (else the block runs unbounded)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGALRM) not in (
            signal.SIG_DFL, None):
        yield
        return

    def stop(signum, frame):
        raise _RenderTimeout()

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _environment():
    """The Jinja environment of transformers' `_compile_jinja_template` (transformers 4.4x-5.x)."""
    global _ENV
    if _ENV is not None:
        return _ENV
    import jinja2
    import jinja2.ext
    import jinja2.nodes
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(jinja2.ext.Extension):
        # `{% generation %}...{% endgeneration %}` marks assistant text for transformers' assistant
        # mask; rendering it is rendering its body (owners here come from `spans`).
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    class Namespace(jinja2.utils.Namespace):
        # As transformers: no underscore attributes, the way out of a sandbox through a namespace.
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                Namespace._check(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            Namespace._check(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"chat templates cannot set underscore attribute {name!r}")

    class Dict:
        # `dict(...)` and `dict.fromkeys(...)` without handing the template the type itself.
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # Jinja's own tojson escapes HTML characters (<, >, &, '), which templates must not.
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt),
                       dict=Dict(), namespace=Namespace)
    _ENV = env
    return env
