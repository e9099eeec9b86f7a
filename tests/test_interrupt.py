"""Submitit's time-limit signal (USR2) stops training at a checkpoint before submitit requeues the cell."""

from __future__ import annotations

import os
import signal

import pytest

from harness.interrupt import Interrupted, graceful_stop


@pytest.fixture
def submitit_handler():
    """A stand-in for submitit's USR2 handler (checkpoint the call, requeue the job, exit), recording its calls."""
    calls: list[int] = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    yield calls
    signal.signal(signal.SIGUSR2, previous)


def test_the_time_limit_signal_stops_training_at_a_checkpoint_then_runs_submitits_handler(submitit_handler):
    mine = signal.getsignal(signal.SIGUSR2)
    with pytest.raises(Interrupted) as caught:
        with graceful_stop() as stop:
            stop.training = True
            os.kill(os.getpid(), signal.SIGUSR2)  # Slurm, signal_delay_s before the time limit
            assert submitit_handler == [] and stop.requested  # no exit mid-step: the loop checkpoints first
            raise Interrupted(stop.signame, step=40, stage="training")  # what the training loop does next
    exc = caught.value
    assert (exc.signame, exc.step, exc.exit_code) == ("SIGUSR2", 40, 128 + signal.SIGUSR2)
    assert exc.then is not None and submitit_handler == []
    exc.then()  # harness.cli, after its resume line: submitit requeues
    assert submitit_handler == [signal.SIGUSR2]
    assert signal.getsignal(signal.SIGUSR2) is mine  # restored after the run


def test_outside_training_the_time_limit_signal_goes_to_submitit_at_once(submitit_handler):
    mine = signal.getsignal(signal.SIGUSR2)
    with graceful_stop() as stop:
        os.kill(os.getpid(), signal.SIGUSR2)
        assert submitit_handler == [signal.SIGUSR2] and not stop.requested
    assert signal.getsignal(signal.SIGUSR2) is mine  # restored after the run


def test_without_a_handler_for_it_the_signal_is_left_alone():
    previous = signal.signal(signal.SIGUSR2, signal.SIG_DFL)
    try:
        with graceful_stop():
            assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL  # not submitit: USR2 keeps its default
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_a_cell_warned_by_submitit_checkpoints_before_submitit_requeues_it(tmp_path):
    import subprocess
    import sys
    import time

    from conftest import MICRO, OFFLINE

    cell, mark = tmp_path / "cell", tmp_path / "requeued"
    # submitit's process: its USR2 handler (here: note the requeue, exit -1 as submitit does) is set before the cell
    code = (
        "import os, signal, sys\n"
        "def requeue(signum, frame):\n"
        f"    open({str(mark)!r}, 'w').write('requeued')\n"
        "    sys.exit(-1)\n"
        "signal.signal(signal.SIGUSR2, requeue)\n"
        "from harness.cli import main\n"
        "sys.argv = ['harness', *sys.argv[1:]]\n"
        "main()\n"
    )
    args = [sys.executable, "-c", code, *MICRO, "train.epochs=60", "train.checkpoint_every=1000"]
    args.append(f"hydra.run.dir={cell}")
    proc = subprocess.Popen(args, cwd=tmp_path, env={**os.environ, **OFFLINE}, stderr=subprocess.PIPE, text=True)
    log, deadline = cell / "train_log.jsonl", time.time() + 300
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 3):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGUSR2)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 255, err[-3000:]  # submitit's sys.exit(-1) after requeueing
    assert mark.read_text() == "requeued"
    (line,) = [x for x in err.splitlines() if x.startswith("stopped by SIGUSR2")]
    step = int(line.rsplit(" ", 1)[1])
    assert step >= 3 and (cell / "checkpoints" / f"step-{step:08d}").is_dir()  # saved at the stop, not lost


def test_a_repeated_stop_signal_waits_for_the_checkpoint_but_a_second_ctrl_c_does_not():
    """Under `accelerate launch` on Slurm each process gets SIGTERM twice (Slurm's and the launcher's): the second is
    the same request, not an order to drop the step in progress; a second Ctrl-C at the terminal still stops at once."""
    with graceful_stop() as stop:
        stop.training = True
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signame == "SIGTERM"
        with pytest.raises(Interrupted) as caught:
            os.kill(os.getpid(), signal.SIGINT)
        assert caught.value.signame == "SIGINT"


def test_sigusr1_stops_training_at_a_checkpoint():
    """`sbatch --signal=USR1@90` warns before the time limit: training stops at its next checkpoint (by default the
    signal would end the process mid-step, losing every step since the last checkpoint)."""
    previous = signal.getsignal(signal.SIGUSR1)
    with graceful_stop() as stop:
        assert signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, None)
        stop.training = True
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.requested and stop.signame == "SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) is previous
    assert Interrupted("SIGUSR1", step=3).exit_code == 128 + signal.SIGUSR1


def test_submitits_signal_may_be_usr1(monkeypatch):
    """SUBMITIT_PREEMPT_SIGNAL=USR1: USR1 is submitit's, so its handler runs after the checkpoint (not a plain stop)."""
    calls: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: calls.append(signum))
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "USR1")
    try:
        with pytest.raises(Interrupted) as caught:
            with graceful_stop() as stop:
                stop.training = True
                os.kill(os.getpid(), signal.SIGUSR1)
                assert stop.requested and calls == []
                raise Interrupted(stop.signame, step=5, stage="training")
        caught.value.then()
        assert calls == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, previous)
