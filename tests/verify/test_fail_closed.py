"""Exit 0 means verified: every fault of an implementation, or of a run that verifies nothing, ends non-zero
with a message naming the case and a written report (issue: fail closed, on any machine)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlaverify.verify.cli import main
from mlaverify.verify.results import Report

FAULTY = str(Path(__file__).parent / "impls" / "faulty.py")
CLEAN = "mlaverify.verify.planted.clean"
ONE_OP = ["--ops", "sparse_prefill", "--models", "v32", "--max-examples", "1", "--quiet", "--no-shrink"]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def _report(path: Path) -> Report:
    return Report.from_json(path.read_text())


def _fault(monkeypatch, tmp_path, fault: str) -> None:
    monkeypatch.setenv("MLAVERIFY_TEST_FAULT", fault)
    monkeypatch.setenv("MLAVERIFY_TEST_ONCE", str(tmp_path / "faulted-once"))


@pytest.mark.parametrize("fault, reason", [
    ("exit0", "sys.exit(0)"),
    ("exit", "sys.exit(None)"),
    ("exitmsg", "sys.exit('kernel not available on this machine')"),
    ("osexit", "implementation exited with status 0 during the call"),
    ("abort", "was killed by SIGABRT during the call"),
    ("segv", "was killed by SIGSEGV during the call"),
    ("hang", "no result after 4 s"),
    ("keyboard", "KeyboardInterrupt"),
    ("meta", "expected a tensor on cpu (the inputs' device), got one on meta"),
])
def test_a_fault_during_the_call_fails_that_case_and_the_run_goes_on(tmp_path, monkeypatch, capsys, fault, reason):
    _fault(monkeypatch, tmp_path, f"{fault}@call")
    code = main(["check", "--impl", FAULTY, *ONE_OP, "--timeout", "4", "--out", "rep"])
    printed = capsys.readouterr().out
    assert code == 1
    report = _report(tmp_path / "rep" / "report.json")
    failed = [c for c in report.cases if c.status == "fail"]
    assert len(failed) == 1 and reason in failed[0].reason, [c.reason for c in report.cases]
    assert all(c.status == "pass" for c in report.cases if c is not failed[0])  # the next cases ran, in a new worker
    assert f"FAIL {failed[0].id}" in printed and reason in printed
    assert report.settings["isolation"] == "subprocess" and report.verdict == "FAIL"
    assert (tmp_path / "rep" / "junit.xml").is_file()


@pytest.mark.parametrize("fault, words", [
    ("exit0", "called sys.exit(0)"), ("exit", "called sys.exit(None)"), ("exitmsg", "called sys.exit('kernel"),
    ("osexit", "exited with status 0 while being imported"), ("abort", "killed by SIGABRT while being imported"),
    ("segv", "killed by SIGSEGV while being imported"),
])
def test_a_fault_at_import_is_a_set_up_error_with_a_report(tmp_path, monkeypatch, capsys, fault, words):
    monkeypatch.setenv("MLAVERIFY_TEST_FAULT", f"{fault}@import")
    for command in (["check"], ["baseline", "-o", "base.json"]):
        assert main([*command, "--impl", FAULTY, *ONE_OP, "--json", "run.json"]) == 2
        captured = capsys.readouterr()
        assert words in captured.err
        report = _report(tmp_path / "run.json")
        assert report.run_status == "aborted" and words in report.fatal and report.verdict == "ABORTED"
    assert not (tmp_path / "base.json").exists()


def test_in_process_mode_catches_sys_exit_too(tmp_path, monkeypatch):
    _fault(monkeypatch, tmp_path, "exit0@call")
    assert main(["check", "--impl", FAULTY, *ONE_OP, "--in-process", "--json", "run.json"]) == 1
    report = _report(tmp_path / "run.json")
    assert report.settings["isolation"] == "in-process"
    assert sum(c.status == "fail" for c in report.cases) == 1


def test_ctrl_c_writes_the_cases_done_so_far_and_exits_130(tmp_path):
    env = dict(os.environ, MLAVERIFY_TEST_FAULT="hang@call", MLAVERIFY_TEST_ONCE=str(tmp_path / "once"))
    proc = subprocess.Popen([sys.executable, "-m", "mlaverify.verify.cli", "check", "--impl", FAULTY, *ONE_OP,
                             "--timeout", "600", "--out", "rep"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "once").exists() and time.monotonic() < deadline:  # the first call has started
        time.sleep(0.2)
    assert (tmp_path / "once").exists(), proc.communicate(timeout=60)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    report = _report(tmp_path / "rep" / "report.json")
    assert report.run_status == "interrupted" and report.verdict == "INTERRUPTED"
    assert "INTERRUPTED" in out


def test_nothing_verified_exits_3(tmp_path, capsys):
    # every case skipped: a profile that claims nothing here (flash_mla runs on CUDA only) ...
    assert main(["check", "--impl", CLEAN, *ONE_OP, "--capabilities", "flash_mla", "--json", "r.json"]) == 3
    assert "NOT VERIFIED: all" in capsys.readouterr().out and _report(tmp_path / "r.json").verdict == "NOT VERIFIED"
    assert main(["check", "--impl", CLEAN, *ONE_OP, "--capabilities", "flash_mla", "--allow-skips"]) == 0
    # ... or ops the module does not have
    assert main(["check", "--impl", FAULTY, "--ops", "sparse_decode", "--max-examples", "1", "--quiet"]) == 3
    # no case selected at all
    assert main(["check", "--impl", CLEAN, "--ops", "sparse_prefill", "--preset", "v32", "--quiet"]) == 3
    assert "no case was selected" in capsys.readouterr().out
    assert main(["check", "--impl", CLEAN, "--ops", "sparse_prefill", "--preset", "v32", "--quiet",
                 "--allow-empty"]) == 0


def test_a_skip_only_baseline_gates_nothing(tmp_path, capsys):
    skipped = ["--impl", CLEAN, *ONE_OP, "--capabilities", "flash_mla"]
    assert main(["baseline", *skipped, "-o", "base.json"]) == 3  # refused: it could gate nothing
    assert not (tmp_path / "base.json").exists()
    assert main(["check", *skipped, "--json", "skips.json", "--allow-skips"]) == 0
    # a hand-made skip-only baseline: the gate compares nothing and says so
    assert main(["gate", "--baseline", "skips.json", *skipped]) == 3
    assert "NOT VERIFIED" in capsys.readouterr().out


def test_a_baseline_of_another_implementation_is_refused(tmp_path, capsys):
    assert main(["baseline", "--impl", CLEAN, *ONE_OP, "--in-process", "-o", "base.json"]) == 0
    bug = "mlaverify.verify.planted.prefill_lse_base2"
    assert main(["gate", "--baseline", "base.json", "--impl", bug, *ONE_OP]) == 2
    err = capsys.readouterr().err
    assert CLEAN in err and bug in err and "--allow-impl-change" in err
    assert main(["check", "--impl", bug, *ONE_OP, "--in-process", "--json", "bug.json"]) == 1
    assert main(["gate", "--baseline", "base.json", "--report", "bug.json"]) == 2


def test_merge_refuses_shards_of_different_runs(tmp_path, capsys):
    common = ["check", "--impl", CLEAN, *ONE_OP, "--in-process"]
    assert main([*common, "--shard", "1/2", "--seed", "1", "--json", "a.json"]) in (0, 3)
    assert main([*common, "--shard", "2/2", "--seed", "2", "--json", "b.json"]) in (0, 3)
    assert main(["merge", "a.json", "b.json", "-o", "m.json"]) == 2
    assert "different seed" in capsys.readouterr().err


@pytest.mark.parametrize("argv, words", [
    (["check", "--impl", CLEAN, "--device", "cuda"], "no CUDA device"),
    (["check", "--impl", CLEAN, "--device", "tpu"], "expected cpu, cuda or cuda:N"),
    (["check", "--imp", CLEAN], "required: --impl"),  # no abbreviations
    (["check", "--impl", CLEAN, "--tolerance", "sparse_decode.out.atol=inf"], "finite"),
    (["check", "--impl", CLEAN, "--tolerance", "sparse_decode.out.atol=nan"], "finite"),
    (["check", "--impl", CLEAN, "--timeout", "0"], "--timeout"),
    (["check", "--impl", CLEAN, "--out", "a-file"], "existing file"),
    (["gate", "--baseline", "base.json", "--impl", CLEAN, "--max-regression-factor", "inf"], "finite number"),
])
def test_bad_options_fail_before_any_case(tmp_path, capsys, argv, words):
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "base.json").write_text(Report(cases=[]).to_json())
    start = time.monotonic()
    assert main(argv) == 2
    assert words in capsys.readouterr().err
    assert time.monotonic() - start < 10  # refused at once, nothing ran
    assert not (tmp_path / "mlaverify-report.json").exists()


def test_impl_name_is_found_in_the_current_folder_and_a_file_imports_its_neighbours(tmp_path):
    (tmp_path / "helpers_beside.py").write_text("from mlaverify.reference import flash_mla_sparse_fwd\n")
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "my_port.py").write_text("from helpers_beside2 import flash_mla_sparse_fwd\n")
    (sub / "helpers_beside2.py").write_text("from mlaverify.reference import flash_mla_sparse_fwd\n")
    (tmp_path / "my_kernels.py").write_text("from helpers_beside import flash_mla_sparse_fwd\n")
    assert main(["check", "--impl", "my_kernels", *ONE_OP, "--json", "a.json"]) == 0
    assert main(["check", "--impl", str(sub / "my_port.py"), *ONE_OP, "--json", "b.json"]) == 0
    assert main(["check", "--impl", "my_kernels", *ONE_OP, "--in-process", "--json", "c.json"]) == 0


def test_help_does_not_import_torch():
    code = ("import sys, io, contextlib\nfrom mlaverify.verify.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n    assert main(['--help']) == 0\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_replay_dir_of_an_older_run_is_replaced(tmp_path):
    old = tmp_path / "rep" / "replays"
    old.mkdir(parents=True)
    (old / "sparse_decode__v32__stale.json").write_text(json.dumps({"stale": True}))
    assert main(["check", "--impl", "mlaverify.verify.planted.prefill_lse_base2", *ONE_OP, "--in-process",
                 "--out", "rep"]) == 1
    names = sorted(p.name for p in old.iterdir())
    assert names and "sparse_decode__v32__stale.json" not in names
