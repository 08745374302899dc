"""Command line: argparse and dispatch only."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any

from . import version
from .config import SEARCH_SPLITS, SMOKE, SearchSettings, UserError

DESCRIPTION = """\
Find the best chest X-ray pneumonia classifier (NORMAL vs PNEUMONIA) your compute can train. lungsearch
trains Keras 3 CNNs as Ray Tune trials on every CPU and GPU of a machine or cluster, and always retrains the
source report's three models so every search shows where it stands against them."""

EPILOG = """\
first steps:
  lungsearch data prepare chest-xray-pneumonia.zip ~/data/chest_xray   # unpack the Kaggle download
  lungsearch data check ~/data/chest_xray                              # counts, duplicates, leakage
  lungsearch spaces                                                    # the bundled search spaces
  lungsearch run robust --data ~/data/chest_xray --smoke               # first try: minutes on a laptop
  lungsearch run robust --data ~/data/chest_xray                       # the recommended search (hours on a
                                                                       # laptop CPU, minutes on one GPU)
  lungsearch explain RUN_DIR/best_model.json IMAGE...                  # where the best model looks

`lungsearch COMMAND --help` describes a command. The last line `run` prints is the run folder."""


def setting_default(name: str):
    return {f.name: f.default for f in dataclasses.fields(SearchSettings)}[name]


def overrides(what: str, name: str) -> str:
    """Help text of a flag that overrides a SETTINGS key of the space file."""
    return f"{what} (default: the space's SETTINGS {name!r}, else {setting_default(name)})"


SMOKE_HELP = (f"shrink the search to minutes on a laptop: {SMOKE['image_size']} px images, up to {SMOKE['max_epochs']} "
              f"epochs, {SMOKE['data_limit']} training images (a quarter as many, at least 8, in each other part), "
              f"patience {SMOKE['patience']}, ASHA grace period {SMOKE['grace_period']} and reduction factor "
              f"{SMOKE['reduction_factor']}, at most 8 sampled trials and, in a two-stage space, a search stage of --max-epochs "
              f"epochs and at most 2 confirmed configurations with 2 seeds; other flags still override these")


