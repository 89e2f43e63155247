"""A teacher of its own (`[teacher]`): a separate checkpoint on its own engine is the model that
speaks, an OpenAI-compatible endpoint (a stub server on 127.0.0.1) speaks for the LLM teacher
and its judge under the same leak guard, a failing endpoint is one line, and a prompt file
must hold the {privileged} placeholder. Tiny models, no downloads."""
import dataclasses
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from rl2f.config import RunConfig, load_config
from rl2f.distributed import Dist
from rl2f.engine import make_engine
from rl2f.engine.openai_endpoint import ChatEndpoint
from rl2f.engine.types import SamplingParams
from rl2f.errors import UserError
from rl2f.leak_guard import GENERIC_HINT
from rl2f.model import build_tiny_checkpoint, load_model
from rl2f.run import build_run, episode_runner, student_sampling, teacher_engine, teacher_sampling
from rl2f.tasks import get_task
from rl2f.teacher import JUDGE_SYSTEM, FeedbackRequest, make_teacher

KEY_ENV = "RL2F_TEST_TEACHER_KEY"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """(student, teacher): two tiny checkpoints with different weights (init seeds 0 and 1)."""
    root = tmp_path_factory.mktemp("checkpoints")
    return build_tiny_checkpoint(root / "student", seed=0), build_tiny_checkpoint(root / "teacher", seed=1)


def config(student, rollout=(), **teacher) -> RunConfig:
    sets = [f"model.path={json.dumps(str(student))}", 'model.device="cpu"', 'task.name="secret"', "lora.rank=4",
            "rollout.max_new_tokens=4", *rollout] + [f"teacher.{k}={json.dumps(v)}" for k, v in teacher.items()]
    return load_config(RunConfig, overrides=sets)


def wrong_attempt(task, problem) -> FeedbackRequest:
    attempt = "Answer: 1"
    return FeedbackRequest(problem, attempt, task.verify(attempt, problem),
                           [{"role": "user", "content": problem.prompt}, {"role": "assistant", "content": attempt}])


def logprobs_under(path, ids: list[int], generated: list[int]) -> torch.Tensor:
    """log p(generated | ids) under the checkpoint at `path`, by one plain forward (no engine)."""
    seq = torch.tensor([ids + generated])  # (1, T)
    with torch.no_grad():
        logp = torch.log_softmax(load_model(path)(seq)[0, len(ids) - 1 : -1].float(), dim=-1)  # (G, V)
    return logp.gather(-1, torch.tensor(generated)[:, None])[:, 0]  # (G,)


# ----------------------------------------------------------------------------------------
# A checkpoint of its own


def test_a_teacher_checkpoint_of_its_own_is_the_one_that_speaks(checkpoints):
    """teacher.model_path: the LLM teacher's message is what that checkpoint alone generates
    for the same conversation and sampling (same tokens, same log-probs), not what the
    student's base says; it runs on an engine of its own, loaded once per run."""
    student_path, teacher_path = checkpoints
    greedy = dict(temperature=0.0, max_new_tokens=4)
    run = build_run(config(student_path, model_path=str(teacher_path), **greedy), Dist())
    teacher = episode_runner(run, "llm", max_turns=2).teacher
    engine, tok = run.teacher
    assert engine is not run.engine and episode_runner(run, "llm", max_turns=2).teacher.engine is engine
    request = wrong_attempt(run.task, run.task.problems(1, split="test")[0])
    (fb,) = teacher.feedback([request])
    assert not fb.leak_flagged and fb.text

    alone = make_engine("builtin", model_path=str(teacher_path))
    params = SamplingParams(temperature=0.0, max_tokens=4)
    ids = alone.tokenizer.apply_chat(teacher.messages(request), add_generation_prompt=True)
    (expected,) = alone.generate([ids], params)
    assert fb.text == expected.outputs[0].text.strip()
    (spoken,) = engine.generate([ids], params, use_adapter=False)
    generated = spoken.outputs[0].token_ids
    logprobs = torch.tensor(spoken.outputs[0].logprobs)  # (G,)
    # greedy log-probs are log_softmax(logits): the teacher checkpoint's, not the student base's
    torch.testing.assert_close(logprobs, logprobs_under(teacher_path, ids, generated), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logprobs, logprobs_under(student_path, ids, generated), atol=1e-2)

    base_run = build_run(config(student_path, **greedy), Dist())
    assert teacher_engine(base_run) == (base_run.engine, base_run.tokenizer)  # the default: today's teacher
    (base_fb,) = episode_runner(base_run, "llm", max_turns=2).teacher.feedback([request])
    assert base_fb.text != fb.text


