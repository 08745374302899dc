"""Command line: argparse and dispatch only."""
from __future__ import annotations

import argparse
import sys

from .config import SEARCH_SPLITS, UserError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lungsearch", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a search space (the report's fixed points included)")
    run.add_argument("space", help="a space file, e.g. spaces/ablation.py")
    run.add_argument("--data", help="dataset folder with train/ (default: $LUNGSEARCH_DATA)")
    run.add_argument("--split", choices=list(SEARCH_SPLITS),
                     help="split protocol: target (validate on half of the dataset's own test/ patients, test on "
                          "the other half), patient (patient-grouped, validation from train/), report (the source "
                          "report's random 80:20 image split); default: the space's, else auto (target when the "
                          "dataset has test/, else patient)")
    run.add_argument("--image-size", type=int, help="image side in pixels (report: 150)")
    run.add_argument("--max-epochs", type=int, help="epoch budget per trial (report: 50)")
    run.add_argument("--num-samples", type=int, help="sampled trials, not counting the fixed points")
    run.add_argument("--seed", type=int)
    run.add_argument("--smoke", action="store_true", help="tiny images, few epochs and images: minutes on a laptop")
    run.add_argument("--results", "--storage", dest="results", default="results",
                     help="folder for run folders (default: results); on a cluster, a path every node reaches")
    run.add_argument("--address", help="join a Ray cluster: 'auto' or HOST:PORT (default: start a local one)")
    run.add_argument("--cpus-per-trial", type=float)
    run.add_argument("--gpus-per-trial", type=float, help="fractions share a GPU, e.g. 0.25")
    run.add_argument("--max-concurrent", type=int)
    run.add_argument("--max-failures", type=int, help="retries of a trial that raises (default 1)")
    run.add_argument("--searcher", choices=["random", "tpe"])
    run.add_argument("--no-fixed-points", dest="fixed_points", action="store_const", const=False,
                     help="skip the report's three models")

    resume = sub.add_parser("resume", help="finish an interrupted search without rerunning finished trials")
    resume.add_argument("run_dir")
    resume.add_argument("--address", help="join a Ray cluster: 'auto' or HOST:PORT")

    report = sub.add_parser("report", help="rank trials, evaluate the best on test, write report.html and export "
                                           "the best model (run does this at its end)")
    report.add_argument("run_dir", help="a run folder (the last line `run` printed)")
    report.add_argument("--top", type=int, default=5, help="top trials to evaluate on test (default 5)")
    report.add_argument("--ensemble", type=int, help="average the top K trials; also exports ensemble.json "
                                                     "(default: 3, shown in the report only; 0: none)")
    report.add_argument("--data", help="the run's dataset, if it moved (default: the folder the run used)")

    evaluate = sub.add_parser("evaluate", help="metrics of a model on a dataset folder's test/ part (or all images)")
    evaluate.add_argument("model", help="a .keras file, best_model.json or ensemble.json")
    evaluate.add_argument("--data", help="dataset folder (default: $LUNGSEARCH_DATA)")

    predict = sub.add_parser("predict", help="probability and label of each image")
    predict.add_argument("model", help="a .keras file, best_model.json or ensemble.json")
    predict.add_argument("images", nargs="+", metavar="IMAGE")

    bench = sub.add_parser("bench", help="time epochs with and without augmentation, trial start-up, trials/hour")
    bench.add_argument("--data", help="dataset folder (default: $LUNGSEARCH_DATA)")
    bench.add_argument("--smoke", action="store_true", help="96 px and 640 images instead of 150 px and all")
    bench.add_argument("--no-search", dest="search", action="store_false", help="skip the trials-per-hour search")

    check = sub.add_parser("data", help="dataset tools")
    check_sub = check.add_subparsers(dest="data_command", required=True)
    dc = check_sub.add_parser("check", help="counts, sizes, unreadable files, duplicates and shared patients")
    dc.add_argument("dir")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command in ("run", "resume"):
            return search(args)
        if args.command == "report":
            from .report import write_report

            print(write_report(args.run_dir, args.top, 3 if args.ensemble is None else args.ensemble,
                               export_ensemble=args.ensemble is not None, data_dir=args.data))
            return 0
        if args.command in ("evaluate", "predict"):
            from . import predict

            if args.command == "predict":
                return predict.predict(args.model, args.images)
            return predict.evaluate(args.model, args.data)
        if args.command == "bench":
            from .bench import run_bench

            run_bench(args.data, args.smoke, args.search)
            return 0
        if args.command == "data":
            from .check import check_dataset

            text, ok = check_dataset(args.dir)
            print(text)
            return 0 if ok else 1
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 1


def search(args: argparse.Namespace) -> int:
    """`run` and `resume`. Exit status 0 only when the search finished and its report was written; then the
    last line of stdout is the run folder. Interrupted: 130 (resume finishes it); every trial failed, or the
    report failed: 1; a user error: 2 (main). The reason goes to stderr."""
    from .run import SearchIncomplete, resume_search, run_search

    try:
        if args.command == "run":
            run_dir = run_search(
                args.space, args.data, args.results, smoke=args.smoke, address=args.address,
                split=args.split, image_size=args.image_size, max_epochs=args.max_epochs,
                num_samples=args.num_samples, seed=args.seed, cpus_per_trial=args.cpus_per_trial,
                gpus_per_trial=args.gpus_per_trial, max_concurrent=args.max_concurrent,
                max_failures=args.max_failures, searcher=args.searcher, fixed_points=args.fixed_points,
            )
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
