import pytest
import torch
from helpers import assert_backends_agree, assert_baseline_uses_more_memory, relative_error, run_tiny

from genscope.cli import main
from genscope.workloads import registry


def test_tiny_run_has_one_decode_phase_per_iteration_and_a_video():
    pipeline, request, gen, times = run_tiny("phenaki", steps=3)
    assert times.counts() == {"text_encoder": 1, "decode": 3, "decoder": 1}
    # 3 frames of 32x32 -> (1 + 1) x 4 x 4 = 32 tokens -> back to 3 frames
    assert gen.raw.shape == (1, 3, 3, 32, 32) and gen.raw.abs().max() <= 1
    assert len(gen.videos) == 1 and len(gen.videos[0]) == 3 and gen.videos[0][0].size == (32, 32)
    assert gen.info["tokens"].shape == (1, 32) and int(gen.info["tokens"].max()) < pipeline.config.mask_token_id


def test_seeded_runs_are_deterministic_and_seed_matters():
    a = run_tiny("phenaki", seed=3)[2]
    b = run_tiny("phenaki", seed=3)[2]
    c = run_tiny("phenaki", seed=4)[2]
    assert torch.equal(a.info["tokens"], b.info["tokens"]) and torch.equal(a.raw, b.raw)
    assert not torch.equal(a.info["tokens"], c.info["tokens"])


def test_baseline_and_flash_agree():
    # on the frames (Generation.raw) and on the first iteration's guided logits (independent of sampling)
    assert_backends_agree("phenaki")
    base = run_tiny("phenaki", attention="baseline")[2].info["first_logits"]
    flash = run_tiny("phenaki", attention="flash")[2].info["first_logits"]
    assert relative_error(base, flash) < 1e-5


def test_baseline_peak_memory_is_larger_at_long_sequence():
    # 7 frames of 64x64 -> 4 x 8 x 8 = 256 video tokens in one self-attention; one iteration
    assert_baseline_uses_more_memory("phenaki", frames=7, image_size=64, steps=1)


def test_attention_sites_kinds_and_layouts():
    """Spatial attention: [B*T, heads, h*w, d]; temporal: [B*h*w, heads, T, d], causal; transformer: all tokens."""
    from genscope.models.layers.attention import register_call_hook

    calls = []
    with register_call_hook(calls.append):
        pipeline, request, _, _ = run_tiny("phenaki", frames=5, image_size=32, steps=1)
    assert {c.site for c in calls} == set(pipeline.sites)
    kinds = {(s.path.split(".")[0], s.kind) for s in pipeline.sites}
    assert kinds == {("text_encoder", "self"), ("transformer", "self"), ("transformer", "cross"),
                     ("decoder", "temporal"), ("decoder", "self")}
    t, h, w = 3, 4, 4  # 5 frames -> 1 + 2 token frames; 32 px / 8 = 4
    temporal = [c for c in calls if c.path.startswith("decoder") and c.kind == "temporal"]
    spatial = [c for c in calls if c.path.startswith("decoder") and c.kind == "self"]
    assert temporal and all(c.is_causal and c.batch == h * w and c.query_len == t for c in temporal)
    assert spatial and all(not c.is_causal and c.batch == t and c.query_len == h * w for c in spatial)
    self_calls = [c for c in calls if c.path.startswith("transformer") and c.kind == "self"]
    assert {c.query_len for c in self_calls} == {t * h * w} and {c.batch for c in self_calls} == {2}


def test_cvivit_decoder_is_causal_in_time():
    """A later token frame never changes earlier frames; an earlier one changes later frames."""
    workload = registry.get("phenaki")
    decoder = workload.build(workload.config("tiny")).component("decoder")
    tokens = torch.randint(0, 64, (1, 3, 4, 4), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        frames = decoder(tokens)  # [1, 3, 5, 32, 32]: token frame 0 -> frame 0, token frame k -> frames 2k-1, 2k
        later = tokens.clone()
        later[:, 2] = (later[:, 2] + 1) % 64
        earlier = tokens.clone()
        earlier[:, 0] = (earlier[:, 0] + 1) % 64
        changed_later, changed_earlier = decoder(later), decoder(earlier)
    assert frames.shape == (1, 3, 5, 32, 32)
    assert torch.equal(changed_later[:, :, :3], frames[:, :, :3]) and not torch.equal(changed_later, frames)
    assert not torch.equal(changed_earlier[:, :, 3:], frames[:, :, 3:])


def test_paper_preset_lands_near_published_phenaki_counts():
    """Phenaki: 1.8B parameters (transformer + C-ViViT); T5-XXL encoder 4.6B; 11 frames at 128 px = 1,536 tokens."""
    workload = registry.get("phenaki")
    config = workload.config("paper")
    info = {c.name: c.params for c in workload.describe("paper")}
    assert abs((info["transformer"] + info["decoder"]) / 1.8e9 - 1) < 0.10  # built: 1.68 B
    assert abs(info["text_encoder"] / 4.6e9 - 1) < 0.10  # built: 4.76 B
    assert config.token_grid(config.frames, config.image_size) == (6, 16, 16)
    decoder = workload.build(config, device="meta").component("decoder")
    assert (len(decoder.spatial_blocks), len(decoder.temporal_blocks), decoder.config.hidden_size) == (4, 4, 512)


@pytest.mark.parametrize("argv, needle", [
    (["--frames", "4"], "frames must be 1 + 2k"),
    (["--frames", "9"], "up to 7"),
    (["--image-size", "36"], "multiple of 8"),
    (["--image-size", "128"], "up to 64"),
    (["--steps", "33"], "exceed the 32 video tokens"),
    (["--prompt", "word " * 20], "shorten the prompt"),
    (["--weights", "."], "no open weights"),
])
def test_bad_input_is_one_line_and_exit_2(argv, needle, capsys, tmp_path):
    assert main(["run", "phenaki", "--preset", "tiny", *argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_cli_run_writes_gif(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "phenaki", "--preset", "tiny", "--steps", "2", "--out", str(out)]) == 0
    assert (out / "phenaki-0.gif").read_bytes()[:6] == b"GIF89a"
