"""pytest plugin: run the verification cases against a kernel module as ordinary pytest tests.

Registered through the `pytest11` entry point `mlaverify`, so installing mla-verify is enough:

    pytest --mla-impl=my_kernels                       # every op and model, "ci" profile
    pytest --mla-impl=path/to/kernels.py --mla-ops=sparse_decode,sparse_prefill \\
           --mla-profile=dev --mla-max-examples=50 --mla-seed=3 --mla-capabilities=flash_mla
    pytest --mla-impl=my_kernels -n auto                # pytest-xdist: the case list is deterministic

One test per case, named `mlaverify::<case id>` (select with -k as usual). A skipped case
(capability profile) is a pytest skip with the reason; a failing case shows the discrepancy of
every output and every failed behavioural check. With `--mla-replays DIR` each failing case is also
shrunk to a small case that fails alike and written to DIR as a replay file, as `mlaverify check
--out` does (`mlaverify replay DIR/<file>.json` re-runs it). Without `--mla-impl` the plugin does nothing.
Under pytest-xdist on a machine with several GPUs, worker gwN uses cuda:(N % device_count).
"""
from __future__ import annotations

import os

import pytest

from mlaverify.verify.cases import OPS


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mlaverify", "MLA kernel verification (mla-verify)")
    group.addoption("--mla-impl", default=None, metavar="MODULE",
                    help="module name or .py path exposing the FlashMLA API; enables the mlaverify tests")
    group.addoption("--mla-profile", default="ci", choices=("ci", "dev", "thorough"),
                    help="hypothesis settings profile for drawing cases (default: ci)")
    group.addoption("--mla-ops", default=None, metavar="OPS",
                    help=f"comma-separated ops (default: all of {','.join(OPS)})")
    group.addoption("--mla-models", default=None, metavar="MODELS", help="comma-separated model ids (default: all)")
    group.addoption("--mla-max-examples", type=int, default=None, metavar="N",
                    help="cases drawn per op and model, run after its few corner cases (default: the profile's)")
    group.addoption("--mla-seed", type=int, default=0, metavar="N", help="seed of the case generation (default 0)")
    group.addoption("--mla-capabilities", default=None, metavar="PROFILE",
                    help="capability profile: full or flash_mla (default: the module's own, else full)")
    group.addoption("--mla-device", default=None, metavar="DEVICE", help="torch device (default: cuda if available)")
    group.addoption("--mla-replays", default=None, metavar="DIR",
                    help="write a shrunk replay file for every failing case into DIR")


def _split(value: str | None) -> list[str] | None:
    return None if not value else [v.strip() for v in value.split(",") if v.strip()]


def _device(option: str | None) -> str:
    import torch

    if option:
        return option
    if not torch.cuda.is_available():
        return "cpu"
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if worker.startswith("gw") and worker[2:].isdigit():
        return f"cuda:{int(worker[2:]) % torch.cuda.device_count()}"
    return "cuda"


class MlaCaseFailure(Exception):
    """A case failed; the message is the discrepancy report."""


class MlaCaseItem(pytest.Item):
    def __init__(self, *, case, impl, tolerances, device, replays=None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.case, self.impl, self.tolerances, self.device = case, impl, tolerances, device
        self.replays = replays  # directory for replay files of failing cases, or None

    def runtest(self) -> None:
        from mlaverify.verify.runner import run_case

        result = run_case(self.impl, self.case, self.tolerances, self.device)
        if result.status == "skip":
            pytest.skip(result.reason)
        if result.status != "pass":
            lines = [f"{result.status}: {self.case.id}"]
            if not result.outputs:  # raised, wrong structure, or the engine could not prepare the case
                lines.append(f"reason: {result.reason}")
            lines += [f"  {m.message}" for m in result.outputs.values()]
            lines += [f"  check {c.name}: {'ok' if c.passed else c.reason}" for c in result.checks.values()]
            lines.append(f"case: {self.case.to_dict()}")
            if self.replays and result.status == "fail":
                lines.append(f"replay: {self._write_replay(result)}")
            raise MlaCaseFailure("\n".join(lines))

    def _write_replay(self, result) -> str:
        from mlaverify.verify.replay import shrink_case, write_replay

        shrunk = shrink_case(self.impl, result, self.tolerances, self.device)
        origin = result.id if shrunk.id != result.id else None
        return str(write_replay(self.replays, shrunk, self.impl.spec, shrunk_from=origin, device=str(self.device)))

    def repr_failure(self, excinfo, style=None):
        if isinstance(excinfo.value, MlaCaseFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self):
        return "mlaverify", None, f"mlaverify: {self.case.id}"


class MlaVerifyCollector(pytest.Collector):
    def collect(self):
        from mlaverify.verify.implementations import ImplementationError, load_implementation
        from mlaverify.verify.runner import generate_cases
        from mlaverify.verify.tolerances import load_tolerances

        opt = self.config.getoption
        device = _device(opt("--mla-device"))
        try:
            impl = load_implementation(opt("--mla-impl"), opt("--mla-capabilities"))
            tolerances = load_tolerances(self.config.rootpath / "pyproject.toml"
                                         if (self.config.rootpath / "pyproject.toml").is_file() else None)
            cases = generate_cases(_split(opt("--mla-ops")), _split(opt("--mla-models")), opt("--mla-profile"),
                                   opt("--mla-max-examples"), opt("--mla-seed"),
                                   "cpu" if device == "cpu" else "gpu")
        except (ImplementationError, ValueError) as exc:
            raise pytest.UsageError(f"mlaverify: {exc}") from exc
        for case in cases:
            yield MlaCaseItem.from_parent(self, name=case.id, case=case, impl=impl, tolerances=tolerances,
                                          device=device, replays=opt("--mla-replays"))


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list) -> None:
    if not config.getoption("--mla-impl"):
        return
    collector = MlaVerifyCollector.from_parent(session, name="mlaverify")
    items.extend(collector.collect())