def test_teacher_sampling_defaults_to_the_rollout_table(checkpoints):
    """Without [teacher] sampling keys the teacher samples as before it existed (the student's
    sampling, rollout.teacher_max_new_tokens long); teacher.temperature / max_new_tokens win."""
    cfg = config(checkpoints[0], rollout=["rollout.teacher_max_new_tokens=7", "rollout.temperature=0.9"])
    student = student_sampling(cfg.rollout)
    assert teacher_sampling(cfg.teacher, cfg.rollout) == dataclasses.replace(student, max_tokens=7)
    cfg = config(checkpoints[0], temperature=0.0, max_new_tokens=5)
    assert teacher_sampling(cfg.teacher, cfg.rollout) == dataclasses.replace(student_sampling(cfg.rollout),
                                                                           temperature=0.0, max_tokens=5)


# ----------------------------------------------------------------------------------------
# An OpenAI-compatible endpoint (a stub on 127.0.0.1)


class Stub:
    """An HTTP server on 127.0.0.1 that records each POST (path, Authorization, JSON body) and
    answers with `respond(body) -> (status, bytes)`."""

    def __init__(self, respond):
        self.requests, stub = [], self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append((self.path, self.headers.get("Authorization"), body))
                status, payload = respond(body)
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):  # 127.0.0.1 is reached directly
        monkeypatch.delenv(name, raising=False)
    servers = []
    yield lambda respond: servers.append(Stub(respond)) or servers[-1]
    for s in servers:
        s.close()


def reply(text: str) -> tuple[int, bytes]:
    return 200, json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}).encode()


def is_judge(body) -> bool:
    return body["messages"][0]["content"].startswith(JUDGE_SYSTEM.split("{")[0])


def test_endpoint_teacher_speaks_under_the_leak_guard_and_judge(checkpoints, stub, monkeypatch):
    """teacher.endpoint: the episode's feedback is the endpoint's reply. The request names the
    configured model, carries the API key from teacher.api_key_env and the privileged answer in
    the system prompt; a first reply that states the answer is caught by the leak guard and
    redrawn with a fresh seed; the judge (rollout.leak_judge) asks the same endpoint, greedy."""
    monkeypatch.setenv(KEY_ENV, "sekrit")
    problem = get_task("secret").problems(1, split="test")[0]
    answer = problem.answer
    teacher_calls = []

    def respond(body):
        if is_judge(body):
            return reply("no")
        teacher_calls.append(body)
        return reply(f"The answer is {answer}." if len(teacher_calls) == 1 else "Look at the tens digit.")

    server = stub(respond)
    cfg = config(checkpoints[0], rollout=["rollout.leak_guard_tries=2", "rollout.leak_judge=true"],
                 endpoint=server.url, endpoint_model="stub-teacher", api_key_env=KEY_ENV)
    run = build_run(cfg, Dist())
    (ep,) = episode_runner(run, "llm", max_turns=2).run([problem], group_size=1)
    turn = ep.turns[0]
    assert not turn.correct
    assert turn.feedback == "Look at the tens digit." and turn.leak_flagged and turn.string_flags == 1
    assert all(path == "/v1/chat/completions" and auth == "Bearer sekrit" for path, auth, _ in server.requests)
    first, second = teacher_calls
    assert first["model"] == "stub-teacher" and first["max_tokens"] == cfg.rollout.teacher_max_new_tokens
    system = first["messages"][0]
    assert system["role"] == "system" and f"the reference answer is {answer!r}" in system["content"]
    assert turn.attempt in first["messages"][1]["content"]
    assert first["seed"] != second["seed"]
    judged = [body for _, _, body in server.requests if is_judge(body)]
    assert len(judged) == 1 and judged[0]["temperature"] == 0.0  # only the draft the strings passed
    assert "Look at the tens digit." in judged[0]["messages"][1]["content"]


