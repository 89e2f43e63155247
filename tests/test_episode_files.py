"""Episode files written by `generate_to_file` (what `rl2f generate` writes): a resume after a
stop at any byte gives each (problem, sample) exactly once and the same file as an
uninterrupted run; a damaged line before the end and a full disk are one clear error."""
import errno
import json
import os
from pathlib import Path

import pytest

from rl2f.episodes import Episode, Turn, generate_to_file, read_episodes
from rl2f.errors import UserError
from rl2f.tasks.base import Problem

G, PER_BATCH = 3, 2
PROBLEMS = [Problem(f"p{i}", f"What is {i} + {i}?", str(2 * i)) for i in range(7)]


class FakeRunner:
    """Episodes that are a pure function of (problem, sample, batch seed), as the real
    runner's are for a fixed batch: lengths vary so that records have different sizes."""

    def __init__(self):
        self.played: list[str] = []

    def run(self, problems, group_size, seed=0, adapter_version=0):
        out = []
        for p in problems:
            self.played.append(p.id)
            for g in range(group_size):
                text = "x" * ((seed + g + len(p.id)) % 17)
                out.append(Episode(p.id, "fake", g, adapter_version, seed, [{"role": "user", "content": p.prompt}],
                                   [Turn(text, None, False, 0.0, "stop")], [1, 2, 3], [0, 1, 1], [-1, 0, 0],
                                   [0.0, -0.5, -0.25]))
        return out


def generate(path, runner=None):
    runner = runner or FakeRunner()
    for _ in generate_to_file(runner, PROBLEMS, path, G, PER_BATCH, seed=11):
        pass
    return runner


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "eps.jsonl"
    generate(path)
    return path.read_bytes()


def test_resume_after_a_stop_at_every_byte_is_the_uninterrupted_file(tmp_path, reference):
    """For a stop at every record boundary, one byte either side of it and the middle of
    every record (a kill at that byte), resuming gives the uninterrupted file byte for byte:
    every (problem, sample) once, and only the batches not whole on disk played again."""
    path = tmp_path / "eps.jsonl"
    ends = [i + 1 for i, b in enumerate(reference) if b == ord("\n")]
    starts = [0] + ends[:-1]
    cuts = sorted({c for s, e in zip(starts, ends) for c in (s, s + 1, (s + e) // 2, e - 1, e)})
    batch_ends = ends[G * PER_BATCH - 1 :: G * PER_BATCH] + [ends[-1]]
    for cut in cuts:
        path.write_bytes(reference[:cut])
        runner = generate(path)
        assert path.read_bytes() == reference, cut
        whole = sum(e <= cut for e in batch_ends)
        assert runner.played == [p.id for p in PROBLEMS[whole * PER_BATCH:]], cut
    eps = read_episodes(path)
    assert sorted((e.problem_id, e.sample) for e in eps) == sorted((p.id, g) for p in PROBLEMS for g in range(G))


def test_a_bad_line_before_the_end_is_named_not_dropped(tmp_path, reference):
    """A damaged line in the middle of the file is a UserError naming file:line, and the file
    is left as it was (the old reader stopped there and dropped every later episode)."""
    lines = reference.split(b"\n")
    lines[4] = b'{"problem_id": "p1", "sam'
    path = tmp_path / "eps.jsonl"
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(UserError, match=rf"{path}:5: not an episode record"):
        generate(path)
    assert path.read_bytes() == b"\n".join(lines)


def test_duplicates_and_other_problems(tmp_path, reference):
    """A group with a sample twice (an old, duplicating resume) is played again so each
    sample appears once; records of problems this run does not ask for are kept."""
    lines = reference.splitlines(keepends=True)
    other = json.loads(lines[0])
    other["problem_id"] = "elsewhere"
    path = tmp_path / "eps.jsonl"
    path.write_bytes(json.dumps(other).encode() + b"\n" + b"".join(lines) + lines[-1])
    generate(path)
    eps = read_episodes(path)
    pairs = [(e.problem_id, e.sample) for e in eps]
    assert len(pairs) == len(set(pairs)) == len(PROBLEMS) * G + 1 and ("elsewhere", 0) in pairs


def test_a_full_disk_cuts_back_to_the_last_batch_and_resumes(tmp_path, reference, monkeypatch):
    """ENOSPC halfway through a batch: one UserError naming the file; the file ends at the
    last whole batch, and running again completes it as if nothing had happened."""
    path = tmp_path / "eps.jsonl"
    real_open = Path.open
    writes = []

    class FullAfterTwoBatches:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            writes.append(len(data))
            if len(writes) == 3:
                self.f.write(bytes(data[: len(data) // 2]))
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def open_(p, mode="r", *a, **k):
        f = real_open(p, mode, *a, **k)
        return FullAfterTwoBatches(f) if "a" in mode else f

    monkeypatch.setattr(Path, "open", open_)
    with pytest.raises(UserError, match=rf"{path}: cannot write episodes \(No space left on device\)"):
        generate(path)
    monkeypatch.setattr(Path, "open", real_open)
    assert path.read_bytes() == b"".join(reference.splitlines(keepends=True)[: 2 * G * PER_BATCH])
    generate(path)
    assert path.read_bytes() == reference


def test_a_file_from_a_larger_group_is_refused(tmp_path, reference):
    """Samples beyond group_size mean the file was written with a larger group: resuming
    would replay (and so drop) those episodes, so it is refused, naming the file."""
    path = tmp_path / "eps.jsonl"
    rec = json.loads(reference.splitlines()[0])
    rec["sample"] = G + 1
    path.write_bytes(reference + json.dumps(rec).encode() + b"\n")
    with pytest.raises(UserError, match=rf"{path}: holds sample {G + 1} of problem 'p0', outside "
                                        rf"rollout.group_size={G}"):
        generate(path)
