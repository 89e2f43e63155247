"""rl2f's benchmarks: kernel microbenchmarks, engine and training throughput, the GPU suite.

Not part of the installed package. Run from the repository root as modules, e.g.
`python -m benchmarks.bench_token_logprobs`; see benchmarks/README.md for every command.
Shared pieces: `harness` (timing, memory, alternating rounds, result files), `device`
(what the machine is), `shapes` (the model shapes measured), `ops` (the per-op driver of
the kernel microbenchmarks), `readme` (the tables in benchmarks/README.md).
"""
