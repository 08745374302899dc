"""The two-stage search's parts without Ray: seeds, the low-fidelity training share, the confirmation leaderboard,
rank correlations, the final-model rule, what TPE is told, and parameter importance."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from ray.tune.search import Searcher

from conftest import make_dataset
from lungsearch import confirmation, data, importance, models, train
from lungsearch.config import SearchSettings, TrialConfig, UserError
from lungsearch.run.searchers import FixedPointsFirst


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("xrays"), {"train": 16, "test": 6})


def config(folder: Path, **changes) -> TrialConfig:
    return TrialConfig(data_dir=str(folder), cache_dir=str(folder.parent / "cache"), split="target", image_size=32,
                       conv_blocks=2, **changes)


def test_the_split_seed_and_the_training_seed_are_independent(folder):
    """Same split seed, other training seed: the same images in every part, other initial weights. Another split
    seed: other parts."""
    one, two = config(folder, seed=0), config(folder, seed=1)
    x1, y1, parts1 = train.trial_data(one)
    x2, y2, parts2 = train.trial_data(two)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert all(np.array_equal(parts1[p][0], parts2[p][0]) for p in parts1)
    train.reset_state(one)
    w1 = models.build(one).get_weights()
    train.reset_state(two)
    w2 = models.build(two).get_weights()
    assert not np.allclose(w1[0], w2[0])
    train.reset_state(one)
    assert np.allclose(models.build(one).get_weights()[0], w1[0])  # the training seed alone fixes the weights
    _, _, parts3 = train.trial_data(config(folder, split_seed=5))
    assert not np.array_equal(parts3["val"][1], parts1["val"][1]) or not np.array_equal(parts3["val"][0],
                                                                                          parts1["val"][0])


def test_a_low_fidelity_trial_trains_on_a_share_of_whole_patients_of_both_classes(folder):
    ds = data.scan(folder)
    split = data.make_split(ds, "target", seed=0)
    share = data.training_share(ds, split["train"], 0.3, seed=0)
    assert set(share) < set(split["train"]) and 0.2 * len(split["train"]) < len(share) < 0.45 * len(split["train"])
    assert set(ds.labels[share]) == {0, 1}
    kept = {ds.patients[i] for i in share}
    assert all(ds.patients[i] not in kept for i in set(split["train"]) - set(share))  # whole patients
    assert np.array_equal(share, data.training_share(ds, split["train"], 0.3, seed=0))  # every trial: the same
    assert np.array_equal(data.training_share(ds, split["train"], 1.0, seed=0), split["train"])
    rows = []
    train.run_trial({**config(folder, data_fraction=0.3, max_epochs=1).to_dict()}, rows.append)
    full = []
    train.run_trial({**config(folder, max_epochs=1).to_dict()}, full.append)
    assert rows[-1]["train_images"] == len(share) < full[-1]["train_images"] == len(split["train"])
    assert all(r["val_f1_tuned"] >= r["val_f1"] for r in rows + full)  # F1 at the F1-best validation threshold


def test_fidelity_and_confirmation_settings_are_checked():
    with pytest.raises(UserError, match="confirm_top must be 1 or more when the search stage trains at a lower"):
        SearchSettings(search_fraction=0.5)
    with pytest.raises(UserError, match=r"search_fraction must be in \(0, 1\], got 0.0"):
        SearchSettings(search_fraction=0.0, confirm_top=1)
    with pytest.raises(UserError, match=r"data_fraction must be in \(0, 1\], got 1.5"):
        TrialConfig(data_fraction=1.5)
    assert SearchSettings(search_epochs=9, max_epochs=20, confirm_top=2).stage_epochs == 9
    assert SearchSettings(max_epochs=20).stage_epochs == 20


def trials_table() -> pd.DataFrame:
    """Search trials a (stopped by ASHA, best objective), b, c and base; confirmations of b, c and base."""
    rows = [("a", "", "search", "", 0, "stopped", 0.99), ("b", "", "search", "", 0, "finished", 0.95),
            ("c", "", "search", "", 0, "finished", 0.97), ("base_1", "base", "search", "", 0, "finished", 0.90),
            ("cb0", "", "confirm", "b", 0, "finished", 0.90), ("cb1", "", "confirm", "b", 1, "finished", 0.70),
            ("cc0", "", "confirm", "c", 0, "finished", 0.85), ("cc1", "", "confirm", "c", 1, "finished", 0.84),
            ("cbase0", "base", "confirm", "base_1", 0, "finished", 0.80),
            ("cbase1", "base", "confirm", "base_1", 1, "finished", 0.82)]
    return pd.DataFrame(rows, columns=["trial", "fixed_point", "stage", "confirms", "seed", "status", "objective"])


def test_confirmed_configurations_are_ranked_by_their_seed_mean_not_their_luckiest_seed():
    table = confirmation.summary(trials_table())
    assert list(table["configuration"]) == ["c", "base", "b"]  # b has the best single seed (0.90), c the best mean
    assert table.loc[0, "objective_mean"] == pytest.approx(0.845)
    assert table.loc[2, "objective_std"] == pytest.approx(np.std([0.9, 0.7], ddof=1))
    assert list(table["seeds"]) == [2, 2, 2] and table.loc[0, "search_rank"] == 2
    held = confirmation.first_place(table)
    assert held == {"search_first": "c", "confirmed_first": "c", "held": True}


def test_a_configuration_scored_on_fewer_seeds_is_ranked_after_those_scored_on_every_seed():
    once = pd.DataFrame([("bn_aug_1", "bn_aug", "search", "", 0, "finished", 0.80),
                         ("cbn0", "bn_aug", "confirm", "bn_aug_1", 0, "finished", 0.99)],  # one seed, best of all
                        columns=trials_table().columns)
    table = confirmation.summary(pd.concat([trials_table(), once], ignore_index=True))
    assert list(table["configuration"]) == ["c", "base", "b", "bn_aug"]
    assert list(table["rank"]) == [1, 2, 3, 4] and list(table["all_seeds"]) == [True, True, True, False]
    assert confirmation.first_place(table)["confirmed_first"] == "c"
    failed = trials_table()  # a seed of c that failed: c now has one score against two for the others
    failed.loc[failed["trial"] == "cc1", "objective"] = np.nan
    assert list(confirmation.summary(failed)["configuration"]) == ["base", "b", "c"]


def test_the_picked_configurations_are_those_asha_let_finish_then_the_rest():
    assert confirmation.pick(trials_table(), 2) == ["c", "b"]
    assert confirmation.pick(trials_table(), 3) == ["c", "b", "a"]


def test_spearman_matches_a_worked_example_with_ties():
    # x ranks 1, 2.5, 2.5, 4; y ranks 1, 2, 3, 4: Pearson of the ranks is 0.9487
    assert confirmation.spearman([1, 2, 2, 3], [10, 20, 30, 40]) == pytest.approx(0.9486833, abs=1e-6)
    assert confirmation.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert np.isnan(confirmation.spearman([1, 2], [1, 2]))


def test_the_final_model_is_chosen_on_validation_alone():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    good, poor = y + rng.normal(0, 0.6, 200), y + rng.normal(0, 2.0, 200)
    chosen, scores = confirmation.choose_final({"single": (y, poor), "ensemble": (y, good)})
    assert chosen == "ensemble" and scores["ensemble"] > scores["single"]
    assert confirmation.choose_final({"single": (y, good), "ensemble": (y, good)})[0] == "single"  # a tie: simpler


class Recorder(Searcher):
    """A searcher that suggests nothing and records what it is told."""

    def __init__(self):
        super().__init__(metric="objective", mode="max")
        self.results, self.completed = [], []

    def suggest(self, trial_id):
        return {"learning_rate": 0.001}

    def on_trial_result(self, trial_id, result):
        self.results.append((trial_id, result["training_iteration"]))

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.completed.append((trial_id, result and result["training_iteration"]))


def test_the_model_based_searcher_learns_each_trial_at_the_first_rung_once():
    inner = Recorder()
    outer = FixedPointsFirst(inner, [{"fixed_point": "base"}], tell_at=2)
    assert outer.suggest("f") == {"fixed_point": "base"} and outer.suggest("t") == {"learning_rate": 0.001}
    for i in (1, 2, 3):
        outer.on_trial_result("t", {"training_iteration": i})
        outer.on_trial_result("f", {"training_iteration": i})
    outer.on_trial_complete("t", {"training_iteration": 3})
    outer.on_trial_complete("f", {"training_iteration": 3})
    assert inner.results == [("t", 1)] and inner.completed == [("t", 2)]
    outer.suggest("short")
    outer.on_trial_complete("short", {"training_iteration": 1})  # stopped before the rung: told its last result
    assert inner.completed[-1] == ("short", 1)


def test_importance_finds_the_one_knob_that_matters():
    rng = np.random.default_rng(0)
    n = 60
    trials = pd.DataFrame({"trial": [f"t{i}" for i in range(n)], "fixed_point": "", "stage": "search",
                           "cfg_learning_rate": 10 ** rng.uniform(-4, -2, n),
                           "cfg_batchnorm": rng.integers(0, 2, n).astype(bool),
                           "cfg_dense_units": rng.integers(32, 512, n)})
    good = -np.abs(np.log10(trials["cfg_learning_rate"]) + 3)  # best at 1e-3
    history = pd.DataFrame({"trial": trials["trial"], "stage": "search", "epoch": 1,
                            "objective": 0.9 + 0.05 * good + rng.normal(0, 0.002, n)})
    table = importance.at_common_budget(trials, history, 1)
    scores = importance.importances(table)
    assert len(table) == n and max(scores, key=scores.get) == "learning_rate", scores
    assert importance.importances(table.head(5)) is None  # too few trials to say


def test_rank_by_f1_ranks_by_validation_f1_at_the_validation_threshold():
    from lungsearch import analysis

    table = trials_table().assign(val_f1=0.5, val_f1_tuned=[0.1, 0.2, 0.3, 0.4, 0.9, 0.9, 0.5, 0.6, 0.8, 0.7])
    assert list(analysis.leaderboard(table, "f1")["trial"][:3]) == ["cb0", "cb1", "cbase0"]
    assert list(analysis.leaderboard(table)["trial"][:2]) == ["a", "c"]
    by_f1 = confirmation.summary(table, "val_f1_tuned")
    assert list(by_f1["configuration"]) == ["b", "base", "c"] and set(by_f1["ranked_by"]) == {"val_f1_tuned"}
    y = np.array([0, 0, 1, 1])
    scores = confirmation.choose_final({"a": (y, np.array([0.1, 0.6, 0.7, 0.9])),
                                        "b": (y, np.array([0.1, 0.2, 0.3, 0.4]))}, "f1")[1]
    assert scores == {"a": 1.0, "b": 1.0}  # both separate the classes at some validation threshold
