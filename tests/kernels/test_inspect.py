

def test_mha_batch_rides_grid_axis_0_without_the_65535_cap():
    from mlaverify.kernels._inspect_cases import META
    from mlaverify.reference.mha_prefill import AttentionMask, MhaPrefillShapes

    batch = 70000  # more sequences than CUDA's 65,535 programs on grid axes 1 and 2
    shapes = MhaPrefillShapes(batch, batch, 2, 2, 192, 128, (1,) * batch, (1,) * batch)
    q = torch.empty(batch, 2, 192, dtype=torch.bfloat16, device=META)
    v = torch.empty(batch, 2, 128, dtype=torch.bfloat16, device=META)
    cu = torch.empty(batch + 1, dtype=torch.int32, device=META)
    launches, _ = mha_prefill.mha_forward_plan(q, q, v, cu, cu, shapes, 0.1, AttentionMask(None, 0), False,
                                               TARGETS["sm_90"])
    assert launches[0].grid == (batch, 2)
    lse = torch.empty(2, batch, dtype=torch.float32, device=META).T
    launches, _ = mha_prefill.mha_backward_plan(v, q, q, v, v, v, lse, cu, cu, shapes, 0.1, AttentionMask(None, 0),
                                                TARGETS["sm_90"])
    assert [launch.grid[0] for launch in launches[1:]] == [batch, batch]


def test_a_grid_past_cuda_limits_is_refused_before_launch():
    from mlaverify.kernels._launch import KernelLaunch

    with pytest.raises(ValueError, match="k: grid axis 1 needs 65536 programs, more than CUDA's limit of 65535"):
        KernelLaunch("k", None, (1, 65536), (), {})
