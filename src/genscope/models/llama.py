"""Llama 2: the paper's text-to-text baseline (LLaMA2 [12]; Table II / Figure 7, Table III prefill/decode).

One component: a decoder-only causal transformer (transformers' ``LlamaForCausalLM``), run as an LLM is
served: ``prefill`` over the prompt (the paper's Table III: "1st token"), then one ``decode`` step per
generated token with a KV cache (matrix-vector work: query length 1 against a growing key sequence).

Sources of the ``paper`` preset (Llama-2-7B):
* meta-llama/Llama-2-7b-hf ``config.json``: hidden_size 4096, intermediate_size 11008,
  num_hidden_layers 32, num_attention_heads 32, num_key_value_heads 32, vocab_size 32000,
  max_position_embeddings 4096, rms_norm_eps 1e-05, hidden_act silu, rope_theta 10000,
  tie_word_embeddings false, bos_token_id 1, eos_token_id 2 -> 6,738,415,616 parameters
  (Touvron et al., "Llama 2: Open Foundation and Fine-Tuned Chat Models", 2023, Table 1: 7B, 4k context).
* Prompt and generation lengths are not given by the paper; 128 prompt tokens and 128 generated tokens
  are genscope's defaults (a short chat turn), both settable (``prompt_len`` here, ``--decode-tokens``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

from genscope.models.base import ModelConfig, PresetTable
from genscope.models.spec import ModuleSpec


def llama_spec(*, hidden: int, layers: int, heads: int, mlp: int, vocab: int = 32000, kv_heads: int | None = None,
               max_positions: int = 4096, rms_norm_eps: float = 1e-5, bos_token_id: int = 1,
               eos_token_id: int = 2) -> ModuleSpec:
    return ModuleSpec.of(
        "LlamaForCausalLM",
        vocab_size=vocab, hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads or heads, max_position_embeddings=max_positions,
        rms_norm_eps=rms_norm_eps, hidden_act="silu", tie_word_embeddings=False, attention_bias=False,
        mlp_bias=False,  # RoPE: transformers' default (theta 10000), as Llama 2
        bos_token_id=bos_token_id, eos_token_id=eos_token_id,
    )


@dataclass(frozen=True)
class LlamaConfig(ModelConfig):
    """A decoder-only LLM: prefill over ``prompt_len`` tokens, then ``decode_tokens`` decode steps."""

    language_model: ModuleSpec = None  # type: ignore[assignment]
    prompt_len: int = 128  # tokens the prompt is padded/extended to (prefill length)
    decode_tokens: int = 128  # decode steps (one generated token each) by default

    COMPONENTS: ClassVar = (("language_model", "language_model"),)

    @property
    def max_positions(self) -> int:
        return int(self.language_model["max_position_embeddings"])


PAPER = LlamaConfig(
    preset="paper",
    language_model=llama_spec(hidden=4096, layers=32, heads=32, mlp=11008),  # Llama-2-7b-hf config.json
    prompt_len=128, decode_tokens=128,
)

# small: same block structure (RMSNorm, SwiGLU MLP with the 11008/4096 ratio, RoPE, MHA) and the real
# 32k vocabulary; 8 layers of width 512 so prefill + 64 decode steps take seconds on 2 CPU cores.
SMALL = replace(
    PAPER, preset="small",
    language_model=llama_spec(hidden=512, layers=8, heads=8, mlp=1376, max_positions=1024),
    prompt_len=128, decode_tokens=64,
)

# tiny: milliseconds, for tests. The prompt stays 128 tokens long so that the prefill's similarity matrix
# [B, 4, 128, 128] dominates the baseline backend's peak memory (the memory test relies on it).
TINY = replace(
    PAPER, preset="tiny",
    language_model=llama_spec(hidden=32, layers=2, heads=4, mlp=64, vocab=1000, max_positions=256),
    prompt_len=128, decode_tokens=4,
)

PRESETS = PresetTable("llama", {"paper": PAPER, "small": SMALL, "tiny": TINY})
