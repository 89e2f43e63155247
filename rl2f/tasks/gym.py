"""reasoning-gym (PyPI `reasoning-gym`, Apache-2.0) as a task family: 100+ procedural datasets
(maze, countdown, basic_arithmetic, gsm_symbolic, arc_1d, knights_knaves, sudoku, ...), each
with its own scorer. Pure Python, nothing downloaded at run time; `bash install.sh gym` (or
`pip install 'rl2f[gym]'`) installs it, and `bash install.sh test` brings it too.

    [task]
    name = "reasoning_gym"
    options = {dataset = "maze", config = {min_dist = 3, max_dist = 6}}
    # or a weighted mix, with an optional config per dataset:
    # options = {datasets = {maze = 1.0, countdown = 2.0}, config = {countdown = {max_numbers = 4}}}

A problem is one dataset entry: the student sees its `question` (and `system_prompt`, which
asks for the answer between <answer> tags, as reasoning-gym's own prompts do); the entry's
`answer` and `metadata` are privileged (`Problem.answer`, `Problem.info`). The verifier is
the dataset's own `score_answer`: correct iff it scores 1.0, any score recorded in
`Verdict.detail`. Splits are content-hashed like the other procedural tasks
(rl2f.tasks.maze.sample_problems): each (seed, split) draws dataset seeds from its own
generator, and a problem belongs to the split its question hashes to, so train and test never
share a question even where a dataset's problem space is small. Hints: task-specific for maze
(too many or too few steps, the first step of a shortest route), countdown (the value the
student's expression reaches, the numbers it misuses) and basic_arithmetic (too high or too
low); elsewhere a generic one. Some scorers evaluate the answer as Python (`EVAL_SCORERS`): an
answer that is code, or arithmetic that would hang them, is refused unscored (`refusal`).
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import json
import operator
import random
import re
from collections import Counter, deque
from fractions import Fraction
from itertools import permutations

from rl2f.errors import UserError
from rl2f.tasks.base import Problem, Task, Verdict, answer_segment, check_option
from rl2f.tasks.maze import content_id, sample_problems

NAME = "reasoning_gym"
INSTALL = "bash install.sh gym (or pip install 'rl2f[gym]')"
# Entries drawn from one dataset instance before the next is seeded: a dataset's init costs up
# to 0.4 s (arc_agi), and some precompute per index (gsm_symbolic), so indices stay in [0, size).
CHUNK = 1024
# Seeds stay below 2**32 with every index added: pool_matrix seeds numpy with seed + index.
SEED_RANGE = 2**32 - CHUNK


def _reasoning_gym():
    """The reasoning_gym package, imported on first use (1.3 s: matplotlib), or one line."""
    try:
        import reasoning_gym
    except ImportError:
        raise UserError(f"task '{NAME}' needs the reasoning-gym package: {INSTALL}") from None
    return reasoning_gym


# --- answers: extraction, and scorers that run the answer as code -------------------------
# The last <answer>...</answer>; an unclosed tag runs to the end (a reply cut at max_tokens).
_TAGGED = re.compile(r"<answer>(.*?)(?:</answer>|\Z)", re.DOTALL | re.IGNORECASE)

# These datasets' scorers hand the student's answer to Python's eval() or sympy's parse_expr
# (itself eval) in reasoning-gym 0.1.25: an answer that is code would run in the trainer, and
# "9**9**9**9" would hang it. Such answers are refused unscored.
EVAL_SCORERS = frozenset({"countdown", "puzzle24", "polynomial_multiplication", "simple_integration",
                          "intermediate_integration", "string_insertion", "spiral_matrix", "binary_matrix",
                          "n_queens"})
_MATH_CALLS = frozenset({"sin", "cos", "tan", "sec", "csc", "cot", "asin", "acos", "atan", "sinh", "cosh",
                         "tanh", "exp", "log", "ln", "sqrt", "Abs"})
_CODE = [
    (re.compile(r"__|\b(?:import|lambda)\b|[;@`]"), "is a Python statement or names Python internals"),
    (re.compile(r"!"), "takes a factorial"),  # parse_expr reads "n!" as factorial(n): 10**7! hangs
    (re.compile(r"[\])'\"]\s*\("), "calls an expression"),  # [open][0](...): no name before "("
    # a power of a power, or one whose exponent is not a small literal, runs for hours
    (re.compile(r"\*\*\s*(?!\(?\s*-?\s*(?:\d{1,2}(?![\d.])|[A-Za-z]\b)\s*\)?(?!\s*(?:\*\*|\^)))"),
     "raises to a large power"),
    (re.compile(r"[\]'\"]\s*\*|\*\s*[\['\"]"), "repeats a list or string"),  # [0]*10**9: memory
]


def refusal(dataset: str, answer: str) -> str | None:
    """Why `answer` must not reach `dataset`'s scorer (None: it may)."""
    if dataset not in EVAL_SCORERS:
        return None
    for pattern, why in _CODE:
        if pattern.search(answer):
            return f"the answer {why}"
    for call in re.finditer(r"([A-Za-z_]\w*)\s*\(", answer):
        if call.group(1) not in _MATH_CALLS:
            return f"the answer calls {call.group(1)}()"
    return None


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def arithmetic_value(expr: str) -> Fraction | None:
    """The exact value of an expression of integers, + - * / and parentheses; None for
    anything else (a name, a call, a power) or a division by zero. No eval()."""
    try:
        tree = ast.parse(expr.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError):  # ValueError: a NUL byte
        return None

    def value(node):
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return Fraction(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = value(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](value(node.left), value(node.right))
        raise ValueError(ast.dump(node))

    try:
        return value(tree)
    except (ValueError, ZeroDivisionError, RecursionError):  # RecursionError: "1+1+...+1", long
        return None


def _integer(answer: str | None) -> int | None:
    """The last integer in an extracted answer ("-12", "12 steps"), or None."""
    found = re.findall(r"-?\d+", answer or "")
    return int(found[-1]) if found else None


def _number(v: Fraction) -> str:
    return str(v.numerator) if v.denominator == 1 else f"{float(v):.4g}"


# --- dataset-specific hints ---------------------------------------------------------------
# Each takes (problem, extracted answer, rng) and reads the privileged metadata only when rng
# is None: with an rng it is the placebo, the same sentences with their content drawn at random.
DIRECTIONS = {(-1, 0): "up", (1, 0): "down", (0, -1): "left", (0, 1): "right"}


def _first_step(meta: dict) -> str:
    """The direction of the first step of a shortest route from start to goal (BFS from the
    goal, so any neighbour of the start one step closer to it begins one)."""
    grid = meta["grid"]
    find = lambda ch: next((r, c) for r, row in enumerate(grid) for c, x in enumerate(row) if x == ch)
    start, goal = find(meta["start"]), find(meta["goal"])
    dist, queue = {goal: 0}, deque([goal])
    while queue:
        r, c = queue.popleft()
        for dr, dc in DIRECTIONS:
            n = (r + dr, c + dc)
            if 0 <= n[0] < len(grid) and 0 <= n[1] < len(grid[n[0]]) and grid[n[0]][n[1]] != meta["wall"] \
                    and n not in dist:
                dist[n] = dist[(r, c)] + 1
                queue.append(n)
    return next(name for (dr, dc), name in DIRECTIONS.items()
                if dist.get((start[0] + dr, start[1] + dc)) == dist[start] - 1)


def _maze_hint(problem: Problem, answer: str | None, rng: random.Random | None) -> str:
    steps = _integer(answer)
    if steps is None or steps < 0:
        return "Give the minimum number of steps as a whole number."
    if rng is None and steps == int(problem.answer):
        return "Give only the number of steps, with no other text."
    shorter = rng.random() < 0.5 if rng else steps > int(problem.answer)
    first = rng.choice(list(DIRECTIONS.values())) if rng else _first_step(problem.info)
    n_steps = f"{steps} step{'s' * (steps != 1)}"
    count = (f"There is a shorter route than {n_steps}." if shorter
             else f"No route is that short: every route from start to goal takes more than {n_steps}.")
    return f"{count} One shortest route starts by going {first}."


def _countdown_hint(problem: Problem, answer: str | None, rng: random.Random | None) -> str:
    value = arithmetic_value(answer or "")
    if value is None:
        return ("I cannot read your answer as an arithmetic expression: use only the given numbers, "
                "+, -, *, / and parentheses, with no '=' and no other text.")
    used = Counter(int(n) for n in re.findall(r"\b\d+\b", answer))
    if rng is not None:
        n = rng.choice(sorted(used)) if used else None
        misuse = ["", f"You used {n} too often.", f"{n} is not one of the numbers."] if used else [""]
        return f"Your expression comes to {rng.randint(1, 999)}, not the target. {rng.choice(misuse)}".strip()
    meta = problem.info
    given = Counter(meta["numbers"])
    parts = [] if value == meta["target"] else [f"Your expression comes to {_number(value)}, not the target."]
    for n in sorted(used - given):
        parts.append(f"You used {n} too often." if n in given else f"{n} is not one of the numbers.")
    if given - used:
        parts.append(f"You did not use {', '.join(str(n) for n in sorted((given - used).elements()))}.")
    return " ".join(parts) or ("Your expression reaches the target with each number once: give only the "
                               "expression, with no '=' and no other text.")


def _arithmetic_hint(problem: Problem, answer: str | None, rng: random.Random | None) -> str:
    value = _integer(answer)
    if value is None:
        return "Give the result as a single whole number."
    if rng is None and value == int(problem.answer):
        return "Give only the number, with no other text."
    high = rng.random() < 0.5 if rng else value > int(problem.answer)
    return f"Your result is too {'high' if high else 'low'}."


HINTS = {"maze": _maze_hint, "countdown": _countdown_hint, "basic_arithmetic": _arithmetic_hint}


class ReasoningGymTask(Task):
    name = NAME
    system_prompt = ("Solve the problem step by step. Then give your final answer, in exactly the format "
                     "the question asks for and nothing else, between <answer> and </answer> tags.")

    def __init__(self, dataset: str | None = None, datasets: dict | None = None, config: dict | None = None):
        self._rg = _reasoning_gym()
        if (dataset is None) == (datasets is None):
            given = "both" if dataset is not None else "neither"
            raise UserError(f"task '{NAME}': give options.dataset (one dataset, e.g. \"maze\") or options.datasets "
                            f"(weights of a mix, e.g. {{maze = 1.0, countdown = 2.0}}), not {given}")
        if dataset is not None:
            weights = {check_option(NAME, "dataset", dataset, str): 1.0}
            configs = {dataset: config if config is not None else {}}
        else:
            check_option(NAME, "datasets", datasets, dict)
            if not datasets:
                raise UserError(f"task '{NAME}': option datasets is empty")
            weights = {name: check_option(NAME, f"datasets.{name}", w, float, 0, None, lo_open=True)
                       for name, w in datasets.items()}
            configs = config if config is not None else {}
            check_option(NAME, "config", configs, dict)
            stray = sorted(set(configs) - set(weights))
            if stray:
                raise UserError(f"task '{NAME}': config for {', '.join(stray)}, which options.datasets does not "
                                f"name (with a mix, config maps each dataset to its own settings)")
            configs = {name: configs.get(name, {}) for name in weights}
        self.weights = weights
        self.configs = {name: self._check_config(name, cfg) for name, cfg in configs.items()}
        # One instance per dataset for its scorer (some scorers read the config), built here so
        # that a bad config fails at load rather than at the first problem.
        self.scorers = {name: self._dataset(name, seed=0, size=1) for name in weights}

    def _check_config(self, name: str, config) -> dict:
        known = sorted(n for n in self._rg.factory.DATASETS if n != "composite")
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            raise UserError(f"task '{NAME}': unknown dataset {name!r} ("
                            + (f"did you mean {', '.join(close)}? " if close else "")
                            + f"known: maze, countdown, basic_arithmetic, gsm_symbolic, arc_1d, knights_knaves, "
                              f"... {len(known)} in all: reasoning_gym.factory.DATASETS)")
        check_option(NAME, f"config for {name}", config, dict)
        fields = [f.name for f in dataclasses.fields(self._rg.factory.DATASETS[name][1])]
        bad = [k for k in config if k not in fields or k in ("seed", "size")]
        if bad:
            settable = ", ".join(f for f in fields if f not in ("seed", "size"))
            raise UserError(f"task '{NAME}': config for {name} has {', '.join(map(repr, bad))} (settable: {settable}; "
                            f"seed and size come from task.seed and the number of problems)")
        return dict(config)

    def _dataset(self, name: str, seed: int, size: int):
        try:
            return self._rg.create_dataset(name, seed=seed, size=size, **self.configs[name])
        except (AssertionError, TypeError, ValueError) as e:  # its config's validate() asserts
            raise UserError(f"task '{NAME}': config for {name} rejected by reasoning-gym: {e}") from None

    # --- problems ---
    def problems(self, n: int, seed: int = 0, split: str = "train") -> list[Problem]:
        names, weights = list(self.weights), list(self.weights.values())
        chunks: dict[str, list] = {}  # dataset -> [instance, next index]

        def make(rng: random.Random):
            name = rng.choices(names, weights)[0] if len(names) > 1 else names[0]
            chunk = chunks.get(name)
            if chunk is None or chunk[1] == CHUNK:
                chunk = chunks[name] = [self._dataset(name, seed=rng.randrange(SEED_RANGE), size=CHUNK), 0]
            try:
                entry = chunk[0][chunk[1]]
            except (RuntimeError, ValueError, AssertionError) as e:  # a config it cannot meet
                raise UserError(f"task '{NAME}': {name} could not make a problem with this config: {e}") from None
            chunk[1] += 1
            key = f"{name}|{entry['question']}"
            info = {**entry["metadata"], "source_dataset": name}
            answer = "" if entry["answer"] is None else str(entry["answer"])
            return key, Problem(id=content_id(f"rg-{name}", key), prompt=entry["question"], answer=answer, info=info)

        # The family names the mix and every config, so that other settings draw other seeds.
        family = f"{NAME}|" + json.dumps({"datasets": self.weights, "config": self.configs}, sort_keys=True)
        return sample_problems(family, n, seed, split, make)

    # --- answers ---
    def extract_answer(self, text: str) -> str | None:
        tagged = _TAGGED.findall(text)
        answer = tagged[-1] if tagged else answer_segment(text)
        return answer.strip() or None

    def verify(self, text: str, problem: Problem) -> Verdict:
        answer = self.extract_answer(text)
        if answer is None:
            return Verdict(False, None, "no answer found (expected <answer>...</answer> or a line 'Answer: ...')")
        name = problem.info["source_dataset"]
        why = refusal(name, answer)
        if why:
            return Verdict(False, answer, f"not scored: {why}, and the {name} scorer evaluates answers as code")
        entry = {"question": problem.prompt, "answer": problem.answer or None, "metadata": problem.info}
        try:
            score = float(self.scorers[name].score_answer(answer, entry))
        except Exception as e:  # a scorer that chokes on a strange answer must not stop training
            return Verdict(False, answer, f"the {name} scorer failed on this answer: {type(e).__name__}: {e}")
        return Verdict(score == 1.0, answer, f"{name} score {score:g} of 1")

    def hint(self, problem: Problem, attempt: str, verdict: Verdict) -> str:
        return self._hint(problem, verdict, None)

    def placebo_hint(self, problem: Problem, attempt: str, verdict: Verdict, rng: random.Random) -> str:
        """The hint's sentences with random content: of the privileged fields it reads only
        which dataset the problem is from (whose sentences), never the answer or the metadata."""
        return self._hint(problem, verdict, rng)

    def _hint(self, problem: Problem, verdict: Verdict, rng: random.Random | None) -> str:
        name = problem.info["source_dataset"]
        if verdict.correct:
            return "That is correct."
        if verdict.answer is None:
            return "I could not find your answer: give it between <answer> and </answer>."
        if refusal(name, verdict.answer):
            return "Give the answer the question asks for as plain text, not as code."
        if name in HINTS:
            return HINTS[name](problem, verdict.answer, rng)
        return ("That is not correct. Re-check your work, and give only the final answer, in exactly the "
                "format the question asks for.")

    def answer_forms(self, problem: Problem) -> list[str]:
        answer = problem.answer.strip()
        if not answer:
            return []
        forms = [answer, answer.rstrip(".")]
        tokens = answer.split()
        if len(tokens) > 1 and all(len(t) <= 2 for t in tokens):  # a grid or a list: "0 0 3 3"
            forms += [", ".join(tokens), ",".join(tokens)]
        if problem.info["source_dataset"] == "knights_knaves":
            # "A is a hero, and B is a villain.": the verdicts in any order, however joined
            clauses = re.split(r",\s*(?:and\s+)?|\s+and\s+", answer.rstrip("."))
            if len(clauses) <= 5:
                forms += [sep.join(order) for order in permutations(clauses) for sep in (", and ", ", ", " and ")]
        return list(dict.fromkeys(forms))
