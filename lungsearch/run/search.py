"""The entry points: `run_search` checks everything, writes the run folder and runs the search; `resume_search`
finishes an interrupted one; `execute` runs a run folder's Ray Tune experiment and writes its tables."""
from __future__ import annotations

import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import ray
from ray import tune

from ray.tune.search import BasicVariantGenerator

from .. import confirmation, data, space as spaces, store
from ..config import OBJECTIVE, SearchSettings, UserError, count
from . import budget
from .budget import Budget
from .cluster import cluster_address, cluster_totals, connect, resources
from .folder import new_run_folder, print_table, run_folder_problem, unchanged_data, write_run_folder
from .plan import make_plan, read_space
from .outcome import InterruptWatch, SearchIncomplete, search_status
from .progress import RAY_LOG_HANDLER, Progress, trial_name
from .searchers import FixedPointASHA, build_trials, searcher
from .settings import check_machine, check_sampled_trials, data_dir_from
from .tracking import mlflow_callback, mlflow_uri
from .trial import trainable


def run_search(space_path: str | Path, data_arg: str | None = None, results_dir: str | Path = "results",
               smoke: bool = False, address: str | None = None, mlflow: str | None = None,
               **overrides: Any) -> Path:
    """Check everything, write the run folder's manifest, run the search; return the run folder.

    With `address` (a Ray cluster), `results_dir` and the data folder must be paths every node reaches.
    With `mlflow` (a tracking URI or a folder), every trial is logged to MLflow too (`mlflow_callback`).
    """
    tracking = mlflow_uri(mlflow) if mlflow else None  # MLflow missing: say how to install it before any work
    if "://" in str(results_dir):
        raise UserError(f"--storage/--results must be a file system path every node can reach (NFS, or a bucket "
                        f"mounted with e.g. s3fs or gcsfuse), got the URI {results_dir!r}")
    data.check_results_folder(results_dir)  # a file, a read-only folder: say so before any work
    space, settings = read_space(space_path, overrides, smoke)
    check_sampled_trials(space, settings, overrides)
    data_dir = data_dir_from(data_arg)
    if address:
        cluster_address(address)  # a dead address fails in seconds, before the data is read
    plan = make_plan(space, settings, data_dir, smoke,
                     check_scan=lambda scanned: check_machine(settings, len(scanned.files), address))
    settings = plan.settings

    # Ray starts before the run folder exists, so a request the cluster cannot hold leaves nothing behind.
    connect(address)
    run_dir = None
    try:
        resources(settings)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = new_run_folder(Path(results_dir).expanduser().resolve(),
                                 f"{stamp}-{space.name}{'-smoke' if smoke else ''}")
        write_run_folder(run_dir, space, settings, smoke, data_dir, plan.cache_dir, plan.dataset,
                         plan.requested_split, plan.summary, plan.split)
    except BaseException:  # a failure (or Ctrl-C) before the search: no Ray left running, no half-made run folder
        ray.shutdown()
        if run_dir is not None and run_dir.is_dir():  # set only once this run made the folder: never another's
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    print(f"run folder: {run_dir}", flush=True)
    return execute(run_dir, address, mlflow=tracking, dataset=plan.scanned)


def resume_search(run_dir: str | Path, address: str | None = None) -> Path:
    """Finish an interrupted search to its planned size; finished trials are kept, not rerun. A folder that
    cannot be resumed is a UserError (before Ray starts) in the words `report` uses for it, and so is a data
    folder that changed since the run started."""
    run_dir = Path(run_dir).expanduser().resolve()
    problem = run_folder_problem(run_dir)
    if problem:
        raise UserError(problem)
    return execute(run_dir, address, restore=True, dataset=unchanged_data(run_dir))


def fidelity_text(settings: SearchSettings) -> str:
    """The search stage's fidelity and the confirmation stage in words, for the line that starts the search."""
    text = f" on {100 * settings.search_fraction:g}% of the training patients" if settings.search_fraction < 1 else ""
    text += f", {settings.brackets} ASHA brackets" if settings.brackets > 1 else ""
    if settings.confirm_top:
        text += (f"; then the {settings.confirm_top} best and base retrained on all of it with "
                 f"{count(settings.confirm_seeds, 'seed')}, up to {settings.max_epochs} epochs")
    return text


def budget_text(settings: SearchSettings) -> str:
    """The search's budget in words, for the line that starts it."""
    if settings.budget_epochs:
        return f"; budget: {settings.budget_epochs} epochs in all"
    if settings.budget_minutes:
        return f"; budget: {settings.budget_minutes:g} minutes"
    return ""


