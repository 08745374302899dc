"""What a person sees while a search runs: the Progress callback driven with fake trials (no Ray search), and
Ray's own notices kept off the console."""
import io
import logging
import re
from types import SimpleNamespace

import pandas as pd
import ray.cloudpickle

from lungsearch.run.progress import RAY_LOG, RAY_LOG_HANDLER, Progress, RayLog, duration, quiet_ray


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def trial(trial_id: str, fixed_point: str = "", status: str = "PENDING", **last) -> SimpleNamespace:
    return SimpleNamespace(trial_id=trial_id, config={"fixed_point": fixed_point, "learning_rate": 1e-3},
                           status=status, last_result=dict(last), error_file=None)


def epoch(t, n: int, objective: float, **more) -> dict:
    t.status, t.last_result = "RUNNING", {"training_iteration": n, "objective": objective, **more}
    return t.last_result


def drive(progress: Progress, clock: Clock, tmp_path) -> list:
    """Three trials of up to 4 epochs: base finishes, one is stopped by ASHA, one fails."""
    base, asha, bad = trial("a_00000", "base"), trial("a_00001"), trial("a_00002")
    trials = [base, asha, bad]
    progress.setup(total_num_samples=3)
    progress.on_step_end(0, trials)  # the first status line
    for t in trials:
        t.status = "RUNNING"
        progress.on_trial_start(0, trials, t)
    for n in (1, 2):  # a step and a result every second: no line per epoch, nor per step
        for t, score in ((base, 0.9), (asha, 0.7)):
            clock.now += 1
            progress.on_trial_result(n, trials, t, epoch(t, n, score + n / 100))
            progress.on_step_end(n, trials)
    clock.now += 1
    progress.on_trial_complete(3, trials, asha)  # Tune calls back before it marks the trial TERMINATED
    asha.status = "TERMINATED"
    bad.error_file = str(tmp_path / "error.txt")
    (tmp_path / "error.txt").write_text("Traceback (most recent call last):\n ...\nValueError: kernel 7 does not fit\n")
    progress.on_trial_error(3, trials, bad)
    bad.status = "ERROR"
    clock.now += 56  # a minute in: the heartbeat is due
    progress.on_step_end(4, trials)
    for n in (3, 4):
        progress.on_trial_result(n, trials, base, epoch(base, n, 0.95, **({"final": True} if n == 4 else {})))
    progress.on_trial_complete(5, trials, base)
    base.status = "TERMINATED"
    progress.on_experiment_end(trials)
    return trials


def test_off_a_terminal_one_line_per_trial_event_and_a_heartbeat_at_most_every_30_s(capsys, tmp_path):
    clock = Clock()
    progress = Progress(3, max_epochs=4, live=False, clock=clock)
    drive(progress, clock, tmp_path)
    lines = capsys.readouterr().out.strip().splitlines()
    stamp = r"^\[\d:\d\d:\d\d\] "
    assert all(re.match(stamp, line) for line in lines), lines
    text = [re.sub(stamp, "", line) for line in lines]
    assert text[0] == "0 running, 0 finished, 0 stopped early, 0 failed of 3 | 0 epochs trained | best val AUC - | " \
                      "time left: -"
    assert text[1:4] == ["base_a_00000 started", "trial_a_00001 started", "trial_a_00002 started"]
    assert text[4] == "trial_a_00001 stopped early by ASHA after 2 epochs, val AUC 0.7200"
    assert text[5] == "trial_a_00002 failed after 0 epochs: ValueError: kernel 7 does not fit"
    # the heartbeat a minute in: 2 of 4 epochs of base + 2 trials ended = 2.5 of 3 trials' budget in 61 s
    assert text[6] == ("1 running, 0 finished, 1 stopped early, 1 failed of 3 | 4 epochs trained | best val AUC "
                       "0.9200 (base_a_00000) | under a minute left")
    assert text[7] == "base_a_00000 finished after 4 epochs, val AUC 0.9500"
    assert text[8] == ("0 running, 1 finished, 1 stopped early, 1 failed of 3 | 6 epochs trained | best val AUC "
                       "0.9500 (base_a_00000)")  # the end: no estimate
    assert len(lines) == 9  # four epochs and nine steps made no line of their own
    assert lines[6].startswith("[0:01:01]")


