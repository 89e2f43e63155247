"""The decoder (Llama 3, Qwen 2/2.5/3, Gemma 3 text), its checkpoint loader, KV cache,
tokenizer and the tiny embedded default checkpoint."""
from rl2f.model.config import ModelConfig, RopeParams, parse_hf_config, read_config
from rl2f.model.kv_cache import KVCache
from rl2f.model.loading import load_config, load_model
from rl2f.model.modeling import CausalLM, SharedPrefix
from rl2f.model.tiny import build_tiny_checkpoint, tiny_config
from rl2f.model.tokenizer import Tokenizer, load_tokenizer

__all__ = [
    "CausalLM", "KVCache", "ModelConfig", "RopeParams", "SharedPrefix", "build_tiny_checkpoint", "load_config",
    "Tokenizer", "load_model", "load_tokenizer", "parse_hf_config", "read_config", "tiny_config",
]
