"""How many configurations a finished search evaluated in a given wall time, and what its stages found.

Reads a run folder (no training): counts the sampled configurations that reached their first judgement (the
first epoch's objective) within `--seconds` of the search's start, as the driver received them (budget.csv,
written by a search with a budget; else each trial's result.json timestamps), and prints the two-stage
figures the report gives: the search stage's size, the confirmed ranking, whether the first place held, the
rank correlations between fidelities and the final model's choice on validation.

    python benchmarks/search_throughput.py RUN_DIR [--seconds 1148]

The last line is a JSON object with every figure.
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lungsearch import confirmation, store  # noqa: E402


def first_epochs(run_dir: Path) -> pd.DataFrame:
    """Each search-stage trial that trained an epoch: its name, whether it is a fixed point, and the seconds from
    the first trial's start (attempts/*.log) to its first epoch's result (result.json's timestamp)."""
    rows, starts = [], []
    for result in sorted((run_dir / "ray").glob("*/result.json")):
        trial = result.parent.name
        log = run_dir / "attempts" / f"{trial}.log"
        if log.is_file() and log.read_text().strip():
            starts.append(datetime.fromisoformat(log.read_text().split()[0]).timestamp())
        lines = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        first = next((r for r in lines if r.get("epoch") == 1), None)
        if first:
            params = store.read_json(result.parent / "params.json")
            rows.append({"trial": trial, "at": first["timestamp"], "fixed_point": params.get("fixed_point", "")})
    table = pd.DataFrame(rows)
    table["elapsed_s"] = table["at"] - min(starts)
    return table.sort_values("elapsed_s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--seconds", type=float, default=1148.0, help="wall time to count configurations in (default: "
                                                                  "1148, the one-stage robust search measured before)")
    args = p.parse_args()
    run_dir = args.run_dir.resolve()
    trials = pd.read_csv(run_dir / "trials.csv", dtype={"fixed_point": str, "confirms": str}).fillna(
        {"fixed_point": "", "confirms": ""})
    history = pd.read_csv(run_dir / "history.csv")
    manifest = store.read_json(run_dir / "manifest.json")
    firsts = first_epochs(run_dir)
    sampled = firsts[firsts["fixed_point"] == ""]
    within = int((sampled["elapsed_s"] <= args.seconds).sum())
    search = confirmation.stage_of(trials, "search")
    confirmed = confirmation.summary(trials)
    fid = confirmation.fidelity(trials, history, int(manifest["settings"]["grace_period"]))
    out = {"run": run_dir.name, "seconds": args.seconds, "configurations_within": within,
           "sampled_configurations": int((search["fixed_point"] == "").sum()),
           "search_epochs_trained": int(search["epochs_run"].sum()),
           "search_wall_s": manifest.get("search_wall_s"),
           "statuses": search["status"].value_counts().to_dict(),
           "first_place": confirmation.first_place(confirmed), "fidelity": fid,
           "confirmed": confirmed[["configuration", "seeds", "objective_mean", "objective_std", "search_objective",
                                   "search_rank"]].to_dict("records") if not confirmed.empty else []}
    card = run_dir / "best_model.json"
    if card.is_file():
        final = store.read_json(card).get("final_choice")
        out["final_choice"] = final
    print(f"{within} sampled configurations reached their first epoch within {args.seconds:g} s of the search's "
          f"start; {out['sampled_configurations']} in the search stage ({out['search_epochs_trained']} epochs)")
    if not confirmed.empty:
        print(confirmed[["rank", "configuration", "seeds", "objective_mean", "objective_std", "search_objective",
                         "search_rank"]].to_string(index=False))
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