def execute(run_dir: Path, address: str | None, restore: bool = False, mlflow: str | None = None,
            dataset: data.Dataset | None = None) -> Path:
    """Start (or restore) the Tune experiment in run_dir/ray as the manifest describes, then (confirm_top > 0) the
    confirmation stage in run_dir/confirm, then write the tables.

    Returns the run folder when the search finished. Raises SearchIncomplete when it was interrupted (Ctrl-C:
    the manifest's status is "interrupted", no trials.csv, resume finishes it) or when every trial failed
    (status "failed"; trials.csv lists the errors). `mlflow`: an MLflow tracking URI (`mlflow_uri`) to log the
    trials to; it is kept in the manifest, and a resumed search logs where the first part did."""
    manifest = store.read_manifest(run_dir)
    mlflow = manifest.get("mlflow") if restore else mlflow
    space = spaces.load_space(run_dir / "space.py")
    settings = SearchSettings(**manifest["settings"])
    if dataset is None:
        dataset = data.scan(manifest["run_constants"]["data_dir"])
    started = time.time()
    interrupted, results, total, confirmed = False, None, None, None
    try:
        RAY_LOG_HANDLER.open(run_dir)  # Ray's notices, from ray.init on, go to run_dir/ray.log
        if not ray.is_initialized():  # run_search connected already, to check the cluster before the run folder
            connect(address)
        res = resources(settings)
        if mlflow:
            mlflow_uri(mlflow)  # (resume) the search's MLflow callback needs MLflow installed
        manifest.update({"resources": {"cpu_per_trial": res["cpu"], "gpu_per_trial": res["gpu"]},
                         "cluster": cluster_totals(), "mlflow": mlflow})
        store.write_json(run_dir / "manifest.json", {**manifest, "status": "running"})
        fn = tune.with_resources(
            tune.with_parameters(trainable, conditions=space.conditions, run_dir=str(run_dir), dataset=dataset,
                                 cpus=res["cpu"], gpus=res["gpu"]), res)
        param_space, points = build_trials(space, settings, manifest["run_constants"], manifest["held_for_smoke"])
        total = settings.num_samples + len(points)
        print(f"search: {settings.num_samples} sampled trial(s) + {len(points)} fixed point(s), "
              f"{res['cpu']:g} CPU and {res['gpu']:g} GPU per trial, up to {settings.stage_epochs} epochs"
              + fidelity_text(settings) + budget_text(settings) + (" (resumed)" if restore else ""), flush=True)
        tuner = search_tuner(fn, run_dir, settings, param_space, points, total, mlflow, restore)
        with InterruptWatch() as watch:
            results = tuner.fit()
        interrupted = watch.interrupted
        if settings.confirm_top and not interrupted and search_status(
                results, total, False, budget.spent(run_dir, settings, time.time() - started)) == "finished":
            confirmed, interrupted = confirm(fn, run_dir, space, settings, mlflow, results)
    except KeyboardInterrupt:  # Ctrl-C before the search started, or a second one while Tune was stopping
        interrupted = True
    finally:
        Progress.close_all()  # a live status line a second Ctrl-C left on the terminal
        ray.shutdown()
        RAY_LOG_HANDLER.close()
    return finish(run_dir, manifest, space, settings, results, confirmed, total, interrupted, restore,
                  time.time() - started)


def search_tuner(fn, run_dir: Path, settings: SearchSettings, param_space: dict, points: list[dict], total: int,
                 mlflow: str | None, restore: bool) -> tune.Tuner:
    """The search stage's Tuner: ASHA over `brackets` brackets, the searcher, the budget; restored on resume."""
    if restore:
        return tune.Tuner.restore(str(run_dir / "ray"), trainable=fn, resume_unfinished=True,
                                  restart_errored=True)  # a trial lost with the driver or a node gets another go
    return tune.Tuner(
        fn,
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=OBJECTIVE.key, mode=OBJECTIVE.mode, num_samples=total,
            search_alg=searcher(settings, points),
            scheduler=FixedPointASHA(time_attr="training_iteration", max_t=settings.stage_epochs,
                                     grace_period=min(settings.grace_period, settings.stage_epochs),
                                     reduction_factor=settings.reduction_factor, brackets=settings.brackets),
            max_concurrent_trials=settings.max_concurrent or None,
            reuse_actors=settings.reuse_workers,
            trial_name_creator=trial_name, trial_dirname_creator=trial_name,
        ),
        run_config=tune.RunConfig(
            name="ray", storage_path=str(run_dir), verbose=0,
            callbacks=[Progress(total, settings.stage_epochs, settings.budget_epochs, settings.budget_minutes * 60,
                                run_dir=str(run_dir)),
                       *([mlflow_callback(mlflow, run_dir)] if mlflow else [])],
            failure_config=tune.FailureConfig(max_failures=settings.max_failures),
            stop=(Budget(run_dir, settings.budget_epochs, settings.budget_minutes)
                  if settings.budget_epochs or settings.budget_minutes else None),
        ),
    )


