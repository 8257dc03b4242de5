"""``llama``: the text-to-text baseline (paper: LLaMA2; here Llama-2-7B at ``paper`` scale).

prefill (the prompt, padded/extended to ``prompt_len`` tokens, in one forward pass that fills the KV cache
and yields the first generated token - Table III's "1st token") -> decode x N (one token per step, greedy,
query length 1 against the cached keys).

Conventions (what the hooks and tests see):
* the prompt's token ids are extended to exactly ``prompt_len`` (= P) by repeating the prompt's words
  cyclically after the start token, so the prefill length does not depend on the prompt's wording;
  a prompt of more than P tokens is refused;
* ``prefill`` runs P query tokens over P keys (causal) and picks token t0;
* ``decode`` step i (0 <= i < N) feeds token t_i, so its attention has query length 1 and key length
  P + 1 + i (the prompt, t0, and the i tokens decoded before), and picks t_{i+1};
* ``Generation.tokens`` = [t0, ..., tN] (N + 1 generated ids), ``Generation.raw`` = the logits of the
  last decode step [B, vocab] in float32.

Written out rather than calling ``model.generate`` so that each step is its own phase; the model, its
KV cache (``DynamicCache``) and its attention are transformers', with attention routed through genscope's
entry point.
"""

from __future__ import annotations

from pathlib import Path

import torch

from genscope.errors import UserError
from genscope.models.base import component
from genscope.models.layers.attention import install_attention
from genscope.models.llama import PRESETS, LlamaConfig
from genscope.workloads.base import Generation, Pipeline, Request, Workload, check_range
from genscope.workloads.phases import loop_steps, phase
from genscope.workloads.text import HashTokenizer, LocalTokenizer, check_prompt

# files that mark a (flat) weights folder as carrying its own tokenizer (data files, never code)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def has_tokenizer(folder: Path | None) -> bool:
    return folder is not None and any((folder / name).is_file() for name in TOKENIZER_FILES)


def prompt_token_ids(prompt: str, length: int, vocab_size: int, weights: Path | None = None) -> list[int]:
    """The prompt as exactly ``length`` token ids: [start] + words, the words repeated cyclically to fill.

    With a weights folder that ships tokenizer files, its tokenizer is used (start token included);
    otherwise genscope's offline word-hash tokenizer. Raises UserError when the prompt is longer.
    """
    check_prompt(prompt)
    if has_tokenizer(weights):
        tok = LocalTokenizer(weights, max_len=length).tok
        ids = list(tok(prompt, add_special_tokens=True).input_ids)
        start = 1 if ids and ids[0] == tok.bos_token_id else 0
        head, body = ids[:start], ids[start:]
    else:
        hasher = HashTokenizer(vocab_size=vocab_size, max_len=10**9)
        head, body = [hasher.bos_id], hasher.ids(prompt, pad=False)[1:-1]  # no end token: text continues
    if len(head) + len(body) > length:
        raise UserError(f"prompt is {len(head) + len(body)} tokens but the prefill takes at most {length} "
                        "(the preset's prompt length); shorten the prompt")
    if not body:
        body = head or [0]
    fill = length - len(head)
    return head + [body[i % len(body)] for i in range(fill)]


class LlamaPipeline(Pipeline):
    config: LlamaConfig

    def generate(self, request: Request) -> Generation:
        from transformers import DynamicCache

        model = self.component("language_model")
        prompt_len = self.config.prompt_len
        ids = prompt_token_ids(request.prompt, prompt_len, model.config.vocab_size, request.weights)
        input_ids = torch.tensor([ids] * request.batch_size, dtype=torch.long, device=self.device)  # [B, P]
        cache = DynamicCache(config=model.config)
        generated = []
        with phase("prefill"):
            # logits_to_keep=1: only the last position's logits [B, 1, vocab] (as transformers' generate)
            out = model(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
            token = out.logits[:, -1].argmax(dim=-1, keepdim=True)  # [B, 1] greedy
        generated.append(token)
        logits = out.logits[:, -1]
        for i in loop_steps("decode", request.decode_tokens, growing=True):
            with phase("decode", step=i):
                # token: [B, 1]; the cache holds P + i keys before this step, P + i + 1 during it
                out = model(input_ids=token, past_key_values=cache, use_cache=True)
                logits = out.logits[:, -1]  # [B, vocab]
                token = logits.argmax(dim=-1, keepdim=True)
            generated.append(token)
        # a StepLimit (shape-only counts) may have cut the loop: the tokens not generated repeat the last one
        generated += generated[-1:] * (request.decode_tokens + 1 - len(generated))
        tokens = torch.cat(generated, dim=1)  # [B, N + 1]
        if tokens.device.type != "meta":
            tokens = tokens.cpu()
        info = {"prompt_tokens": prompt_len, "generated_tokens": int(tokens.shape[1]),
                "kv_cache_tokens": int(cache.get_seq_length())}
        if has_tokenizer(request.weights):
            tok = LocalTokenizer(request.weights, max_len=prompt_len).tok
            info["text"] = tok.decode(tokens[0].tolist(), skip_special_tokens=True)
        return Generation(tokens=tokens, raw=logits.float(), info=info)


class Llama(Workload):
    name = "llama"
    paper_model = "LLaMA2 (text-to-text baseline)"
    family = "transformer (autoregressive LLM)"
    modality = "text"
    phases = ("prefill", "decode")
    presets = PRESETS
    weights_subfolders = (".",)  # a flat transformers-layout folder: config.json + *.safetensors (+ tokenizer)
    weights_note = "a local Llama folder in transformers layout (config.json, *.safetensors, tokenizer files)"

    def validate(self, config: LlamaConfig, request: Request) -> None:
        super().validate(config, request)
        check_range("decode tokens", request.decode_tokens, 1, config.max_positions - config.prompt_len - 1)
        vocab = int(config.language_model["vocab_size"])
        prompt_token_ids(request.prompt, config.prompt_len, vocab, request.weights)  # too long -> UserError

    def build(self, config: LlamaConfig, device="cpu", dtype=torch.float32, weights: Path | None = None
              ) -> LlamaPipeline:
        from genscope.models.weights import load_pretrained

        spec = config.language_model
        if weights is not None:
            model = load_pretrained(spec.class_name, weights, dtype, torch.device(device))
        else:
            model = spec.build(device, dtype)
        sites = install_attention(model, prefix="language_model")
        comps = [component("language_model", model)]
        return LlamaPipeline(config, comps, torch.device(device), dtype, sites)
