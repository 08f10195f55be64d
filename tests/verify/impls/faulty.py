"""An implementation that misbehaves on purpose, for the fail-closed tests (never a test module itself).

MLAVERIFY_TEST_FAULT = "<fault>@import" or "<fault>@call"; faults: exit0, exit, exitmsg, osexit, abort,
segv, hang, keyboard, meta. With "@call", MLAVERIFY_TEST_ONCE names a file: the first call faults and
creates it, later calls (in any process) are the reference's, so one case fails and the run goes on.
"""
import ctypes
import os
import sys
import time

import torch

import mlaverify.reference as _ref

_FAULT, _, _WHEN = os.environ.get("MLAVERIFY_TEST_FAULT", "none@call").partition("@")


def _fault() -> None:
    if _FAULT == "exit0":
        sys.exit(0)
    if _FAULT == "exit":
        sys.exit()
    if _FAULT == "exitmsg":
        sys.exit("kernel not available on this machine")
    if _FAULT == "osexit":
        os._exit(0)
    if _FAULT == "abort":
        os.abort()
    if _FAULT == "segv":
        ctypes.string_at(0)  # reads address 0: SIGSEGV
    if _FAULT == "hang":
        time.sleep(3600)
    if _FAULT == "keyboard":
        raise KeyboardInterrupt


if _WHEN == "import":
    _fault()


def _first_call() -> bool:
    marker = os.environ.get("MLAVERIFY_TEST_ONCE")
    if marker is None:
        return True
    if os.path.exists(marker):
        return False
    open(marker, "w").close()
    return True


def flash_mla_sparse_fwd(q, kv, indices, sm_scale, d_v=512, attn_sink=None, topk_length=None):
    if _WHEN == "call" and _first_call():
        if _FAULT == "meta":
            s_q, h_q = q.shape[:2]
            return (torch.empty(s_q, h_q, d_v, dtype=torch.bfloat16, device="meta"),
                    torch.empty(s_q, h_q, device="meta"), torch.empty(s_q, h_q, device="meta"))
        _fault()
    return _ref.flash_mla_sparse_fwd(q, kv, indices, sm_scale, d_v, attn_sink, topk_length)