def test_the_estimate_of_the_time_left_comes_from_the_trial_budget(capsys):
    clock = Clock()
    progress = Progress(4, max_epochs=10, live=False, clock=clock)
    progress.setup()
    trials = [trial(f"b_{k}") for k in range(4)]
    progress.on_step_end(0, trials)
    epoch(trials[0], 5, 0.8)
    clock.now += 300  # half of one trial of four in 5 min: 3.5 trials to go, 35 min
    progress.on_step_end(1, trials)
    assert capsys.readouterr().out.strip().endswith("| about 35 min left")
    assert duration(3 * 3600 + 5 * 60) == "about 3 h 05 min" and duration(20) == "under a minute"


def test_on_a_terminal_a_live_line_drawn_by_rich_and_a_line_per_ended_trial(capsys, tmp_path):
    from rich.console import Console

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200, color_system=None)
    clock = Clock()
    progress = Progress(3, max_epochs=4, live=True, console=console, clock=clock)
    drive(progress, clock, tmp_path)
    assert Progress.showing == [] and progress.display is None  # the live line was stopped at the end
    shown = out.getvalue()
    assert "\x1b[" in shown and "\r" in shown  # redrawn in place
    for line in ("trial_a_00001 stopped early by ASHA after 2 epochs", "trial_a_00002 failed after 0 epochs: "
                 "ValueError", "base_a_00000 finished after 4 epochs, val AUC 0.9500", "best val AUC 0.9200"):
        assert line in shown, line
    assert "started" not in shown and capsys.readouterr().out == ""  # on a terminal, starts show in the live line
    Progress.close_all()


def test_progress_pickles_for_resume_and_counts_afresh():
    from rich.console import Console

    progress = Progress(7, max_epochs=5, live=True, console=Console(file=io.StringIO(), force_terminal=True))
    progress.setup()
    try:
        restored = ray.cloudpickle.loads(ray.cloudpickle.dumps(progress))  # as Tune saves the experiment
    finally:
        progress.close()
    assert (restored.total, restored.max_epochs, restored.live, restored.display) == (7, 5, None, None)


def test_ray_notices_go_to_the_run_folder_log_not_the_console(tmp_path, monkeypatch):
    from ray.tune.experimental.output import get_air_verbosity

    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "1")
    monkeypatch.delenv("RAY_AIR_NEW_OUTPUT")  # unset, as for a user; quiet_ray sets it
    quiet_ray()
    # Tune's legacy output engine, which prints nothing at verbose=0: no "Configuration for experiment" box, no
    # "View detailed results here", no TensorBoard hint (the default engine prints them at any verbosity)
    assert get_air_verbosity(0) is None
    ray_logger = logging.getLogger("ray")
    consoles = [h for h in ray_logger.handlers if h is not RAY_LOG_HANDLER]
    assert consoles and all(RayLog.console in h.filters for h in consoles)
    assert ray_logger.handlers.count(RAY_LOG_HANDLER) == 1
    quiet_ray()  # again (resume, a second search in one process): nothing doubled
    assert ray_logger.handlers.count(RAY_LOG_HANDLER) == 1

    stream = io.StringIO()
    console = logging.StreamHandler(stream)
    console.addFilter(RayLog.console)
    ray_logger.addHandler(console)
    try:
        auth = logging.getLogger("ray._private.authentication.authentication_token_setup")
        auth.warning("Token authentication is enabled for this Ray cluster.")  # before the run folder exists
        RAY_LOG_HANDLER.open(tmp_path)
        tune_log = logging.getLogger("ray.tune.execution.tune_controller")
        tune_log.error("Trial task failed for trial trial_1", exc_info=ValueError("kernel 7"))
        logging.getLogger("ray.tune.tune").error("Trials did not complete: [trial_1]")
        tune_log.error("Experiment state snapshotting failed")  # an error a user must see
    finally:
        ray_logger.removeHandler(console)
        RAY_LOG_HANDLER.close()
    assert stream.getvalue() == "Experiment state snapshotting failed\n"
    log = (tmp_path / RAY_LOG).read_text()
    for text in ("WARNING ray._private.authentication.authentication_token_setup", "Token authentication is enabled",
                 "Trial task failed for trial trial_1", "ValueError: kernel 7", "Trials did not complete",
                 "Experiment state snapshotting failed"):
        assert text in log, text
    logging.getLogger("ray.tune").warning("after the search")  # kept in memory for the next run folder only
    assert "after the search" not in (tmp_path / RAY_LOG).read_text()
    quiet_ray()
    assert RAY_LOG_HANDLER.pending == []