def parser() -> argparse.ArgumentParser:
    """The command line: the top-level flags, then one sub-parser per command, in the order `--help` lists them."""
    p = argparse.ArgumentParser(prog="lungsearch", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    p.set_defaults(help_parser=p)  # what a command given without its sub-command prints
    sub = p.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for add_command in (add_run_command, add_versus_command, add_resume_command, add_report_command,
                        add_evaluate_command, add_predict_command, add_explain_command, add_bench_command,
                        add_spaces_command, add_data_command):
        add_command(sub)
    return p


def add_run_command(commands: argparse._SubParsersAction) -> None:
    """`lungsearch run SPACE`."""
    run = commands.add_parser("run", help="run a search space (the report's fixed points included)",
                              description="Run a search space: its sampled trials and the report's three models, as "
                                          "Ray Tune trials. The last line printed is the run folder.")
    run.add_argument("space", help="a bundled space by name (ablation, architecture, report, robust: see "
                                   "`lungsearch spaces`), or the path of a space file of your own")
    run.add_argument("--data", metavar="DIR", help="dataset folder with train/ (and optionally val/ and test/) "
                                                   "(default: $LUNGSEARCH_DATA)")
    run.add_argument("--split", choices=list(SEARCH_SPLITS),
                     help="split protocol: target (validate on half of the dataset's own test/ patients, test on "
                          "the other half), patient (patient-grouped, validation from train/), report (the source "
                          "report's random 80:20 image split); default: the space's, else auto (target when the "
                          "dataset has test/, else patient)")
    add_setting_flags(run)
    run.add_argument("--smoke", action="store_true", help=SMOKE_HELP)
    run.add_argument("--results", "--storage", dest="results", default="results", metavar="DIR",
                     help="folder for run folders (default: results); on a cluster, a path every node reaches")
    add_cluster_flags(run)
    run.add_argument("--searcher", choices=["random", "tpe"],
                     help="how sampled trials are drawn: random (seeded; the default) or tpe (Optuna's TPE, "
                          "pip install -e \".[tpe]\")")
    run.add_argument("--no-fixed-points", dest="fixed_points", action="store_const", const=False,
                     help="skip the report's three models")
    run.add_argument("--no-reuse-workers", dest="reuse_workers", action="store_const", const=False,
                     help="start a fresh worker process for every trial (default: a worker runs trial after trial, "
                          "so Python, Keras and the decoded images load once per worker)")
    add_setting_flags(run, BUDGET_FLAGS)
    run.add_argument("--mlflow", metavar="URI",
                     help="also log every trial (parameters, metrics per epoch, test metrics) to MLflow: a tracking "
                          "URI (sqlite:///mlflow.db, http://host:5000) or a folder; pip install -e \".[mlflow]\"")


# `run`'s flags that override a SETTINGS key of the space file (the key is the flag's name with underscores), in
# the order the help lists them: flag, type, metavar (None: argparse's), what it sets.
SETTING_FLAGS = (
    ("--image-size", int, "PX", "image side in pixels"),
    ("--max-epochs", int, "N", "epoch budget per trial"),
    ("--num-samples", int, "N", "sampled trials, not counting the three fixed points"),
    ("--seed", int, None, "seed of the trial sampling and the first training seed (weights, shuffling, "
                          "augmentation)"),
    ("--split-seed", int, "N", "seed of the split and the smoke subset, apart from the training seed"),
    ("--patience", int, "EPOCHS", "epochs without a better objective (validation AUC) before a trial stops early"),
    ("--grace-period", int, "EPOCHS", "ASHA: epochs a sampled trial trains before it can first be stopped"),
    ("--reduction-factor", int, "K", "ASHA: keep the best 1/K of the trials at each rung"),
    ("--brackets", int, "N", "ASHA brackets (Hyperband-style): bracket s first judges a trial after grace-period x "
                             "reduction-factor**s epochs"),
    ("--search-fraction", float, "F", "share of the training patients the search stage trains on (multi-fidelity; "
                                      "below 1 needs --confirm-top)"),
    ("--search-epochs", int, "N", "most epochs of a search-stage trial (0: --max-epochs)"),
    ("--confirm-top", int, "K", "confirmation stage: retrain the K best sampled configurations and base on all the "
                                "training data for --max-epochs with --confirm-seeds seeds each (0: none)"),
    ("--confirm-seeds", int, "R", "training seeds per confirmed configuration"),
    ("--adapt-folds", int, "K", "adapt the final model to the validation part by cross-fitting over K patient folds, "
                                "kept only when the held-out folds say it helps (0: none; needs --confirm-top)"),
    ("--keep-checkpoints", int, "N", "saved models of the best sampled trials; the fixed points' models are always "
                                     "kept"),
)
BUDGET_FLAGS = (  # listed later in the help, after the flags of how trials run
    ("--budget-epochs", int, "N", "stop every trial once the trials have trained N epochs in all; the search then "
                                  "finishes with the trials it ran (0: no budget)"),
    ("--budget-minutes", float, "M", "stop every trial M minutes after the trials started; the search then finishes "
                                     "with the trials it ran (0: no budget)"),
)


def add_setting_flags(run: argparse.ArgumentParser, flags=SETTING_FLAGS) -> None:
    """`run`'s flags that override a SETTINGS key of the space file (SETTING_FLAGS, or BUDGET_FLAGS)."""
    for flag, kind, metavar, text in flags:
        run.add_argument(flag, type=kind, metavar=metavar, help=overrides(text, flag[2:].replace("-", "_")))


def add_cluster_flags(run: argparse.ArgumentParser) -> None:
    """`run`'s flags for where trials run: the Ray cluster, each trial's share of it, how many run at once and
    how often a failed one is retried."""
    run.add_argument("--address", help="join a Ray cluster: 'auto' or HOST:PORT (default: start a local one)")
    run.add_argument("--cpus-per-trial", type=float, metavar="N",
                     help="CPU cores per trial (default: 1 without GPUs; with GPUs, the cluster's CPUs per GPU, "
                          "1 to 4)")
    run.add_argument("--gpus-per-trial", type=float, metavar="N",
                     help="GPUs per trial; fractions share a GPU, e.g. 0.25 (default: 1 where there are GPUs, else 0)")
    run.add_argument("--max-concurrent", type=int, metavar="N",
                     help="most trials running at once (default: as many as the CPUs and GPUs hold)")
    run.add_argument("--max-failures", type=int, metavar="N", help="retries of a trial that raises (default 1)")


def add_versus_command(commands: argparse._SubParsersAction) -> None:
    """`lungsearch versus SPACE`."""
    versus = commands.add_parser(
        "versus", help="race lungsearch against keras-tuner and Optuna on a space, with the same budget",
        description="Race, one after the other on this machine with the same data, split, image size, epoch cap, "
                    "seed and budget: lungsearch (ASHA with random and TPE sampling), keras-tuner RandomSearch and "
                    "Hyperband, and Optuna (TPE with a successive-halving pruner; skipped without Optuna). Writes "
                    "versus.md, versus.csv and versus.png; the last line printed is the race's folder. A trial that "
                    "fails is counted and its traceback written to failures/SYSTEM/; a system none of whose trials "
                    "succeeded fails the race: the record is written and the exit status is 1.")
    versus.add_argument("space", help="a bundled space by name (e.g. ablation) or the path of a space file")
    versus.add_argument("--data", metavar="DIR", help="dataset folder (default: $LUNGSEARCH_DATA)")
    versus.add_argument("--budget-epochs", type=int, metavar="N",
                        help="each system trains N epochs in all, summed over its trials (default: 10 trials' worth, "
                             "10 x the epoch cap: 40 with --smoke)")
    versus.add_argument("--budget-minutes", type=float, metavar="M",
                        help="each system runs M minutes of wall time instead (not with --budget-epochs)")
    versus.add_argument("--systems", type=lambda text: [n.strip() for n in text.split(",") if n.strip()],
                        metavar="NAMES", help="race only these systems, comma-separated (default: all: "
                                              "lungsearch-random, lungsearch-tpe, keras-tuner-random, "
                                              "keras-tuner-hyperband, optuna)")
    versus.add_argument("--smoke", action="store_true",
                        help=f"the sizes of `run --smoke` ({SMOKE['image_size']} px, up to {SMOKE['max_epochs']} "
                             f"epochs per trial, {SMOKE['data_limit']} training images), so the whole race takes "
                             f"minutes")
    versus.add_argument("--image-size", type=int, metavar="PX", help=overrides("image side in pixels", "image_size"))
    versus.add_argument("--max-epochs", type=int, metavar="N", help=overrides("epoch cap per trial", "max_epochs"))
    versus.add_argument("--seed", type=int, help=overrides("seed of the split, the samplers and the models", "seed"))
    versus.add_argument("--results", default="results", metavar="DIR",
                        help="folder for the race's folder (default: results)")


def add_resume_command(commands: argparse._SubParsersAction) -> None:
    """`lungsearch resume RUN_DIR`."""
    resume = commands.add_parser("resume", help="finish an interrupted search without rerunning finished trials")
    resume.add_argument("run_dir", help="the interrupted run's folder (printed by `run` as `run folder: ...`)")
    resume.add_argument("--address", help="join a Ray cluster: 'auto' or HOST:PORT")


def add_report_command(commands: argparse._SubParsersAction) -> None:
    """`lungsearch report RUN_DIR`."""
    report = commands.add_parser("report", help="rank trials, evaluate the best on test, write report.html and export "
                                                "the best model (run does this at its end)")
    report.add_argument("run_dir", help="a run folder (the last line `run` printed)")
    report.add_argument("--top", type=int, default=5, metavar="N", help="top trials to evaluate on test (default 5)")
    report.add_argument("--ensemble", type=int, metavar="K",
                        help="average the top K trials; also exports ensemble.json (default: 3, shown in the report "
                             "only; 0: none)")
    report.add_argument("--data", metavar="DIR",
                        help="the run's dataset, if it moved (default: the folder the run used)")
    report.add_argument("--rank-by", choices=["objective", "f1"],
                        help="rank trials (and choose the final model) by the objective (validation AUC) or by "
                             "validation F1 at the threshold chosen on validation, as the design card asked "
                             "(default: the run's SETTINGS 'rank_by', else objective)")


def add_evaluate_command(commands: argparse._SubParsersAction) -> None:
    """`lungsearch evaluate MODEL`."""
    evaluate = commands.add_parser("evaluate",
                                   help="metrics of a model on a dataset folder's test/ part (or all images)")
    evaluate.add_argument("model", help="a .keras file, best_model.json or ensemble.json")
    evaluate.add_argument("--data", metavar="DIR", help="dataset folder (default: $LUNGSEARCH_DATA)")


def add_predict_command(commands: argparse._SubParsersAction) -> None:
    """`lungsearch predict MODEL IMAGE...`."""
    predict = commands.add_parser("predict", help="probability and label of each image")
    predict.add_argument("model", help="a .keras file, best_model.json or ensemble.json")
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files (.jpeg, .jpg, .png)")


def add_explain_command(commands: argparse._SubParsersAction) -> None:
    """`lungsearch explain MODEL IMAGE...`."""
    explain = commands.add_parser(
        "explain", help="where a model looks: a saliency overlay (Grad-CAM) per image",
        description="Write a heat-map overlay per image (Grad-CAM under TensorFlow and JAX, "
                    "occlusion sensitivity otherwise) and print path, probability, label, the "
                    "saliency share in the image's outer border, and the overlay's path.")
    explain.add_argument("model", help="a .keras file, best_model.json or ensemble.json")
    explain.add_argument("images", nargs="+", metavar="IMAGE", help="image files (.jpeg, .jpg, .png)")
    explain.add_argument("--out", default="explain", metavar="DIR", help="folder for the overlays (default: explain)")
    explain.add_argument("--method", choices=["auto", "gradcam", "occlusion"], default="auto",
                         help="auto (default): Grad-CAM where the Keras backend gives gradients (TensorFlow, JAX), "
                              "else occlusion")


def add_bench_command(commands: argparse._SubParsersAction) -> None:
    """`lungsearch bench`."""
    bench = commands.add_parser("bench", help="time epochs with and without augmentation, trial start-up, trials/hour")
    bench.add_argument("--data", metavar="DIR", help="dataset folder (default: $LUNGSEARCH_DATA)")
    bench.add_argument("--smoke", action="store_true", help="48 px and 480 images (as run --smoke) instead of 150 px "
                                                            "and all")
    bench.add_argument("--no-search", dest="search", action="store_false",
                       help="skip the smoke search (search efficiency, trials per hour)")
    bench.add_argument("--compare-fresh-workers", dest="compare_fresh", action="store_true",
                       help="also run the smoke search with a fresh worker process per trial (--no-reuse-workers)")
    bench.add_argument("--cpus-per-trial", type=float, metavar="N", help="the smoke search's --cpus-per-trial")
    bench.add_argument("--efficiency", metavar="RUN_DIR",
                       help="instead: only the search efficiency of a finished run folder (its trials' epochs x their "
                            "solo epoch times, over its wall time x slots)")
    bench.add_argument("--solo-sample", type=int, default=0, metavar="N",
                       help="with --efficiency: time the solo epochs of at most N of the run's configurations (a seeded "
                            "random choice) and count the others' epochs at their epoch-weighted mean (default: all)")


def add_spaces_command(commands: argparse._SubParsersAction) -> None:
    """`lungsearch spaces`."""
    commands.add_parser(
        "spaces", help="list the bundled search spaces and the question each answers",
        description="List the search spaces installed with lungsearch; `lungsearch run NAME` runs one.")


def add_data_command(commands: argparse._SubParsersAction) -> None:
    """`lungsearch data check` and `lungsearch data prepare`."""
    data_cmd = commands.add_parser("data", help="dataset tools: prepare (unpack a download), check")
    data_cmd.set_defaults(help_parser=data_cmd)
    data_sub = data_cmd.add_subparsers(dest="data_command", metavar="COMMAND", title="commands")
    dc = data_sub.add_parser("check", help="counts, sizes, unreadable files, duplicates and shared patients")
    dc.add_argument("dir", help="the dataset folder (the one holding train/)")
    dp = data_sub.add_parser("prepare", help="unpack a downloaded dataset archive (.zip) into the layout lungsearch reads",
                             description="Unpack the chest X-ray download (e.g. Kaggle's chest-xray-pneumonia zip, "
                                         "whose images sit under chest_xray/chest_xray/ with a second copy and "
                                         "__MACOSX/ entries) into DEST/{train,val,test}/{NORMAL,PNEUMONIA}: junk and "
                                         "duplicate copies skipped, counts checked. The last line printed is the "
                                         "--data to use.")
    dp.add_argument("archive", help="the downloaded .zip archive")
    dp.add_argument("dest", help="the folder to create (it must not exist, or be empty, or hold an earlier prepare "
                                 "of the same archive)")


KERAS_COMMANDS = ("run", "resume", "versus", "report", "evaluate", "predict", "explain", "bench")


def import_keras_quietly() -> None:
    """Import Keras (and its backend) with the process's stderr closed. TensorFlow writes its start-up lines
    (absl's "All log messages before absl::InitializeLog()" and oneDNN's notice, once per library it loads, so
    twice) from C++ to file descriptor 2 before TF_CPP_MIN_LOG_LEVEL applies; a failed import still raises."""
    import os

    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import keras  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    import logging

    # TensorFlow's Python warnings that a predict function was traced again: an ensemble card's members are
    # separate models, each traced once, which TensorFlow counts as retracing. Errors still show.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; the exit status. A bare `lungsearch` (or `lungsearch data`) prints its help and
    exits 0."""
    args = parser().parse_args(argv)
    if args.command is None or (args.command == "data" and args.data_command is None):
        args.help_parser.print_help()
        return 0
    if args.command in KERAS_COMMANDS:
        import_keras_quietly()
    try:
        if args.command in ("run", "resume"):
            return search(args)
        if args.command == "versus":
            return versus(args)
        if args.command == "report":
            from .report import write_report

            print(write_report(args.run_dir, args.top, 3 if args.ensemble is None else args.ensemble,
                               export_ensemble=args.ensemble is not None, data_dir=args.data, rank_by=args.rank_by))
            return 0
        if args.command in ("evaluate", "predict"):
            from . import predict

            if args.command == "predict":
                return predict.predict(args.model, args.images)
            return predict.evaluate_folder(args.model, args.data)
        if args.command == "explain":
            from .explain import explain

            return explain(args.model, args.images, args.out, args.method)
        if args.command == "bench":
            from .bench import run_bench, run_efficiency

            if args.efficiency:
                run_efficiency(args.efficiency, args.solo_sample)
                return 0
            run_bench(args.data, args.smoke, args.search, args.compare_fresh, args.cpus_per_trial)
            return 0
        if args.command == "spaces":
            return list_spaces()
        if args.command == "data":
            if args.data_command == "prepare":
                from .prepare import unpack_archive

                unpack_archive(args.archive, args.dest)
                return 0
            from .check import check_dataset

            text, ok = check_dataset(args.dir)
            print(text)
            return 0 if ok else 1
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 1


def list_spaces() -> int:
    """`lungsearch spaces`: each bundled space's name and the first line of its docstring."""
    from . import space

    found = space.bundled()
    if not found:
        raise UserError(f"no bundled spaces in {space.BUNDLED_DIR}: the installation is incomplete; reinstall "
                        f"lungsearch")
    width = max(map(len, found))
    for name, path in found.items():
        print(f"{name:<{width}}  {space.first_doc_line(path)}")
    print(f"\nrun one with `lungsearch run NAME --data DIR` (add --smoke for a few minutes' try); the files are in "
          f"{space.BUNDLED_DIR}: copy one to start a space of your own and pass its path instead of a name")
    return 0


def versus(args: argparse.Namespace) -> int:
    """`versus`. Exit status 0 when every system that ran had a successful trial; then the last line of stdout is
    the race's folder. A system none of whose trials succeeded: 1, naming the failed systems on stderr (the race's
    record is written all the same); a user error: 2 (main)."""
    from .versus import SystemsFailed, race

    try:
        folder = race(args.space, args.data, args.results, args.smoke, args.budget_epochs, args.budget_minutes,
                      args.systems, image_size=args.image_size, max_epochs=args.max_epochs, seed=args.seed)
    except SystemsFailed as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return err.exit_code
    print(folder)
    return 0


def search(args: argparse.Namespace) -> int:
    """`run` and `resume`. Exit status 0 only when the search finished and its report was written; then the
    last line of stdout is the run folder. Interrupted: 130 by Ctrl-C, 143 by SIGTERM (resume finishes it); every
    trial failed, or the report failed: 1; a user error: 2 (main). The reason goes to stderr."""
    from .run.outcome import exit_code, sigterm_stops_search

    with sigterm_stops_search():
        return exit_code(run_or_resume(args))


def setting_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """What `run`'s flags set of SearchSettings (None where a flag was not given: the space's SETTINGS decide)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(SearchSettings) if hasattr(args, f.name)}


def run_or_resume(args: argparse.Namespace) -> int:
    """`search` with SIGTERM handled as Ctrl-C: its exit status, 130 for either."""
    from .run import SearchIncomplete, resume_search, run_search

    try:
        if args.command == "run":
            run_dir = run_search(args.space, args.data, args.results, smoke=args.smoke, address=args.address,
                                 mlflow=args.mlflow, **setting_overrides(args))
        else:
            run_dir = resume_search(args.run_dir, args.address)
    except SearchIncomplete as err:
        print(err, file=sys.stderr, flush=True)
        return err.exit_code
    except KeyboardInterrupt:  # before the search started: no run folder was left behind
        print("interrupted before the search started: nothing to resume", file=sys.stderr, flush=True)
        return 130
    if not report_quietly(run_dir):
        return 1
    print(run_dir)
    return 0


def report_quietly(run_dir) -> bool:
    """The report at the end of a search; if it fails, say so and how to retry it (the search's results are
    saved), and return False: `run` then exits 1."""
    try:
        from .report import write_report

        write_report(run_dir)
        return True
    except Exception as err:  # noqa: BLE001  the search's results are already saved
        print(f"warning: the report for {run_dir} failed ({type(err).__name__}: {err}); the search's results are "
              f"saved in {run_dir}; retry the report with `python -m lungsearch report {run_dir}`", file=sys.stderr)
        return False
