import json
import math
import subprocess
import sys
import time

import pytest

from conftest import REPO


def test_search_efficiency_times_a_sample_and_counts_the_rest_at_its_epoch_weighted_mean(tmp_path, monkeypatch):
    from lungsearch import bench

    # a finished run folder of four trials on one GPU: 1, 1, 2 and 4 epochs in 20 s of search
    rates = [0.001, 0.002, 0.003, 0.004]
    (tmp_path / "manifest.json").write_text(json.dumps({
        "resources": {"gpu_per_trial": 0.25, "cpu_per_trial": 1}, "cluster": {"GPU": 1, "CPU": 16},
        "search_wall_s": 20.0, "trial_startup_s_mean": 0.5, "conditions": {}}))
    rows = []
    for k, (rate, epochs) in enumerate(zip(rates, [1, 1, 2, 4])):
        (tmp_path / "ray" / f"t{k}").mkdir(parents=True)
        (tmp_path / "ray" / f"t{k}" / "params.json").write_text(json.dumps({"learning_rate": rate}))
        rows += [f"t{k},{e + 1}" for e in range(epochs)]
    (tmp_path / "history.csv").write_text("trial,epoch\n" + "\n".join(rows) + "\n")
    timed = []

    def solo_epoch_times(configs, cpus):  # a solo epoch takes 1000 x the learning rate seconds
        timed.extend(configs)
        return [1000 * c.learning_rate for c in configs]

    monkeypatch.setattr(bench, "solo_epoch_times", solo_epoch_times)
    every = bench.search_efficiency(tmp_path, {})
    assert len(timed) == 4 and every["solo_timed"] == every["configs"] == 4
    assert every["epochs"] == 8 and every["epochs_per_s"] == 0.4
    assert every["efficiency"] == pytest.approx((1 + 2 + 2 * 3 + 4 * 4) / 20, abs=0.001)
    timed.clear()
    sampled = bench.search_efficiency(tmp_path, {}, sample=2)
    assert len(timed) == 2 and sampled["solo_timed"] == 2 and sampled["configs"] == 4
    epochs = {0.001: 1, 0.002: 1, 0.003: 2, 0.004: 4}
    mean = sum(epochs[c.learning_rate] * 1000 * c.learning_rate for c in timed) / sum(
        epochs[c.learning_rate] for c in timed)
    assert sampled["solo_epoch_s_mean"] == pytest.approx(mean, abs=0.001)
    assert sampled["efficiency"] == pytest.approx(mean * 8 / 20, abs=0.001)


def test_bench_prints_a_table_then_one_json_line(dataset, cache_dir):
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "lungsearch", "bench", "--smoke", "--no-search", "--data",
                          str(dataset)], cwd=REPO, capture_output=True, text=True, timeout=900)
    elapsed = time.perf_counter() - started
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    figures = json.loads(lines[-1])
    assert set(figures["per_model"]) == {"base", "bn_aug", "bn_aug_dropout"}
    assert figures["image_size"] == 48 and 0 < figures["images"] <= 480  # the sizes of run --smoke
    assert "trials_per_hour" not in figures and "search_efficiency" not in figures
    # every time is a real measurement: positive, finite, and shorter than the whole command took
    startup = [figures["trial_startup_cold_s"], figures["trial_startup_warm_s"]]
    for value in [*startup, *(v for m in figures["per_model"].values() for v in m.values())]:
        assert math.isfinite(value) and 0 < value < elapsed
    # the headline figures are the base model's, and the table printed above says the same
    base = figures["per_model"]["base"]
    assert (figures["epoch_s"], figures["aug_epoch_s"]) == (base["epoch_s"], base["aug_epoch_s"])
    table = {line.split()[0]: [float(v) for v in line.split()[1:]] for line in lines
             if line.split() and line.split()[0] in figures["per_model"]}
    assert set(table) == set(figures["per_model"])
    ratios = []
    for name, (plain, aug, ratio) in table.items():
        assert plain == pytest.approx(figures["per_model"][name]["epoch_s"], abs=0.006)
        assert aug == pytest.approx(figures["per_model"][name]["aug_epoch_s"], abs=0.006)
        ratios.append(ratio)
    assert figures["aug_ratio"] == pytest.approx(table["base"][2], abs=0.006)
    assert figures["aug_ratio_max"] == pytest.approx(max(ratios), abs=0.006)
    assert figures["aug_ratio"] <= figures["aug_ratio_max"]
    # a reused worker has Python, Keras and the images loaded: its start-up is the shorter
    assert figures["trial_startup_warm_s"] < figures["trial_startup_cold_s"]


@pytest.mark.parametrize("flags, message", [
    (["--cpus-per-trial", "-1"], "--cpus-per-trial must be 0 (chosen from the machine) or more, got -1"),
    (["--no-search", "--cpus-per-trial", "2"], "--cpus-per-trial sets the smoke search, which --no-search skips"),
    (["--no-search", "--compare-fresh-workers"], "--compare-fresh-workers sets the smoke search, which --no-search"),
])
def test_bad_or_idle_options_are_refused_before_any_work(flags, message, tmp_path, capsys):
    from lungsearch import cli

    started = time.perf_counter()
    assert cli.main(["bench", "--data", str(tmp_path / "nowhere"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert time.perf_counter() - started < 10
