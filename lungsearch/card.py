"""The model card of an exported model (after Mitchell et al. 2019, with the items CLAIM and TRIPOD+AI ask
for): intended and out-of-scope use, training and evaluation data, metrics with intervals at each threshold,
calibration, the measured shift between distributions and the known limitations. It goes into the report,
into the exported card (best_model.json, ensemble.json) under "model_card" and beside it as model_card.md."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from . import store
from .analysis import SPLIT_NAMES, Analysis, Evaluation, fmt
from .clinical import Review

NEAR_TRIVIAL = 0.1  # a specificity or recall below this: the model calls (nearly) every image one class
INTENDED_USE = ("Research on pediatric chest X-ray pneumonia classification: comparing model designs and search "
                "strategies on the Kermany dataset (children aged one to five, one hospital), and a starting point "
                "for a study that validates a model on the population it is meant for.")
OUT_OF_SCOPE = ("Not a diagnostic device and not validated for clinical use: no decision about a patient may rest "
                "on it. Not for adults, other hospitals or scanners, lateral views, or images other than frontal "
                "chest X-rays, without a new validation. It does not tell bacterial from viral pneumonia and says "
                "nothing about other findings.")


def near_trivial(m: dict[str, float]) -> str:
    """Words for a model that calls (nearly) every image one class at a threshold, else ''."""
    if m["specificity"] < NEAR_TRIVIAL:
        return f"calls nearly every image PNEUMONIA (specificity {m['specificity']:.3f})"
    if m["recall"] < NEAR_TRIVIAL:
        return f"calls nearly every image NORMAL (recall {m['recall']:.3f})"
    return ""


def metric_rows(e: Evaluation, rv: Review) -> list[dict[str, Any]]:
    """Test sensitivity and specificity (with intervals) at each threshold the card offers."""
    rows = [{"threshold": t, "chosen": why, "sensitivity": m["recall"], "sensitivity_ci95": ci["recall"],
             "specificity": m["specificity"], "specificity_ci95": ci["specificity"], "f1": m["f1"], "f1_ci95": ci["f1"]}
            for t, why, m, ci in ((0.5, "default", e.test, e.ci),
                                  (e.threshold, "maximises validation F1", e.test_tuned, e.ci_tuned))]
    for key, op in rv.operating.get(e.name, {}).items():
        rows.append({"threshold": op["threshold"], "chosen": f"{op['held']} at least {op['floor']:.2f} on validation",
                     "sensitivity": op["test_recall"], "sensitivity_ci95": op["test_recall_ci95"],
                     "specificity": op["test_specificity"], "specificity_ci95": op["test_specificity_ci95"]})
    return rows


def limitations(a: Analysis, e: Evaluation, rv: Review) -> list[str]:
    """Known limitations, with the figures this run measured."""
    m = a.run.manifest
    out = ["One public dataset from one hospital (Guangzhou Women and Children's Medical Center, children aged "
           "one to five): no external validation on another site, scanner or population.",
           "Labels are the dataset's own image-level diagnoses; no second reading and no radiology report."]
    if e.holdout:
        out.append(f"Measured shift: AUC {fmt(e.holdout['auc'], 3)} on the in-distribution holdout against "
                   f"{fmt(e.test['auc'], 3)} on the target-distribution test part (gap "
                   f"{fmt(e.holdout['auc'] - e.test['auc'], 3)}): performance depends on where the images come from.")
    else:
        out.append(f"No shift between distributions was measured: the {m['run_constants']['split']} split has no "
                   f"in-distribution holdout.")
    for at, values in (("0.5", e.test), ("the validation threshold", e.test_tuned)):
        said = near_trivial(values)
        if said:
            out.append(f"At {at} the model {said} on the test part.")
    if m.get("smoke") or int(m["run_constants"].get("data_limit", 0) or 0):
        out.append("A smoke (reduced) run: small images, few epochs and a subset of the data; its figures are a "
                   "test of the tool, not of the model design.")
    share = rv.border_share.get("all")
    if share is not None and share == share:
        out.append(f"Saliency ({rv.saliency_method}): on average {share:.2f} of it lies in the outer border of "
                   f"the image, where no lung is (0.36 for a map spread evenly); a high share points to shortcuts "
                   f"(text markers, borders, devices).")
    return out


def model_card(a: Analysis, e: Evaluation, rv: Review) -> dict[str, Any]:
    """The model card of evaluated model `e` as a JSON-ready dict."""
    m, split = a.run.manifest, a.run.manifest["data"]["split"]
    cal = rv.calibrated.get(e.name)
    return {
        "intended_use": INTENDED_USE, "out_of_scope_use": OUT_OF_SCOPE,
        "data": {"source": f"{m['data']['dir']} (fingerprint {m['data']['fingerprint']})",
                 "split": SPLIT_NAMES.get(split["protocol"], split["protocol"]), "parts": split["parts"],
                 "part_sources": split.get("sources", {}),
                 "patient_grouping": "patient keys from file names (personN_, IM-NNNN-, NORMALn-IM-NNNN-); "
                                     f"{split.get('unknown_patient_keys', 0)} files without one count as their own "
                                     f"patient; patients in two parts: {len(split.get('patients_in_two_parts', []))}",
                 "exclusions": {"unreadable_images": len(m["data"].get("unreadable", [])),
                                "other_files": int(m["data"].get("ignored_non_images", 0)),
                                "images_in_no_part": sum(v["images"] for v in rv.flow.get("unused", {}).values())}},
        "metrics_on_test": metric_rows(e, rv),
        "auc_test": e.test["auc"], "auc_test_ci95": e.ci["auc"],
        "calibration": cal.to_dict() if cal else None,
        "shift": ({"holdout_auc": e.holdout["auc"], "test_auc": e.test["auc"],
                   "gap": e.holdout["auc"] - e.test["auc"]} if e.holdout else None),
        "limitations": limitations(a, e, rv),
    }


def card_markdown(name: str, card: dict[str, Any]) -> str:
    """model_card.md: the card in words and one table."""
    def ci(v) -> str:
        return f"[{fmt(v[0], 3)}, {fmt(v[1], 3)}]" if v else ""

    cal = card.get("calibration")
    lines = [f"# Model card: {name}", "", "## Intended use", "", card["intended_use"], "", "## Out-of-scope use", "",
             card["out_of_scope_use"], "", "## Data", ""]
    d = card["data"]
    lines += [f"- source: `{d['source']}`", f"- split: {d['split']}", f"- patient grouping: {d['patient_grouping']}",
              f"- excluded: {d['exclusions']['unreadable_images']} unreadable images, {d['exclusions']['other_files']} "
              f"other files, {d['exclusions']['images_in_no_part']} images in no part",
              *(f"- {p}: {v['images']} images ({v['NORMAL']} NORMAL, {v['PNEUMONIA']} PNEUMONIA), {v['patients']} "
                f"patients; {d['part_sources'].get(p, '')}" for p, v in d["parts"].items()),
              "", "## Test metrics (95% patient bootstrap intervals)", "",
              f"AUC {fmt(card['auc_test'])} {ci(card['auc_test_ci95'])}.", "",
              "| threshold | chosen | sensitivity | specificity |", "| --- | --- | --- | --- |",
              *(f"| {r['threshold']:.4f} | {r['chosen']} | {fmt(r['sensitivity'])} {ci(r['sensitivity_ci95'])} | "
                f"{fmt(r['specificity'])} {ci(r['specificity_ci95'])} |" for r in card["metrics_on_test"]),
              "", "## Calibration", ""]
    lines += [f"Platt scaling fitted on the validation part: a {cal['a']:.3f}, b {cal['b']:.3f} (temperature "
              f"{cal['temperature']:.2f}). Test Brier score {fmt(cal['test_before']['brier'])} before, "
              f"{fmt(cal['test_after']['brier'])} after; ECE {fmt(cal['test_before']['ece'])} before, "
              f"{fmt(cal['test_after']['ece'])} after. The F1 threshold {cal['threshold_raw']:.4f} is "
              f"{cal['threshold_calibrated']:.4f} on the calibrated scale (the same labels); `predict` and "
              f"`evaluate` print calibrated probabilities."] if cal else ["Not calibrated."]
    lines += ["", "## Limitations", "", *(f"- {x}" for x in card["limitations"]), ""]
    return "\n".join(lines)


def write_cards(a: Analysis, rv: Review) -> list[Path]:
    """Add the model card and the calibration map to the exported cards (best_model.json, and ensemble.json
    where exported) and write model_card.md beside best_model.json; the paths written."""
    written = []
    for card_file, ev in ((a.run.dir / "best_model.json", a.best), (a.run.dir / "ensemble.json", a.ensemble)):
        if ev is None or not card_file.is_file():
            continue
        exported = store.read_json(card_file)
        mc = model_card(a, ev, rv)
        exported.update({"model_card": mc, "calibration": mc["calibration"]})
        store.write_json(card_file, exported)
        written.append(card_file)
        if card_file.name == "best_model.json":
            md = a.run.dir / "model_card.md"
            md.write_text(card_markdown(ev.name, mc))
            written.append(md)
    return written
