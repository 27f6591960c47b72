"""decoupled.AdamW under DDP and FSDP2 (DTensor parameters): two processes, gloo, CPU.

Each run checks, in the workers (tests/_dist_worker.py): decoupled.AdamW == torch.optim.AdamW
bitwise under the same wrapper and backend, and a torch.distributed.checkpoint save/load of
model + optimizer + schedule that resumes bitwise; and here: the distributed result equals a
single-process run on whole batches (up to the rounding of the gradient all-reduce).
"""

from __future__ import annotations

import socket
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(
        not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo is not available"
    ),
]

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def worker(monkeypatch):
    tests_dir = str(Path(__file__).parent)
    monkeypatch.syspath_prepend(tests_dir)  # the spawned processes import _dist_worker from here
    import _dist_worker

    return _dist_worker


def _spawn(worker, kind: str, out_dir: Path, timeout_s: float) -> None:
    """Run the workers; a worker's exception is re-raised here, a hang fails after ``timeout_s``.

    A worker killed by a signal fails the test, with the Python stack of every thread that the
    worker's faulthandler printed, unless every rank had already passed all of its checks
    (its done marker exists): then the crash was in torch's process-group teardown, which
    runs after our code is finished, and it is reported as a warning.
    """
    import torch.multiprocessing as mp

    context = mp.spawn(worker.run, args=(WORLD, _free_port(), kind, str(out_dir)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + timeout_s
    try:
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                for process in context.processes:
                    process.terminate()
                pytest.fail(f"the {kind} workers did not finish within {timeout_s:.0f} s")
    except mp.ProcessExitedException as crash:
        if not all(worker.done_marker(out_dir, kind, rank).exists() for rank in range(WORLD)):
            raise
        warnings.warn(f"{kind}: all checks passed, then torch's teardown crashed: {crash}", stacklevel=2)


@pytest.mark.parametrize("after_checks", [False, True])
def test_a_worker_killed_by_a_signal_fails_unless_every_check_had_passed(worker, tmp_path, after_checks) -> None:
    import torch.multiprocessing as mp

    aborting = SimpleNamespace(run=worker.abort, done_marker=worker.done_marker)
    kind = "crash-after-checks" if after_checks else "crash"
    if after_checks:
        with pytest.warns(UserWarning, match="all checks passed, then torch's teardown crashed.*SIGABRT"):
            _spawn(aborting, kind, tmp_path, timeout_s=60)
    else:
        with pytest.raises(mp.ProcessExitedException, match="SIGABRT"):
            _spawn(aborting, kind, tmp_path, timeout_s=60)


def _assert_matches_single_process(worker, out_dir: Path, kind: str, backend: str) -> None:
    distributed = torch.load(out_dir / f"{kind}_{backend}.pt", weights_only=True)
    single = worker.reference(backend)
    assert distributed.keys() == single.keys()
    start = worker.make_model().state_dict()
    for name, value in single.items():
        assert not torch.equal(value, start[name]), f"{name} did not train"
        torch.testing.assert_close(
            distributed[name], value, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{kind}/{backend} {n}: {m}"
        )


def test_ddp_matches_single_process_and_resumes_from_dcp(worker, tmp_path) -> None:
    _spawn(worker, "ddp", tmp_path, timeout_s=120)
    _assert_matches_single_process(worker, tmp_path, "ddp", "auto")


def test_fsdp2_dtensor_all_backends_and_dcp_resume(worker, tmp_path) -> None:
    pytest.importorskip("torch.distributed.fsdp", reason="FSDP2 needs torch >= 2.6")
    from torch.distributed import fsdp

    if not hasattr(fsdp, "fully_shard"):
        pytest.skip("torch.distributed.fsdp.fully_shard (FSDP2) needs torch >= 2.6")
    _spawn(worker, "fsdp", tmp_path, timeout_s=180)
    for backend in worker.BACKENDS:
        _assert_matches_single_process(worker, tmp_path, "fsdp", backend)
    _assert_reloads_unsharded(worker, tmp_path / "fsdp_dcp_formats")


def _assert_reloads_unsharded(worker, path: Path) -> None:
    """The two ranks' DCP checkpoint with bf16 moments, loaded into one process without FSDP:
    every moment arrives whole, bf16, equal to what the ranks saved, and training continues."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    saved = torch.load(path.with_suffix(".full.pt"), weights_only=True)
    model = worker.make_model(seed=123)
    opt, sched = worker.build_optimizer(model, **worker.FORMATS)
    model_sd, optim_sd = get_state_dict(model, opt)
    state = {"model": model_sd, "optim": optim_sd, "sched": sched.state_dict()}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)  # that is the intent
        dcp.load(state, checkpoint_id=str(path), no_dist=True)
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    names = dict(model.named_parameters())
    assert saved.keys() == names.keys()
    for name, entry in saved.items():
        loaded = opt.state[names[name]]
        assert int(loaded["step"]) == worker.RESUME_AT
        for key in ("exp_avg", "exp_avg_sq"):
            assert type(loaded[key]) is torch.Tensor and loaded[key].dtype == torch.bfloat16, (name, key)
            assert torch.equal(loaded[key], entry[key]), f"{name} {key} differs after the unsharded load"
    before = {n: p.detach().clone() for n, p in names.items()}
    worker.train(model, opt, sched, worker.batches()[worker.RESUME_AT :])
    assert all(not torch.equal(p, before[n]) for n, p in names.items())


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
