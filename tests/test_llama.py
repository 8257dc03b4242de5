import json

import pytest
import torch
from helpers import assert_backends_agree, assert_baseline_uses_more_memory, run_tiny

from genscope.cli import main
from genscope.models.layers.attention import register_call_hook
from genscope.workloads import registry
from genscope.workloads.phases import current_phase

TINY_PROMPT_LEN = registry.get("llama").config("tiny").prompt_len


def test_tiny_run_has_prefill_and_one_decode_phase_per_token():
    pipeline, request, gen, times = run_tiny("llama", decode_tokens=5)
    assert times.counts() == {"prefill": 1, "decode": 5}
    assert gen.tokens.shape == (1, 6)  # the prefill's token + one per decode step
    vocab = pipeline.component("language_model").config.vocab_size
    assert gen.raw.shape == (1, vocab)
    assert gen.info["kv_cache_tokens"] == TINY_PROMPT_LEN + 5
    # greedy: each emitted token is the argmax of the logits that produced it (the last one checked here)
    assert gen.raw.argmax(-1).item() == gen.tokens[0, -1].item()


def test_runs_are_deterministic_and_batches_agree():
    a = run_tiny("llama", decode_tokens=3)[2]
    b = run_tiny("llama", decode_tokens=3, batch_size=2)[2]
    assert torch.equal(a.tokens[0], b.tokens[0]) and torch.equal(b.tokens[0], b.tokens[1])
    assert torch.allclose(a.raw[0], b.raw[1], atol=1e-5)


def test_decode_steps_have_query_length_1_and_growing_keys():
    calls = []

    def hook(call):
        calls.append((current_phase(), call))

    with register_call_hook(hook):
        pipeline, request, _, _ = run_tiny("llama", decode_tokens=4)
    layers = pipeline.component("language_model").config.num_hidden_layers
    prefill = [c for p, c in calls if p.name == "prefill"]
    assert len(prefill) == layers
    assert all(c.kind == "causal" and c.query_len == c.key_len == TINY_PROMPT_LEN and c.is_causal for c in prefill)
    for step in range(4):
        decode = [c for p, c in calls if p.name == "decode" and p.step == step]
        assert len(decode) == layers
        for c in decode:
            assert c.kind == "causal" and c.path.startswith("language_model.model.layers.")
            assert c.query_len == 1
            assert c.key_len == TINY_PROMPT_LEN + 1 + step  # prompt + the prefill's token + earlier decodes
    assert len(calls) == layers * 5


def test_baseline_and_flash_agree():
    assert_backends_agree("llama", decode_tokens=3)


def test_baseline_peak_memory_is_larger_for_a_long_prefill():
    # the prefill's [B, heads, 128, 128] similarity matrix is materialized only by the baseline backend
    assert_baseline_uses_more_memory("llama", decode_tokens=1)


def test_prompt_is_extended_deterministically_to_the_prompt_length():
    from genscope.workloads.llama import prompt_token_ids

    ids = prompt_token_ids("a cat on a mat", 12, vocab_size=1000)
    assert len(ids) == 12
    body = ids[1:6]  # start token, then the 5 words, repeated
    assert ids[1:] == (body * 3)[:11]
    assert prompt_token_ids("a cat on a mat", 12, vocab_size=1000) == ids


def test_paper_preset_is_llama_2_7b():
    """Reference built directly with transformers from meta-llama/Llama-2-7b-hf config.json."""
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        ref = LlamaForCausalLM(LlamaConfig(
            vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
            num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5,
            hidden_act="silu", tie_word_embeddings=False))
    (comp,) = registry.get("llama").describe("paper")
    assert comp.class_name == "LlamaForCausalLM"
    assert comp.params == sum(p.numel() for p in ref.parameters()) == 6_738_415_616


def test_cli_describe_paper_prints_the_published_count(capsys):
    assert main(["describe", "llama", "--preset", "paper", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params_total"] == 6_738_415_616


@pytest.mark.parametrize("argv, needle", [
    (["run", "llama", "--preset", "tiny", "--decode-tokens", "0"], "decode tokens 0"),
    (["run", "llama", "--preset", "tiny", "--decode-tokens", "100000"], "decode tokens 100000"),
    (["run", "llama", "--preset", "tiny", "--prompt", "word " * 200], "prompt is 201 tokens"),
    (["run", "llama", "--preset", "huge"], "unknown preset"),
])
def test_bad_input_is_one_line_and_exit_2(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1


def test_weights_folder_loads_safetensors_and_tokenizer(tmp_path):
    """A flat transformers-layout folder (config.json + model.safetensors + tokenizer files) loads."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pipeline, _, gen, _ = run_tiny("llama", decode_tokens=2)
    pipeline.component("language_model").save_pretrained(tmp_path, safe_serialization=True)
    assert (tmp_path / "config.json").is_file() and not list(tmp_path.glob("*.bin"))
    _, _, loaded, _ = run_tiny("llama", decode_tokens=2, weights=str(tmp_path))
    assert torch.equal(loaded.tokens, gen.tokens)
    assert (loaded.raw - gen.raw).abs().max() < 1e-5

    words = ["<unk>", "<s>", "a", "cat", "on", "mat"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>").save_pretrained(tmp_path)
    _, _, with_tok, _ = run_tiny("llama", decode_tokens=2, weights=str(tmp_path), prompt="a cat on a mat")
    assert isinstance(with_tok.info["text"], str)


def test_weights_folder_without_safetensors_is_refused(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    assert main(["run", "llama", "--preset", "tiny", "--weights", str(tmp_path)]) == 2
    assert "needs config.json and *.safetensors" in capsys.readouterr().err


def test_cli_run_writes_tokens_and_summary(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "llama", "--preset", "tiny", "--decode-tokens", "3", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["phase_calls"] == {"prefill": 1, "decode": 3}
    tokens = json.loads((out / summary["outputs"][0]).read_text())["tokens"]
    assert len(tokens) == 1 and len(tokens[0]) == 4
