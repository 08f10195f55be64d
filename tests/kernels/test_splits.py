"""Split counts of compiled launches: whole waves of the target, from shapes only."""
from __future__ import annotations

import pytest

from mlaverify.kernels import _splits, sparse_decode
from mlaverify.kernels._targets import INTERPRETER, TARGETS


def test_one_short_row_fills_one_wave():
    # 8 programs (V32 b=2: 2 rows x 2 tokens... x 2 head tiles), 32 steps of 64: 16 splits fill 128 of 132 SMs
    assert _splits.whole_wave_splits(8, (2048,), 64, 132, 64) == 16


def test_a_full_batch_is_not_split():
    assert _splits.whole_wave_splits(512, (2048,), 64, 132, 64) == 1  # 3.9 waves already


def test_makespan_is_minimal_and_ties_take_fewer_splits():
    programs, lengths, block, slots = 40, (128, 1024), 64, 132
    best = _splits.whole_wave_splits(programs, lengths, block, slots, 64)

    def makespan(s):
        return -(-programs * s // slots) * (_splits.steps(lengths, s, block) + _splits.OVERHEAD_STEPS)

    shortest = min(makespan(s) for s in range(1, 65))
    assert makespan(best) <= shortest * (1 + _splits.SLACK)
    assert all(makespan(s) > shortest * (1 + _splits.SLACK) for s in range(1, best))  # no fewer splits is as good


def test_a_percent_of_wave_quantization_is_not_worth_nine_splits():
    # dense-long with 32-row tiles (hi + lo): 512 programs, 1024 steps; 9 splits would be 1% shorter
    assert _splits.whole_wave_splits(512, (32768,), 32, 132, 64) == 1


def test_each_list_is_cut_on_its_own():
    assert _splits.steps((128, 512), 8, 64) == 1 + 1  # 16 -> one step, 64 -> one step
    assert _splits.steps((128, 0), 1, 64) == 2  # an empty list costs nothing


def test_splits_never_exceed_the_steps_or_the_cap():
    assert _splits.whole_wave_splits(1, (100,), 64, 132, 64) == 2  # two steps: two splits at most
    assert _splits.whole_wave_splits(1, (1 << 20,), 64, 132, 8) <= 8


@pytest.mark.parametrize("bad", [dict(programs=0), dict(slots=0), dict(block=0), dict(max_splits=0)])
def test_bad_arguments_are_refused_by_name(bad):
    args = dict(programs=1, list_lengths=(64,), block=64, slots=1, max_splits=1) | bad
    with pytest.raises(ValueError, match="whole_wave_splits"):
        _splits.whole_wave_splits(**args)


def test_sparse_decode_uses_whole_waves_compiled_and_its_own_rule_interpreted():
    h200 = TARGETS["sm_90"]
    small = sparse_decode.choose_config(2, 2, 128, 2048, h200, list_lengths=(2048,))
    assert small.num_splits * 2 * 2 * 2 <= 132 and small.num_splits >= 8  # one wave, well filled
    assert sparse_decode.choose_config(128, 2, 128, 2048, h200).num_splits == 1
    interp = sparse_decode.choose_config(2, 2, 16, 64 * 8, INTERPRETER)
    assert interp.num_splits == 2  # 2 waves of 4 slots at 4 programs... capped by 4 steps per split
