"""Device specs, measured ceilings (cache), the roofline study, Table I derivation, CLI errors, report sections."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from genscope.cli import main
from genscope.errors import UserError
from genscope.hardware import measure
from genscope.hardware.specs import SPECS, get_spec
from genscope.studies.roofline import Ceiling, roofline_points, run_roofline


def test_specs_cite_every_value_and_aliases_resolve():
    assert set(SPECS) == {"A100-80GB", "H100", "H200"}
    for spec in SPECS.values():
        for key in (*spec.peak_flops_per_s, "bandwidth"):
            assert spec.sources.get(key), (spec.name, key)
    assert get_spec("a100") is SPECS["A100-80GB"] and get_spec("H100-SXM") is SPECS["H100"]
    a100 = get_spec("A100-80GB")
    assert a100.peak("fp16") == 312e12 and a100.bandwidth_bytes_per_s == 2039e9
    assert a100.ridge_flops_per_byte("float16") == pytest.approx(312e12 / 2039e9)


def test_unknown_spec_is_a_user_error_listing_known_names(capsys):
    with pytest.raises(UserError, match="A100-80GB, H100, H200"):
        get_spec("V100")
    assert main(["roofline", "--device-spec", "nope", "--no-store"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "A100-80GB" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("spec", list(SPECS))
def test_attainable_is_min_of_peak_and_intensity_times_bandwidth(spec):
    s = get_spec(spec)
    peak, bw = s.peak("bfloat16"), s.bandwidth_bytes_per_s
    ridge = peak / bw
    for intensity in (0.5, ridge / 3, ridge, 3 * ridge, 1e5):
        assert s.attainable_flops_per_s(intensity, "bfloat16") == min(peak, intensity * bw)
    assert s.attainable_flops_per_s(ridge / 2, "bfloat16") == pytest.approx(peak / 2)  # memory roof
    assert s.attainable_flops_per_s(ridge * 2, "bfloat16") == peak  # compute roof


def test_roofline_study_on_tiny_presets():
    result = run_roofline(["stable-diffusion", "llama"], preset="tiny", spec="H100", dtype="float16",
                          measured=False)
    points, workloads = result.tables["points"], result.tables["workloads"]
    assert set(points["definition"]) == {"params", "moved"}
    expected = points.apply(lambda r: min(r["peak_flops_per_s"], r["intensity_flops_per_byte"]
                                          * r["bandwidth_bytes_per_s"]), axis=1)
    assert (points["attainable_flops_per_s"] == expected).all()
    assert ((points["bound"] == "memory") == (points["intensity_flops_per_byte"] < points["ridge_flops_per_byte"])).all()
    w = workloads.set_index("workload")
    for name in ("stable-diffusion", "llama"):
        assert w.loc[name, "ai_params_flops_per_byte"] == pytest.approx(
            w.loc[name, "flops_per_image"] / w.loc[name, "param_bytes"])
        assert w.loc[name, "param_bytes"] == 2 * w.loc[name, "params"]  # float16
    # an LLM's decode phase reads its weights for a few FLOPs each: memory-bound on any GPU
    decode = points[(points["workload"] == "llama") & (points["scope"] == "decode")]
    assert len(decode) and (decode["bound"] == "memory").all()


def test_roofline_points_from_a_fake_count():
    class Fake:
        workload, preset, dtype = "toy", "tiny", "float16"
        summary = {"flops_per_image": 1e12, "flops": 1e12, "bytes": 1e10, "params": 5e8, "param_bytes": 1e9,
                   "ai_flops_per_param_byte": 1000.0, "ai_flops_per_byte_moved": 100.0}
        tables = {"phases": pd.DataFrame({"phase": ["x"], "flops": [1e12], "bytes": [1e10],
                                          "flops_per_image": [1e12]})}

    ceiling = Ceiling("dev", peak_flops_per_s=1e14, bandwidth_bytes_per_s=1e12, source="test")
    points = roofline_points([Fake()], [ceiling])
    by = points.set_index(["scope", "definition"])
    assert by.loc[("total", "params"), "attainable_flops_per_s"] == 1e14  # 1000 x 1e12 > peak
    assert by.loc[("total", "moved"), "attainable_flops_per_s"] == 1e14  # ridge is 100: exactly at it
    assert by.loc[("x", "moved"), "bound"] == "compute"


def test_measured_ceilings_are_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("GENSCOPE_HOME", str(tmp_path))
    calls = []

    def fake_matmul(device, dtype, repeat=5):
        calls.append(dtype)
        return 1e11, {"n": 64, "times_s": [0.1]}

    monkeypatch.setattr(measure, "measure_matmul", fake_matmul)
    monkeypatch.setattr(measure, "measure_copy", lambda device: (2e10, {"bytes": 1, "times_s": [0.1]}))
    first = measure.measure_ceilings("cpu")
    second = measure.measure_ceilings("cpu")
    assert len(calls) == 2  # float32 + bfloat16 measured once, then read from the cache
    assert second.peak_flops_per_s == first.peak_flops_per_s and second.bandwidth_bytes_per_s == 2e10
    assert list(tmp_path.glob("ceilings-*.json"))
    assert second.peak("float16") == second.peak("bfloat16")  # CPU: fp16 falls back to the bf16 ceiling
    measure.measure_ceilings("cpu", refresh=True)
    assert len(calls) == 4


def test_copy_benchmark_measures_something():
    bandwidth, info = measure.measure_copy(measure.torch.device("cpu"), nbytes=4 * 2**20, repeat=3)
    assert bandwidth > 1e8 and info["bytes"] == 8 * 2**20 and len(info["times_s"]) == 3


def test_table_one_rows_for_stable_diffusion():
    from genscope.studies.taxonomy import classify, describe_workload, taxonomy_table

    row = describe_workload("stable-diffusion", "paper")
    assert row["attn_downsample_factors"] == [4, 2, 1]  # as Table I writes SD's "Attn Res"
    assert row["attn_resolutions"] == [64, 32, 16]
    assert row["channel_mult"] == [1, 2, 4, 4] and row["res_blocks"] == 2
    assert row["heads"] == [8] and row["head_channels"] == [40, 80, 160]
    assert row["text_embed_dim"] == 768 and row["main_params"] == 859_520_964
    assert classify(5e12, 1e13, 1e14) == "Low" and classify(1e13, 1e13, 1e14) == "Medium"
    assert classify(None, 1, 2) == "not measured"
    tables = taxonomy_table(["stable-diffusion"], {"stable-diffusion": 8.3e13}, {"stable-diffusion": None})
    t = tables["taxonomy"].iloc[0]
    assert (t["compute_class"], t["memory_class"], t["latency_class"]) == ("Medium", "Low", "not measured")
    paper = tables["paper"].set_index("axis")
    assert bool(paper.loc["compute", "agrees"]) and bool(paper.loc["memory", "agrees"])


def test_report_sections_render_from_stored_runs(tmp_path):
    from genscope.report.analysis import flops_section, roofline_section, taxonomy_section
    from genscope.results.store import ResultsStore, RunRecord
    from genscope.studies.flops import count_workload
    from genscope.studies.taxonomy import taxonomy_table

    store = ResultsStore(tmp_path / "r.db")
    assert flops_section(store) == [] and roofline_section(store) == [] and taxonomy_section(store) == []
    count = count_workload("stable-diffusion", "tiny", dtype="float16")
    store.save_run(RunRecord("flops", "stable-diffusion", "tiny", count.settings, "meta", "float16",
                             count.tables))
    roof = run_roofline(["stable-diffusion"], preset="tiny", measured=False,
                        flops_results={"stable-diffusion": count})
    store.save_run(RunRecord("roofline", "suite", "tiny", {}, "meta", "float16", roof.tables))
    tax = taxonomy_table(["stable-diffusion"], {"stable-diffusion": 1e12}, {}, preset="tiny")
    store.save_run(RunRecord("taxonomy", "suite", "tiny", {}, "meta", "float16", tax))
    for fn in (flops_section, roofline_section, taxonomy_section):
        html = "\n".join(fn(store))
        assert "<table" in html and "stored run" in html
    assert "<img" in "\n".join(roofline_section(store))


def test_cli_roofline_json_tiny(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GENSCOPE_DB", str(tmp_path / "r.db"))
    assert main(["roofline", "--preset", "tiny", "--models", "stable-diffusion", "--no-measure", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["run_id"] is not None
    assert {p["device"] for p in payload["points"]} == {"A100-80GB"}
