"""One torchrun rank of test_real_vllm_one_engine_per_torchrun_rank: a vLLM engine with the
external launcher (as build_engine makes it under torchrun), one greedy request, its tokens
printed as JSON on a line starting with RESULT."""
import json
import os
import sys


def main(path: str) -> None:
    from rl2f.engine import SamplingParams, make_engine
    from rl2f.model import load_tokenizer

    engine = make_engine("vllm", model_path=path, tokenizer=load_tokenizer(path), max_lora_rank=8,
                         kv_cache_gib=0.25, max_model_len=256, enforce_eager=True, dtype="float32",
                         distributed_executor_backend="external_launcher", seed=0)
    out = engine.generate([[5, 6, 7, 8]], SamplingParams(temperature=0.0, max_tokens=6), use_adapter=False)
    print("RESULT " + json.dumps({"rank": int(os.environ["RANK"]), "ids": out[0].outputs[0].token_ids}), flush=True)


if __name__ == "__main__":  # vLLM on CPU spawns: nothing may start at import
    main(sys.argv[1])
