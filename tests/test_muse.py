from dataclasses import replace

import pytest
import torch
from helpers import assert_backends_agree, assert_baseline_uses_more_memory, relative_error, run_tiny

from genscope.cli import main
from genscope.workloads import registry
from genscope.workloads.base import RunSettings
from genscope.workloads.phases import record_phases


def run_preset(preset: str, **overrides):
    """Like helpers.run_tiny, for any preset, and with ``weights`` passed to the build."""
    workload = registry.get("muse")
    request = workload.request(replace(RunSettings(preset=preset), **overrides))
    pipeline = workload.build(workload.config(preset), request.device, request.dtype, request.weights)
    with record_phases() as times:
        generation = pipeline(request)
    return pipeline, request, generation, times


def test_tiny_run_has_one_decode_phase_per_iteration_and_an_image():
    pipeline, request, gen, times = run_tiny("muse", steps=3)
    assert times.counts() == {"text_encoder": 1, "decode": 3, "decoder": 1}
    assert gen.images[0].size == (request.image_size, request.image_size)
    assert gen.raw.shape == (1, 3, 64, 64) and gen.raw.abs().max() <= 1
    # 64 px / f8 (tiny's VQ) = 8x8 tokens; after the last iteration no token is masked, every id is a real code
    codebook = pipeline.config.codebook_size
    assert gen.info["tokens"].shape == (1, 64) and int(gen.info["tokens"].max()) < codebook


def test_seeded_runs_are_deterministic_and_seed_matters():
    a = run_tiny("muse", seed=1)[2]
    b = run_tiny("muse", seed=1)[2]
    c = run_tiny("muse", seed=2)[2]
    assert torch.equal(a.info["tokens"], b.info["tokens"]) and torch.equal(a.raw, b.raw)
    assert not torch.equal(a.info["tokens"], c.info["tokens"])


def test_baseline_and_flash_agree():
    # on the pixels (sampling is seeded; a flip of a sampled token would show as a large error here) ...
    assert_backends_agree("muse")
    # ... and on the guided logits of the first iteration, which do not depend on sampling at all
    base = run_tiny("muse", attention="baseline")[2].info["first_logits"]
    flash = run_tiny("muse", attention="flash")[2].info["first_logits"]
    assert relative_error(base, flash) < 1e-5


def test_baseline_peak_memory_is_larger_at_long_sequence():
    # 256 px -> 32x32 = 1,024 image tokens (tiny's f8 VQ); one iteration
    assert_baseline_uses_more_memory("muse", image_size=256, steps=1)


def test_every_attention_goes_through_the_entry_point_with_its_kind():
    from genscope.models.layers.attention import register_call_hook

    calls = []
    with register_call_hook(calls.append):
        pipeline, _, _, _ = run_tiny("muse", steps=2)
    assert {c.site for c in calls} == set(pipeline.sites)
    kinds = {(s.path.split(".")[0], s.kind) for s in pipeline.sites}
    assert kinds == {("text_encoder", "self"), ("transformer", "self"), ("transformer", "cross")}
    # every transformer call sees all 64 image tokens (the sequence length is constant across iterations);
    # with guidance the batch is [uncond; cond]
    tr = [c for c in calls if c.path.startswith("transformer")]
    assert {c.query_len for c in tr} == {64} and {c.batch for c in tr} == {2}
    assert {c.key_len for c in tr if c.kind == "cross"} == {pipeline.config.text_len}


def test_amused_tiny_runs_through_uvit():
    pipeline, request, gen, times = run_preset("amused-tiny", steps=2)
    assert type(pipeline.component("transformer")).__name__ == "UVit2DModel"
    assert times.counts() == {"text_encoder": 1, "decode": 2, "decoder": 1}
    assert gen.raw.shape == (1, 3, 128, 128)
    assert {s.kind for s in pipeline.sites if s.path.startswith("transformer")} == {"self", "cross"}


def test_amused_weights_folder_loads_safetensors_and_reproduces_the_output(tmp_path):
    """A diffusers AmusedPipeline-layout folder saved with safetensors loads and gives the built output."""
    pipeline, _, gen, _ = run_preset("amused-tiny", steps=2)
    for name, folder in (("text_encoder", "text_encoder"), ("transformer", "transformer"), ("decoder", "vqvae")):
        pipeline.component(name).save_pretrained(tmp_path / folder, safe_serialization=True)
    assert not list(tmp_path.rglob("*.bin"))
    loaded_pipeline, _, loaded, _ = run_preset("amused-tiny", steps=2, weights=str(tmp_path))
    # the loaded modules are the folder's, not rebuilt ones (a changed weight changes the output) ...
    assert loaded_pipeline.component("transformer") is not pipeline.component("transformer")
    assert torch.equal(loaded.info["tokens"], gen.info["tokens"])
    assert (loaded.raw - gen.raw).abs().max() < 1e-5
    with torch.no_grad():
        loaded_pipeline.component("decoder").decoder.conv_out.bias.add_(0.5)
    request = registry.get("muse").request(RunSettings(preset="amused-tiny", steps=2, weights=str(tmp_path)))
    changed = loaded_pipeline(request)
    assert (changed.raw - gen.raw).abs().max() > 1e-3


