"""A Ctrl-C during a search lands in compute, never inside a write to Optuna's storage: the
interrupted trial is told FAIL, not left RUNNING (tasks.training.interrupts)."""

from __future__ import annotations

import os
import random
import signal
import threading

import optuna
import pytest

from tasks.training.interrupts import HeldInterrupts, holding_interrupts

TRIES = 12  # with SIGINT delivered anywhere, about a third of these left the trial RUNNING


def storage_heavy_search(storage: str, interrupts: HeldInterrupts) -> None:
    """A trial like a search's: short epochs of compute, each followed by storage writes."""

    def objective(trial: optuna.Trial) -> float:
        for epoch in range(1_000_000):
            with interrupts.delivered():
                sum(i * i for i in range(2000))
                with interrupts.held():
                    trial.set_user_attr("epoch", epoch)
                    trial.report(float(epoch), epoch)
                    trial.should_prune()
        return 0.0

    study = optuna.create_study(storage=storage, study_name="s", load_if_exists=True)
    study.optimize(objective, n_trials=1, callbacks=[interrupts.raise_if_pending])


def test_a_ctrl_c_at_any_moment_fails_the_trial_and_leaves_none_running(tmp_path):
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    rng = random.Random(0)
    states = []
    for attempt in range(TRIES):
        storage = f"sqlite:///{tmp_path / f'study-{attempt}.db'}"
        timer = threading.Timer(rng.uniform(0.2, 0.6), os.kill, (os.getpid(), signal.SIGINT))
        with pytest.raises(KeyboardInterrupt), holding_interrupts() as interrupts:
            timer.start()
            storage_heavy_search(storage, interrupts)
        timer.join()
        states += [t.state for t in optuna.load_study(study_name="s", storage=storage).trials]
    assert states == [optuna.trial.TrialState.FAIL] * TRIES


def test_a_ctrl_c_held_to_the_end_still_stops_and_the_handler_is_restored():
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), holding_interrupts():
        os.kill(os.getpid(), signal.SIGINT)  # held: nothing delivers it inside the block
        held_through = True
    assert held_through
    assert signal.getsignal(signal.SIGINT) is before


def test_a_held_ctrl_c_lands_when_the_held_block_ends_inside_a_delivered_one():
    interrupts = HeldInterrupts()
    reached = []
    with pytest.raises(KeyboardInterrupt), interrupts.delivered():
        with interrupts.held():
            interrupts.on_sigint(signal.SIGINT, None)  # as the handler would be called
            reached.append("end of the held block")
        reached.append("after it")  # never: the Ctrl-C lands as the held block ends
    assert reached == ["end of the held block"]
