"""An OpenAI-compatible chat endpoint (`vllm serve`, SGLang, llama.cpp's server, OpenAI's API)
as the LLM teacher and its leak judge (`teacher.endpoint`).

`ChatEndpoint.chat(conversations, params)` POSTs each conversation to
`{base_url}/chat/completions` and returns the replies' text. It takes chat messages, not token
ids: the server applies its own model's chat template. Standard library only (urllib): no client
package to install. The requests of one call go out together, as a batch of feedback is dozens
of conversations. Any failure (unreachable, an HTTP error, a timeout, a reply without
`choices[0].message.content`) is one `UserError` line naming the endpoint: a teacher that
cannot speak must stop the run, not turn into empty feedback.
"""
from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from rl2f.engine.types import SamplingParams
from rl2f.errors import UserError


class ChatEndpoint:
    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout_s: float = 60.0,
                 max_concurrent: int = 16):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.timeout_s = timeout_s
        self.max_concurrent = max_concurrent

    def chat(self, conversations: list[list[dict]], params: SamplingParams) -> list[str]:
        """One reply per conversation (a list of {"role", "content"} messages), in order."""
        if not conversations:
            return []
        with ThreadPoolExecutor(min(len(conversations), self.max_concurrent)) as pool:
            return list(pool.map(lambda messages: self._reply(messages, params), conversations))

    def _body(self, messages: list[dict], params: SamplingParams) -> dict:
        """The request: OpenAI's fields, and only those set (OpenAI refuses unknown ones)."""
        body = {"model": self.model, "messages": messages, "max_tokens": params.max_tokens,
                "temperature": params.temperature}
        if params.top_p < 1:
            body["top_p"] = params.top_p
        if params.top_k is not None:
            body["top_k"] = params.top_k  # vLLM's and SGLang's extension
        if params.seed is not None:
            body["seed"] = params.seed  # a redraw's fresh seed (rl2f.teacher._seeded) reaches the server
        if params.stop:
            body["stop"] = params.stop
        return body

    def _reply(self, messages: list[dict], params: SamplingParams) -> str:
        data = json.dumps(self._body(messages, params)).encode()
        request = urllib.request.Request(self.url, data=data, headers=self.headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as e:
            raise self._error(f"HTTP {e.code} {e.reason}: {_excerpt(e.read())}") from None
        except (OSError, http.client.HTTPException) as e:  # refused, unknown host, timed out, cut off
            raise self._error(f"no reply ({getattr(e, 'reason', None) or e})") from None
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, LookupError, TypeError):
            content = None
        if not isinstance(content, str):
            raise self._error(f"malformed reply (no choices[0].message.content): {_excerpt(raw)}")
        return content

    def _error(self, what: str) -> UserError:
        return UserError(f"teacher.endpoint {self.url}: {what}")


def _excerpt(raw: bytes, limit: int = 200) -> str:
    """The start of a reply body on one line (the error stays one line)."""
    text = " ".join(raw.decode("utf-8", errors="replace").split())
    return text if len(text) <= limit else text[:limit] + "..."
