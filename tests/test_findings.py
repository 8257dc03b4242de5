"""Findings: every verdict rule on stored runs built to agree and to disagree with the papers."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from report_fixtures import synthetic_store

from genscope.findings import (
    BY_KEY,
    FINDINGS,
    NOT_MEASURED,
    NOT_REPRODUCED,
    PARTLY,
    REPRODUCED,
    UNSTABLE,
    Thresholds,
    evaluate,
    format_findings,
)
from genscope.findings.measures import is_u_shaped
from genscope.results.store import ResultsStore


@pytest.fixture(scope="module")
def agreeing(tmp_path_factory) -> pd.DataFrame:
    return evaluate(synthetic_store(tmp_path_factory.mktemp("agree") / "r.db", agree=True)).set_index("key")


@pytest.fixture(scope="module")
def disagreeing(tmp_path_factory) -> pd.DataFrame:
    return evaluate(synthetic_store(tmp_path_factory.mktemp("disagree") / "r.db", agree=False)).set_index("key")


@pytest.mark.parametrize("key", [r.key for r in FINDINGS])
def test_rule_reproduced_on_agreeing_runs(agreeing, key):
    row = agreeing.loc[key]
    assert row["verdict"] == REPRODUCED, (key, row["measured"], row["value"])


@pytest.mark.parametrize("key", [r.key for r in FINDINGS])
def test_rule_not_reproduced_on_disagreeing_runs(disagreeing, key):
    row = disagreeing.loc[key]
    assert row["verdict"] == NOT_REPRODUCED, (key, row["measured"], row["value"])


def test_measured_values_follow_the_stored_numbers(agreeing, disagreeing):
    # Table II: the fixture stores 1.05 x the paper's speedup (agree) and 0.8 (disagree)
    assert agreeing.loc["table2-stable-diffusion", "value"] == pytest.approx(1.67 * 1.05)
    assert disagreeing.loc["table2-stable-diffusion", "value"] == pytest.approx(0.8)
    # Figure 7: attention 15 ms of a 75 ms flash total (Other's 500 ms left out) = 20%
    assert agreeing.loc["attention-share-flash-diffusion", "value"] == pytest.approx(0.20)
    # Chen et al. Table 1: 1 - 525 / 1098
    assert agreeing.loc["chen-latency", "value"] == pytest.approx(1 - 525 / 1098)
    assert agreeing.loc["memory-d2n", "measured"] == "d^2n matches 3/3 levels, d^n 0/3"
    row = agreeing.loc["seqlen-step"]
    assert row["device"] == "meta" and row["preset"] == "paper" and row["source"].startswith("Golden et al. v2")
    assert agreeing.loc["table2-llama", "device"] == "cpu"


def test_unstable_measurement_is_reported_unstable(tmp_path):
    df = evaluate(synthetic_store(tmp_path / "u.db", agree=True, stable=False)).set_index("key")
    assert df.loc["table2-llama", "verdict"] == UNSTABLE and not df.loc["table2-llama", "stable"]
    # class shares read class_total, judged by the same run's speedup row
    assert df.loc["attention-share-flash-diffusion", "verdict"] == UNSTABLE
    assert df.loc["seqlen-step", "verdict"] == REPRODUCED  # analytical: no stable column -> unknown, judged
    assert df.loc["seqlen-step", "stable"] is None
    # the ablation's timings are unstable; its memory and weight sizes are not timings and are judged
    assert df.loc["chen-latency", "verdict"] == UNSTABLE
    assert df.loc["chen-tensor-memory", "verdict"] == REPRODUCED and df.loc["chen-tensor-memory", "stable"] is None
    assert df.loc["chen-winograd-weights", "verdict"] == REPRODUCED
    # single-run timings on a busy machine (temporal split, image scaling, prefill/decode) draw no conclusion;
    # the FLOP counts stored beside them do
    for key in ("temporal-time", "scaling-conv-vs-attention", "prefill-decode"):
        assert df.loc[key, "verdict"] == UNSTABLE, key
    for key in ("temporal-flops", "temporal-quadratic", "temporal-crossover"):
        assert df.loc[key, "verdict"] == REPRODUCED and df.loc[key, "stable"] is None, key
    stable = evaluate(synthetic_store(tmp_path / "s.db", agree=True, stable=True)).set_index("key")
    assert stable.loc["table2-llama", "verdict"] == REPRODUCED and stable.loc["table2-llama", "stable"] is True


def test_empty_store_is_not_measured(tmp_path):
    df = evaluate(ResultsStore(tmp_path / "e.db"))
    assert len(df) == len(FINDINGS) and set(df["verdict"]) == {NOT_MEASURED}
    text = format_findings(df)
    assert f"{len(FINDINGS)} not measured" in text


def test_partly_band():
    # Table II: within 15% of 1.67 reproduces; faster but further off is "partly"; slower is not reproduced
    t = BY_KEY["table2-stable-diffusion"].thresholds
    assert t.verdict(1.67 * 1.14) == REPRODUCED
    assert t.verdict(2.5) == PARTLY
    assert t.verdict(0.99) == NOT_REPRODUCED
    assert t.verdict(math.nan) == NOT_MEASURED and t.verdict(None) == NOT_MEASURED
    assert Thresholds((1, 2)).verdict(3) == NOT_REPRODUCED
    assert "reproduced if 1.4195 <= value <= 1.9205; partly if 1 <= value <= inf" in BY_KEY[
        "table2-stable-diffusion"].rule_text()


def test_every_rule_cites_the_paper_and_its_figure_or_table():
    for rule in FINDINGS:
        assert rule.source.startswith(("Golden et al. v2", "Chen et al. 2023")), rule.key
        assert any(w in rule.source for w in ("Fig.", "Table", "Sec.")), rule.key
        assert rule.paper_value and rule.value_meaning


def test_u_shape():
    assert is_u_shaped([4096, 1024, 256, 64, 256, 1024, 4096])
    assert is_u_shaped([16, 16, 4, 1, 4, 16])
    assert not is_u_shaped([1, 4, 16])  # only rising
    assert not is_u_shaped([16, 4, 16, 4])
    assert not is_u_shaped([77, 77, 77])


def test_format_findings_lists_every_claim(agreeing):
    text = format_findings(agreeing.reset_index())
    assert text.count(REPRODUCED) >= len(FINDINGS)
    assert f"findings: {len(FINDINGS)} reproduced" in text