def confirm(fn, run_dir: Path, space: spaces.Space, settings: SearchSettings, mlflow: str | None, searched):
    """The confirmation stage (run_dir/confirm): the best configurations of the search and the fixed points, at
    full fidelity with several training seeds, as Ray trials side by side. Returns (Tune's results, whether it
    was interrupted); a resumed run goes on with the stage where it stopped."""
    failed = {Path(r.path).name for r in searched if r.error}
    table, _ = store.tables(run_dir, sorted(space.params), space.conditions, failed)
    folder = run_dir / confirmation.STAGE
    if tune.Tuner.can_restore(str(folder)):
        tuner = tune.Tuner.restore(str(folder), trainable=fn, resume_unfinished=True, restart_errored=True)
        planned = len(store.read_json(run_dir / confirmation.PLAN))
    else:
        configs = confirmation.configs(run_dir, table, settings)
        store.write_json(run_dir / confirmation.PLAN, configs)
        planned = len(configs)
        print(f"confirmation: {confirmation.plan_text(configs, settings)}", flush=True)
        tuner = tune.Tuner(
            fn, param_space=dict(configs[0]),  # every config has the same keys; each point sets them all
            tune_config=tune.TuneConfig(
                metric=OBJECTIVE.key, mode=OBJECTIVE.mode, num_samples=planned,
                search_alg=BasicVariantGenerator(points_to_evaluate=configs),
                max_concurrent_trials=settings.max_concurrent or None, reuse_actors=settings.reuse_workers,
                trial_name_creator=trial_name, trial_dirname_creator=trial_name),
            run_config=tune.RunConfig(
                name=confirmation.STAGE, storage_path=str(run_dir), verbose=0,
                callbacks=[Progress(planned, settings.max_epochs),
                           *([mlflow_callback(mlflow, run_dir)] if mlflow else [])],
                failure_config=tune.FailureConfig(max_failures=settings.max_failures)))
    with InterruptWatch() as watch:
        results = tuner.fit()
    return results, watch.interrupted or search_status(results, planned, False) == "interrupted"


def finish(run_dir: Path, manifest: dict, space: spaces.Space, settings: SearchSettings, results, confirmed,
           total: int | None, interrupted: bool, restore: bool, wall: float) -> Path:
    """The run folder after the search: the manifest's status, trials.csv and history.csv (both stages),
    confirmed.csv, the checkpoints kept; SearchIncomplete when it was interrupted or every trial failed."""
    wall += manifest.get("search_wall_s", 0) if restore else 0
    manifest.update({"search_wall_s": round(wall, 1), "resumed": manifest.get("resumed", 0) + int(restore)})
    status = search_status(results, total, interrupted, budget.spent(run_dir, settings, wall))
    if status == "interrupted":
        manifest.update({"status": "interrupted", "interrupted": datetime.now().isoformat(timespec="seconds")})
        store.write_json(run_dir / "manifest.json", manifest)
        if tune.Tuner.can_restore(str(run_dir / "ray")):
            raise SearchIncomplete(f"interrupted: the search stopped before it finished; its trials so far are saved "
                                   f"in {run_dir}. Finish it with `python -m lungsearch resume {run_dir}`", 130, run_dir)
        if not restore:  # nothing of the search was saved: the folder could not be resumed, so do not leave it
            shutil.rmtree(run_dir, ignore_errors=True)
        raise SearchIncomplete("interrupted before the search saved any state: nothing to resume; run it again", 130)
    failed = {Path(r.path).name for grid in (results, confirmed) if grid is not None for r in grid if r.error}
    table = store.collect(run_dir, sorted(space.params), space.conditions, failed)
    if confirmed is not None:
        confirmation.summary(table).to_csv(run_dir / confirmation.TABLE, index=False)
    kept = store.prune_checkpoints(run_dir, table, settings.keep_checkpoints)
    manifest.update({"status": status, "finished": datetime.now().isoformat(timespec="seconds"),
                     "checkpoints_kept": kept, **store.time_summary(table)})
    store.write_json(run_dir / "manifest.json", manifest)
    print_table(table, manifest)
    if status == "failed":
        first = str(results.errors[0]).strip().splitlines()[-1] if results.errors else "?"
        raise SearchIncomplete(f"error: every trial failed ({len(results)} of {len(results)}), so there is no model "
                               f"to report; the errors are in the error column of {run_dir / 'trials.csv'} (the "
                               f"first: {first})", 1, run_dir)
    return run_dir