def test_paper_preset_lands_near_published_muse_counts():
    """Muse-3B base: Table I of the characterization paper (3B, 48 layers, dim 2048); T5-XXL 4.6B (Muse)."""
    workload = registry.get("muse")
    info = {c.name: c.params for c in workload.describe("paper")}
    assert abs(info["transformer"] / 3.0e9 - 1) < 0.10  # built: 3.26 B
    assert abs(info["text_encoder"] / 4.6e9 - 1) < 0.10  # built: 4.76 B (T5 v1.1 XXL encoder)
    transformer = workload.build(workload.config("paper"), device="meta").component("transformer")
    assert len(transformer.transformer_blocks) == 48 and transformer.config.hidden_size == 2048
    assert transformer.config.codebook_size == 8192 and transformer.config.grid_size == (1, 16, 16)


def test_amused_512_preset_is_the_published_config():
    """Reference built directly with diffusers/transformers from amused/amused-512's published configs."""
    from diffusers import UVit2DModel, VQModel

    with torch.device("meta"):
        ref_transformer = UVit2DModel.from_config({  # amused-512 transformer/config.json
            "attention_dropout": 0.0, "block_num_heads": 12, "block_out_channels": 768, "codebook_size": 8192,
            "cond_embed_dim": 768, "downsample": True, "encoder_hidden_size": 768, "hidden_dropout": 0.0,
            "hidden_size": 1024, "in_channels": 768, "intermediate_size": 2816, "layer_norm_eps": 1e-06,
            "ln_elementwise_affine": True, "micro_cond_embed_dim": 1280, "micro_cond_encode_dim": 256,
            "num_attention_heads": 16, "num_hidden_layers": 22, "num_res_blocks": 3, "sample_size": 32,
            "upsample": True, "use_bias": False, "vocab_size": 8256})
        ref_vq = VQModel.from_config({  # amused-512 vqvae/config.json
            "act_fn": "silu", "block_out_channels": [128, 256, 256, 512, 768],
            "down_block_types": ["DownEncoderBlock2D"] * 5, "in_channels": 3, "latent_channels": 64,
            "layers_per_block": 2, "lookup_from_codebook": True, "mid_block_add_attention": False,
            "norm_num_groups": 32, "norm_type": "group", "num_vq_embeddings": 8192, "out_channels": 3,
            "sample_size": 32, "scaling_factor": 0.18215, "up_block_types": ["UpDecoderBlock2D"] * 5,
            "vq_embed_dim": None, "force_upcast": True})
    workload = registry.get("muse")
    pipeline = workload.build(workload.config("amused-512"), device="meta")
    info = {c.name: c.params for c in pipeline.components}
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert info["transformer"] == n(ref_transformer) == 608_257_792
    assert n(pipeline.component("decoder")) == n(ref_vq) == 146_244_675  # aMUSEd paper: VQ-GAN 146M
    assert info["text_encoder"] == 123_650_304  # CLIP-L/14 text tower + projection
    assert abs(sum(info.values()) / 808e6 - 1) < 0.10  # model card: amused-512 808M; built 819 M


@pytest.mark.parametrize("argv, needle", [
    (["--preset", "tiny", "--image-size", "100"], "multiple of 8"),
    (["--preset", "tiny", "--image-size", "512"], "up to 256"),
    (["--preset", "amused-tiny", "--image-size", "48"], "multiple of 32"),
    (["--preset", "tiny", "--steps", "65"], "exceed the 64 image tokens"),
    (["--preset", "tiny", "--frames", "3"], "video workloads only"),
    (["--preset", "tiny", "--prompt", "word " * 20], "shorten the prompt"),
    (["--preset", "tiny", "--weights", "."], "no open weights"),
    (["--preset", "nope"], "unknown preset"),
])
def test_bad_input_is_one_line_and_exit_2(argv, needle, capsys, tmp_path):
    if "--weights" in argv:  # a complete (but non-aMUSEd-preset) folder, so that the preset check is reached
        for sub in ("text_encoder", "transformer", "vqvae"):
            (tmp_path / sub).mkdir()
            (tmp_path / sub / "config.json").write_text("{}")
            (tmp_path / sub / "model.safetensors").write_bytes(b"")
        argv = [a if a != "." else str(tmp_path) for a in argv]
    assert main(["run", "muse", *argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_cli_run_writes_png(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "muse", "--preset", "tiny", "--steps", "2", "--out", str(out)]) == 0
    assert (out / "muse-0.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
