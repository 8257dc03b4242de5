"""After the paper (issue 18): the report section of the diffusion transformers, ``genscope models`` /
``describe`` on them, and their Table I rows."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import torch

from genscope.cli import main
from genscope.report.after_paper import after_paper_section
from genscope.report.html import render
from genscope.results.store import ResultsStore, RunRecord

EVIL = "<script>alert(1)</script>"
DITS = ("flux", "sd3", "wan", "cogvideox", "hunyuan-video")


def _page(store: ResultsStore) -> str:
    return "\n".join(after_paper_section(store))


def _breakdown(workload: str) -> dict[str, pd.DataFrame]:
    """Synthetic breakdown tables: baseline 100 ms (attention 60), flash 70 ms (attention 30)."""
    rows = [(workload, "baseline", "denoise", "Attention", 60.0), (workload, "baseline", "denoise", "Linear", 40.0),
            (workload, "flash", "denoise", "Attention", 30.0), (workload, "flash", "denoise", "Linear", 40.0)]
    class_time = pd.DataFrame(rows, columns=["workload", "attention", "phase", "op_class", "time_ms"])
    speedup = pd.DataFrame([{"workload": workload, "baseline_ms": 100.0, "flash_ms": 70.0, "e2e_speedup": 100 / 70,
                             "attention_speedup": 2.0, "attention_share_baseline": 0.6}])
    return {"class_time": class_time, "speedup": speedup}


@pytest.fixture(scope="module")
def real_store(tmp_path_factory):
    """Runs of the real studies at tiny scale (meta-device FLOP counts and traces: seconds)."""
    db = str(tmp_path_factory.mktemp("after") / "runs.db")
    for argv in (["flops", "flux", "--preset", "tiny"], ["flops", "wan", "--preset", "tiny"],
                 ["dit-temporal", "--preset", "tiny", "--frames", "1,5,9", "--image-sizes", "32,64"],
                 ["seqlen", "wan", "--preset", "tiny"], ["seqlen", "stable-diffusion", "--preset", "tiny"]):
        assert main([*argv, "--db", db, "--json"]) == 0
    store = ResultsStore(db)
    store.save_run(RunRecord("breakdown", "flux", "small", {}, "cpu", "float32", _breakdown("flux")))
    return store


def test_empty_store_lists_the_section_with_its_command(tmp_path):
    store = ResultsStore(str(tmp_path / "empty.db"))
    assert after_paper_section(store) == []
    store.save_run(RunRecord("unrelated", "stable-diffusion", "paper", {}, "meta", "float32",
                             {"t": pd.DataFrame([{"x": 1.0}])}))  # a store with runs, none of the DiTs
    assert after_paper_section(store) == []
    page = render(store, strict=True)
    assert "After the paper: diffusion transformers" in page and "genscope characterize" in page


@pytest.mark.slow
def test_section_from_real_runs(real_store, capsys):
    capsys.readouterr()
    page = _page(real_store)
    assert page.count('<img class="figure"') >= 5  # FLOPs, class shares, 3-D vs factorized, scaling, seqlen, Fig. 7
    # stored runs drawn; the missing ones named with the command that stores them
    assert "genscope flops sd3 --preset paper" in page and "genscope flops flux --preset paper" not in page
    assert "genscope profile wan --preset small" in page and "genscope profile flux --preset small" not in page
    assert "genscope seqlen" not in page  # both traces stored
    assert "<td>flux</td>" in page and "<td>wan</td>" in page
    # dit-temporal: full 3-D attention at 9 frames on the tiny Wan block (2 heads x 16, 1 layer, CFG batch 2,
    # 32x64 px -> 2x4 patches = 8 tokens per frame, 9 frames -> 3 latent frames -> 24 tokens): 4 B H n^2 d
    assert f"<td>{4 * 2 * 2 * 24 ** 2 * 16}</td>" in page
    # the models table: Wan 2.1 at 480x832, 81 frames -> 21 latent frames x 30 x 52 patches
    assert f"<td>{21 * 30 * 52}</td>" in page
    # every caption says these models are after the paper
    assert page.count("came after the paper") >= 5
    # the DiT's sequence length is constant: tiny wan's summary row has max/min 1.00
    assert re.search(r"<td>wan</td>\s*<td>\d+</td>\s*<td>\d+</td>\s*<td>16</td>\s*<td>16</td>\s*<td>1\.00</td>",
                     page), "wan's constant 16-token sequence"


def test_stored_strings_are_escaped_and_missing_parts_name_commands(tmp_path):
    store = ResultsStore(str(tmp_path / "evil.db"))
    summary = pd.DataFrame([{"flops_per_image": 3.0e15, "attention_flops": 1.5e15, "softmax_flops": 0.0,
                             "params": 12e9, "ai_flops_per_param_byte": 1.0, "ai_flops_per_byte_moved": 1.0,
                             "steps": 28}])
    classes = pd.DataFrame([{"op_class": "Attention", "flops": 1.5e15, "flops_per_image": 1.5e15, "share": 0.5},
                            {"op_class": "Linear", "flops": 1.5e15, "flops_per_image": 1.5e15, "share": 0.5}])
    store.save_run(RunRecord("flops", "flux", EVIL, {}, EVIL, "float32", {"summary": summary, "classes": classes}))
    page = _page(store)
    assert EVIL not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<td>3,000.000</td>" in page  # 3e15 FLOPs per image = 3,000 TFLOPs, from the store
    assert DIT_TEMPORAL_COMMAND_TEXT in page
    assert "genscope seqlen wan --preset paper" in page and "genscope seqlen stable-diffusion --preset paper" in page
    assert page.count('<img class="figure"') == 2  # FLOPs per image and class shares
    full = render(store, strict=True)  # the whole page builds
    assert "After the paper: diffusion transformers" in full and EVIL not in full


DIT_TEMPORAL_COMMAND_TEXT = "genscope dit-temporal --preset paper --image-sizes 240,480,720 --measure"


def test_models_lists_the_after_paper_suite(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    suites = {r["name"]: r["suite"] for r in rows}
    assert [n for n, s in suites.items() if s == "after-paper"] == list(DITS)
    assert sum(s == "paper" for s in suites.values()) == 8


def test_describe_works_on_a_dit(capsys):
    assert main(["describe", "flux", "--preset", "tiny", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert "FluxTransformer2DModel" in {c["class"] for c in info["components"]}
    assert info["params_total"] == sum(c["params"] for c in info["components"]) > 0


# Published configs (transformer/config.json of each model on the Hugging Face Hub):
# FLUX.1-dev: num_layers 19, num_single_layers 38, num_attention_heads 24, attention_head_dim 128;
# SD3.5-large: num_layers 38, num_attention_heads 38, attention_head_dim 64;
# Wan2.1-T2V-14B: num_layers 40, num_attention_heads 40, attention_head_dim 128;
# CogVideoX-5b: num_layers 42, num_attention_heads 48, attention_head_dim 64;
# HunyuanVideo: num_layers 20, num_single_layers 40, num_attention_heads 24, attention_head_dim 128.
PUBLISHED = {"flux": (19, 38, 24, 128), "sd3": (38, 0, 38, 64), "wan": (40, 0, 40, 128),
             "cogvideox": (42, 0, 48, 64), "hunyuan-video": (20, 40, 24, 128)}


@pytest.mark.slow
def test_taxonomy_rows_of_the_dits():
    from genscope.studies.taxonomy import describe_workload

    with torch.device("meta"):
        for name, (dual, single, heads, head_dim) in PUBLISHED.items():
            row = describe_workload(name, "paper")
            assert row["layers"] == dual + single, name
            assert row["heads"] == [heads] and row["head_channels"] == [head_dim], name
            assert row["model_dim"] == heads * head_dim, name
            assert row.get("layers_parts") == (f"{dual} + {single}" if single else None), name


def test_taxonomy_default_suite_is_the_papers_eight():
    from genscope.commands.common import workload_names

    assert not set(workload_names(None)) & set(DITS)
    assert workload_names(["flux", "wan"]) == ["flux", "wan"]
