"""The root-cause ranking: the feature that explains the failures comes first, coincidences after it."""
from __future__ import annotations

from scipy.stats import fisher_exact

from mlaverify.verify.cases import Case
from mlaverify.verify.root_cause import explains_all, feature_kind, leading, rank_features, summary_line
from tests.verify.report_fixtures import decode, result, sink_report


def test_feature_kind_parses_modes_numbers_and_flags():
    assert feature_kind("sink:pos_inf") == ("sink", "pos_inf")
    assert feature_kind("topk128") == ("topk", 128)
    assert feature_kind("xpb2") == ("xpb", 2)
    assert feature_kind("topk>seq") == ("topk>seq", None)
    assert feature_kind("extra") == ("extra", None)


def test_the_feature_behind_every_failure_ranks_first():
    ranked = rank_features(sink_report().cases)
    top = ranked[0]
    # the union of the failing sink modes: 4/4 with, 0/11 without; the op-scoped kind picks the same cases
    assert top.label == "sink finite/+inf" and top.same_as == ("sparse_decode: sink finite/+inf",)
    assert (top.fail_with, top.n_with, top.fail_without, top.n_without) == (4, 4, 0, 11)
    assert explains_all(top)
    assert top.p_value == fisher_exact([[4, 0], [0, 11]], alternative="greater")[1]
    assert summary_line(ranked).startswith("sink finite/+inf: 4/4 failed with, 0/11 without")
    # top-k 32 holds 2 failures and 2 passes: ranked below, and marked as adding nothing to the sink line
    topk = next(a for a in ranked if "topk" in a.label)
    assert ranked.index(topk) > 0 and topk.p_value > top.p_value
    assert topk.covered_by == top.label
    assert leading(ranked) == [top]


def test_two_independent_causes_give_two_leading_lines():
    cases = [result(decode(i, sink="finite"), "fail", 9.0) for i in range(3)]
    cases += [result(decode(10 + i, topk=128), "fail", 9.0) for i in range(3)]
    cases += [result(decode(20 + i), "pass", 0.1) for i in range(6)]
    lines = leading(rank_features(cases))
    labels = [" = ".join((a.label,) + a.same_as) for a in lines]
    assert len(lines) == 2, labels
    assert all((a.fail_with, a.n_with, a.fail_without) == (3, 3, 3) for a in lines)
    assert any("sink finite" in x for x in labels) and any("topk >= 128" in x for x in labels)


def test_no_ranking_when_nothing_or_everything_failed():
    passing = [result(decode(i), "pass", 0.1) for i in range(3)]
    assert rank_features(passing) == []
    assert rank_features([result(decode(i), "fail", 5.0) for i in range(3)]) == []
    assert "no feature" in summary_line([])


def test_a_feature_shared_with_a_passing_op_is_scoped_to_the_failing_op():
    prefill = [result(Case(op="sparse_prefill", model="v32", s_q=2, h_q=8, s_kv=40, topk=16, sink="finite",
                           seed=30 + i), "pass", 0.1, index=(0, 1, 5)) for i in range(4)]
    top = rank_features(sink_report().cases + prefill)[0]
    assert top.label == "sparse_decode: sink finite/+inf"
    assert (top.fail_with, top.n_with, top.fail_without, top.n_without) == (4, 4, 0, 15)


def test_skipped_cases_are_not_counted():
    cases = [result(decode(0, sink="finite"), "fail", 9.0), result(decode(1), "pass", 0.1),
             result(decode(2, sink="finite"), "skip", 0.0)]
    top = rank_features(cases)[0]
    assert top.n_with + top.n_without == 2
