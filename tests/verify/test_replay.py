"""Replay files: written for failures, JSON only, shrunk, and enough on their own to reproduce a failure."""
from __future__ import annotations

import json

import pytest
import torch

from mlaverify.verify import planted
from mlaverify.verify.cases import Case
from mlaverify.verify.cli import main
from mlaverify.verify.implementations import load_implementation
from mlaverify.verify.replay import (
    REPLAY_KIND, ReplayError, failure_signature, load_replay, replay_filename, shrink_case, write_replay,
)
from mlaverify.verify.results import tool_version
from mlaverify.verify.runner import run_case

# sink mixed across heads (finite, -inf, +inf), partial topk_length, two batch entries, strided q
SINK_CASE = Case(op="sparse_decode", model="model1", b=2, s_q=2, h_q=16, s_kv=96, topk=32, page_block_size=16,
                 topk_length="partial", sink="mixed", noncontiguous=True, seed=17)


@pytest.fixture(scope="module")
def sink_bug():
    return load_implementation(planted.module_for("sink_ignored"), "full")


@pytest.fixture(scope="module")
def failing(sink_bug):
    result = run_case(sink_bug, SINK_CASE, device="cpu")
    assert result.status == "fail"
    return result


def test_replay_file_is_plain_json_with_everything_needed(tmp_path, failing):
    path = write_replay(tmp_path, failing, "mlaverify.verify.planted.sink_ignored", device="cpu")
    assert path.name == replay_filename(SINK_CASE.id) and "/" not in path.name
    data = json.loads(path.read_text())  # plain JSON: no pickle, nothing to execute
    assert data["kind"] == REPLAY_KIND and data["schema_version"] == 1
    assert data["case"]["seed"] == data["seed"] == 17
    assert data["tool"]["version"] == tool_version()
    assert data["tolerances"]["out"] == {"atol": 1e-3, "rtol": 2.01 / 128, "cos": 5e-6,  # the fixed table ...
                                         "k": 2.0, "floor_rel": 2.0**-8, "cos_floor": 1e-6}  # ... and the budget
    assert data["implementation"] == "mlaverify.verify.planted.sink_ignored"
    replay = load_replay(path)
    assert replay.case == SINK_CASE and replay.status == "fail" and replay.tolerances == failing.tolerances


def test_replay_reproduces_the_failure_from_the_file_alone(tmp_path, failing, capsys):
    path = write_replay(tmp_path, failing, "mlaverify.verify.planted.sink_ignored")
    assert main(["replay", str(path), "--worst", "3"]) == 1  # the file names the implementation
    text = capsys.readouterr().out
    assert f"replay {SINK_CASE.id} against mlaverify.verify.planted.sink_ignored: fail" in text
    assert "out mismatch" in text and "worst elements of out:" in text
    # positions decoded: batch/query/head/dim, the quant tile, the dominating top-k slot and its page block
    assert "batch " in text and ", head " in text and ("quant tile" in text or "RoPE part" in text)
    assert "top-k slot" in text and "page block" in text
    # the same file against the clean reference passes
    assert main(["replay", str(path), "--impl", planted.CLEAN]) == 0


def test_replay_by_case_id(capsys):
    assert main(["replay", SINK_CASE.id, "--impl", "mlaverify.verify.planted.sink_ignored"]) == 1
    assert main(["replay", SINK_CASE.id]) == 2  # a bare id names no implementation
    assert main(["replay", "not/a-case", "--impl", planted.CLEAN]) == 2


def test_bad_replay_files_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"kind": "something-else"}))
    assert main(["replay", str(bad), "--impl", planted.CLEAN]) == 2
    with pytest.raises(ReplayError, match="kind"):
        load_replay(bad)
    garbled = tmp_path / "garbled.json"
    garbled.write_text("{not json")
    with pytest.raises(ReplayError, match="not JSON"):
        load_replay(garbled)


def test_shrinking_finds_a_smaller_case_failing_the_same_way(sink_bug, failing):
    shrunk = shrink_case(sink_bug, failing, device="cpu", max_attempts=40, time_limit_s=60)
    c = shrunk.case
    assert shrunk.status == "fail" and failure_signature(shrunk) & failure_signature(failing)
    assert c.sink != "none"  # the sink is what the bug ignores: it cannot be shrunk away
    assert (c.b, c.s_q, c.h_q) < (SINK_CASE.b, SINK_CASE.s_q, SINK_CASE.h_q) or c.topk < SINK_CASE.topk
    assert not c.noncontiguous and c.topk_length == "none"  # irrelevant features are dropped


def test_shrinking_keeps_a_passing_result(failing):
    clean = load_implementation(planted.module_for("clean"), "full")
    passing = run_case(clean, SINK_CASE, device="cpu")
    assert shrink_case(clean, passing, device="cpu") is passing


def test_check_writes_shrunk_replays(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["check", "--impl", "mlaverify.verify.planted.prefill_max_logits_unscaled", "--ops", "sparse_prefill",
                 "--models", "model1", "--max-examples", "1", "--quiet", "--out", str(out),
                 "--shrink-budget", "6"]) == 1
    files = sorted((out / "replays").glob("*.json"))
    assert files
    shrunk = [load_replay(f) for f in files if load_replay(f).shrunk_from]
    assert shrunk, "at least the first failure is shrunk"
    for replay in shrunk:
        original = Case.from_id(replay.shrunk_from)
        assert replay.case.h_q <= original.h_q and replay.case.s_q <= original.s_q


def test_worst_elements_rank_by_error_over_allowed_and_give_no_ulp_below_the_floor():
    from mlaverify.verify.replay_locate import worst_elements
    from mlaverify.verify.results import Tolerance

    ref = torch.full((100,), 0.5)
    ref[3] = 1e-30  # a rounding residue: its ulp error would be astronomical
    actual = ref.clone()
    actual[3] = 5e-4   # half of atol
    actual[7] = 0.504  # 0.51 of the relative allowance at 0.5
    rows = worst_elements(actual, ref, Tolerance(1e-3, 2.01 / 128), 2)
    assert [r["index"] for r in rows] == [(7,), (3,)]
    assert rows[0]["ulp"] is not None and rows[1]["ulp"] is None
    assert rows[1]["ratio"] == pytest.approx(0.5)