def test_trials_a_ctrl_c_ended_are_not_counted_as_stopped_by_asha(capsys):
    progress = Progress(3, max_epochs=4, live=False, clock=Clock())
    progress.setup()
    done, cut, never = trial("c_0", "base"), trial("c_1"), trial("c_2")
    trials = [done, cut, never]
    progress.on_step_end(0, trials)
    epoch(done, 4, 0.9, final=True)
    progress.on_trial_complete(1, trials, done)
    epoch(cut, 2, 0.8)
    for t in trials:  # Tune marks every trial ended when Ctrl-C stops the search
        t.status = "TERMINATED"
    progress.on_experiment_end(trials)
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert "1 finished, 0 stopped early, 0 failed, 1 interrupted of 3 | 6 epochs trained" in last


def test_a_trial_the_spent_budget_stopped_is_not_called_stopped_by_asha(capsys, tmp_path):
    """Two trials, a budget of 3 epochs: one is stopped by ASHA after 1 epoch, the other is still training when the
    budget runs out. The console, budget_stops.txt and the run folder's table all say which is which."""
    from lungsearch import store

    progress = Progress(2, max_epochs=4, budget_epochs=3, live=False, clock=Clock(), run_dir=str(tmp_path))
    progress.setup()
    judged, cut = trial("d_0"), trial("d_1")
    trials = [judged, cut]
    epoch(judged, 1, 0.6)
    progress.on_step_end(0, trials)
    progress.on_trial_complete(1, trials, judged)  # ASHA's doing: the budget is not spent yet
    judged.status = "TERMINATED"
    epoch(cut, 2, 0.8)
    progress.on_step_end(1, trials)  # 3 epochs: the budget is spent
    cut.status = "TERMINATED"  # Tune stops every trial at once, without calling on_trial_complete
    progress.on_experiment_end(trials)
    out = capsys.readouterr().out
    assert "trial_d_0 stopped early by ASHA after 1 epoch" in out
    assert "trial_d_1 stopped: the budget is spent after 2 epochs" in out
    assert "0 finished, 1 stopped early, 1 stopped by the budget, 0 failed of at most 2" in out.strip().splitlines()[-1]
    assert store.budget_stops(tmp_path) == {"trial_d_1"}
    assert store.trial_outcome({"epoch": 2}, False, True) == "budget"
    assert store.trial_outcome({"epoch": 2, "final": True}, False, True) == "finished"
    assert store.trial_outcome({}, False, False) == "not started"
    assert store.trial_outcome({}, True, False) == "failed"
    for name, epochs in (("trial_d_0", 1), ("trial_d_1", 2)):  # the run folder's table reads the same outcomes
        folder = tmp_path / "ray" / name
        folder.mkdir(parents=True)
        (folder / "params.json").write_text('{"fixed_point": ""}')
        (folder / "result.json").write_text("\n".join(f'{{"epoch": {e}, "objective": 0.7}}' for e in
                                                      range(1, epochs + 1)))
    table, _ = store.tables(tmp_path, [], {}, set())
    status = table.set_index("trial")
    assert status.loc["trial_d_0", "status"] == "stopped" and status.loc["trial_d_0", "stopped_at_rung"] == 1
    assert status.loc["trial_d_1", "status"] == "budget" and status.loc["trial_d_1", "stopped_at_rung"] is pd.NA
