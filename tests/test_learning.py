"""Does the loop learn? The quickstart as a user types it, with the margins measured over seeds (issue 29).

The default suite's check is cheaper and weaker
(tests/test_pipeline.py::test_sipf_update_learns_its_pairs_and_keeps_held_out_log_odds_and_accuracy: one update on
the suite's miniature recipe learns its pairs and costs neither held-out log odds nor accuracy). No recipe
smaller than the quickstart was found on which SIPF's lead over outcome feedback exceeds its noise (docs/RESULTS.md
section 9), so this one runs the quickstart itself (26.5-31.5 min on 2 cores of an AMD EPYC): `make test-slow`.
"""
from __future__ import annotations

import subprocess

import pytest

from conftest import ROOT
from test_console import SITF_RAY, user_env

# Margins below the smallest gain measured at today's defaults (train.lr=5e-4, M_0's cosine ending at epoch 50 of a
# 70-epoch cap): the quickstart as typed on seeds 0, 1, 2 and the untuned seed 3, AMD EPYC, test n = 1,000, one
# standard error ~1.4 points (docs/RESULTS.md section 11). This test runs seed 0, the default; its run there gave
# +2.8 over M_0, +0.1 over outcome and +0.9 strict over outcome, so the claim it guards is the weak one the figures
# support: SIPF gains over M_0 and does not end below outcome feedback. Seen failing at the defaults before
# 2026-12-07 (train.lr=1e-3: SIPF 0.4 below M_0 on seed 0, section 9).
MIN_GAIN_OVER_M0 = 1.5          # measured: +2.8, +3.2, +3.6, +4.6
MIN_GAIN_OVER_OUTCOME = 0.0     # measured: +0.1, +1.3, +1.6, +2.5
MIN_STRICT_GAIN_OVER_OUTCOME = 0.5   # measured: +0.9, +2.2, +2.6, +3.4


@pytest.mark.slow
def test_sipf_learns_and_beats_outcome_feedback_on_the_quickstart(tmp_path):
    from sitf_ray.runs.artifacts import read_json
    d = tmp_path / "quickstart"
    r = subprocess.run([SITF_RAY, "quickstart", "--out", str(d)], env=user_env(), cwd=ROOT, capture_output=True,
                       text=True, timeout=3600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = read_json(d / "results.json")
    sipf = res["iterations"]
    outcome = res["baselines"]["outcome"]["iterations"]
    pts = lambda its, key="accuracy": [round(100 * it[key], 1) for it in its]     # noqa: E731
    print(f"\n{d}\nSIPF {pts(sipf)} strict {pts(sipf, 'strict_accuracy')}\n"
          f"outcome {pts(outcome)} strict {pts(outcome, 'strict_accuracy')}")
    assert sipf[-1]["n"] >= 1000
    assert pts(sipf)[-1] >= pts(sipf)[0] + MIN_GAIN_OVER_M0
    assert pts(sipf)[-1] > pts(outcome)[-1] + MIN_GAIN_OVER_OUTCOME
    assert pts(sipf, "strict_accuracy")[-1] >= pts(outcome, "strict_accuracy")[-1] + MIN_STRICT_GAIN_OVER_OUTCOME
