"""dit-temporal study: factorized spatial+temporal vs full 3-D attention on a Wan block."""

import pytest

from genscope.errors import UserError
from genscope.studies import dit_temporal

# wan tiny preset: 2 heads x 16, 1 layer, 12 text tokens, 32 x 64 pixels -> S = (32/16) * (64/16) = 8 tokens/frame
HEADS, HEAD_DIM, LAYERS, S, BATCH = 2, 16, 1, 8, 2


def test_bad_frames_are_refused():
    with pytest.raises(UserError, match="4k\\+1"):
        dit_temporal.Settings(frames=(1, 5, 8))


def test_flops_memory_and_crossover_match_closed_forms():
    frames = (1, 5, 9, 17, 33, 65)
    tables = dit_temporal.run(dit_temporal.Settings(preset="tiny", frames=frames, measure=True, time_preset="tiny",
                                                    time_frames=(5,), repeat=1))
    flops = tables["flops"].set_index(["mode", "frames"])
    dim = HEADS * HEAD_DIM
    for f in frames:
        lat = 1 + (f - 1) // 4
        n = lat * S
        full = 4 * BATCH * HEADS * n * n * HEAD_DIM * LAYERS  # QK^T + PV over all F*S tokens
        factorized = 4 * BATCH * dim * (lat * S * S + S * lat * lat) * LAYERS  # within frames + across frames
        assert flops.loc[("full", f), "attention_flops"] == full
        assert flops.loc[("factorized", f), "attention_flops"] == factorized
    memory = tables["memory"].set_index(["mode", "frames"])
    assert memory.loc[("full", 65), "baseline_largest_matrix_bytes"] == BATCH * HEADS * (17 * S) ** 2 * 2  # bf16
    assert (memory["flash_matrix_bytes"] == 0).all()
    # the crossover frame count: attention costs more than the rest from there on, less before
    cross = tables["crossover"].set_index("mode").loc["full"]
    assert cross["fit_max_relative_error"] < 1e-6
    full = tables["flops"][tables["flops"]["mode"] == "full"]
    above = full[full["frames"] >= cross["crossover_frames"]]
    below = full[full["frames"] < cross["crossover_frames"] - 4]
    assert (above["attention_share"] > 0.5).all() and (below["attention_share"] < 0.5).all()
    assert set(tables["time"]["mode"]) == {"full", "factorized"} and (tables["time"]["block_time_ms"] > 0).all()


def test_paper_models_similarity_matrix_sizes():
    models = dit_temporal.models_table(__import__("torch").bfloat16).set_index("model")
    assert models.loc["wan", "tokens"] == 21 * 30 * 52  # 81 frames -> 21 latent; 480x832 -> 30 x 52 patches
    assert models.loc["hunyuan-video", "tokens"] == 33 * 45 * 80 + 256  # 129 frames, 720x1280, + text
    assert models.loc["hunyuan-video", "baseline_matrix_bytes_per_head"] == 119_056 ** 2 * 2