def test_endpoint_reply_that_leaks_every_time_becomes_the_generic_hint(checkpoints, stub):
    """With one try, a reply stating the answer is replaced by the generic hint and counted."""
    problem = get_task("secret").problems(1, split="test")[0]
    server = stub(lambda body: reply(f"It is {problem.answer}."))
    run = build_run(config(checkpoints[0], rollout=["rollout.leak_guard_tries=1"], endpoint=server.url,
                           endpoint_model="m"), Dist())
    (fb,) = episode_runner(run, "llm", max_turns=2).teacher.feedback([wrong_attempt(run.task, problem)])
    assert fb.text == GENERIC_HINT and fb.leak_flagged and len(server.requests) == 1


@pytest.mark.parametrize("status,payload,says", [
    (500, b"Internal error\nTraceback (most recent call last): ...", "HTTP 500"),
    (200, b"<html>not json</html>", "malformed reply"),
    (200, json.dumps({"choices": []}).encode(), "malformed reply"),
])
def test_a_failing_endpoint_is_one_line_naming_it(checkpoints, stub, status, payload, says):
    """An HTTP error or a reply without choices[0].message.content stops the teacher with one
    UserError line naming the endpoint (not empty feedback, not a traceback)."""
    server = stub(lambda body: (status, payload))
    task = get_task("secret")
    teacher = make_teacher("llm", task, ChatEndpoint(server.url, "m"), None, SamplingParams(max_tokens=4))
    with pytest.raises(UserError) as e:
        teacher.feedback([wrong_attempt(task, task.problems(1, split="test")[0])])
    message = str(e.value)
    assert "\n" not in message and server.url + "/chat/completions" in message and says in message, message


def test_endpoint_config_is_checked(checkpoints, monkeypatch):
    """One line each: endpoint and model_path together, an endpoint with no model name, a URL
    that is not http(s), an API key variable that is not set."""
    student = checkpoints[0]
    for teacher, says in [(dict(endpoint="http://127.0.0.1:1/v1", endpoint_model="m", model_path=str(student)),
                           "both set"),
                          (dict(endpoint="http://127.0.0.1:1/v1"), "endpoint_model is empty"),
                          (dict(endpoint="127.0.0.1:8000", endpoint_model="m"), "http:// or https://")]:
        with pytest.raises(UserError, match=says) as e:
            config(student, **teacher)
        assert "\n" not in str(e.value) and "teacher." in str(e.value)
    monkeypatch.delenv(KEY_ENV, raising=False)
    run = build_run(config(student, endpoint="http://127.0.0.1:1/v1", endpoint_model="m", api_key_env=KEY_ENV),
                    Dist(), with_engine=False)
    with pytest.raises(UserError, match=f"teacher.api_key_env: the environment variable {KEY_ENV} is not set"):
        teacher_engine(run)


# ----------------------------------------------------------------------------------------
# The prompt file


def test_prompt_file_is_the_teachers_system_prompt(checkpoints, stub, tmp_path):
    """teacher.prompt_file: its text is the system prompt, {privileged} filled in and any
    other braces (a JSON example) kept as written."""
    prompt = tmp_path / "teacher.txt"
    prompt.write_text('Coach briefly. Privileged: {privileged} Reply like {"hint": "..."}.', encoding="utf-8")
    server = stub(lambda body: reply("Think about the clue."))
    run = build_run(config(checkpoints[0], prompt_file=str(prompt), endpoint=server.url, endpoint_model="m"), Dist())
    problem = run.task.problems(1, split="test")[0]
    episode_runner(run, "llm", max_turns=2).teacher.feedback([wrong_attempt(run.task, problem)])
    (_, _, body), = server.requests
    system = body["messages"][0]["content"]
    assert system.startswith(f"Coach briefly. Privileged: the reference answer is {problem.answer!r}.")
    assert system.endswith('Reply like {"hint": "..."}.')


def test_prompt_file_without_the_placeholder_or_missing_is_one_line(checkpoints, tmp_path):
    """A prompt file with no {privileged} placeholder (the teacher would know nothing the
    student does not) or no file at all is refused when the config loads, one line."""
    plain = tmp_path / "plain.txt"
    plain.write_text("Be a helpful teacher.", encoding="utf-8")
    for path, says in [(plain, "no {privileged} placeholder"), (tmp_path / "absent.txt", "no such file")]:
        with pytest.raises(UserError) as e:
            config(checkpoints[0], prompt_file=str(path))
        message = str(e.value)
        assert "\n" not in message and "teacher.prompt_file" in message and says in message, message
