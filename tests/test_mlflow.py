"""--mlflow: Ray Tune's MLflow logger, built as `run` builds it and driven with a fake trial against a local file
store (no Ray search); without MLflow, a UserError that says how to install it."""
import importlib.util
from pathlib import Path

import pytest

from lungsearch import run
from lungsearch.config import UserError
from lungsearch.run import progress, tracking

needs_mlflow = pytest.mark.skipif(importlib.util.find_spec("mlflow") is None,
                                  reason='MLflow is not installed (pip install -e ".[mlflow]" or mlflow-skinny)')


class Trial:
    """What MLflowLoggerCallback reads of a Tune trial (hashable, as Tune's are)."""

    def __init__(self, trial_id: str, config: dict):
        self.trial_id, self.config, self.last_result, self.status = trial_id, config, {}, "RUNNING"
        self.local_path = None

    def __str__(self) -> str:
        return progress.trial_name(self)


@needs_mlflow
def test_each_trial_is_an_mlflow_run_with_its_parameters_and_metrics_per_epoch(tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE")  # run sets it (a folder named is consent to a file store)
    uri = tracking.mlflow_uri("mlruns")  # a folder, as the user typed it: an absolute file:// URI
    assert uri == (tmp_path / "mlruns").resolve().as_uri()
    assert tracking.mlflow_uri(uri) == uri
    run_dir = tmp_path / "results" / "20260101-120000-ablation"
    callback = tracking.mlflow_callback(uri, run_dir)
    assert isinstance(callback, MLflowLoggerCallback)
    assert (callback.tracking_uri, callback.experiment_name) == (uri, run_dir.name)

    callback.setup()
    trial = Trial("ab12_00003", {"learning_rate": 0.003, "batch_norm": True, "fixed_point": ""})
    callback.on_trial_start(iteration=0, trials=[trial], trial=trial)
    for n in (1, 2):
        result = {"training_iteration": n, "epoch": n, "objective": 0.8 + n / 100, "val_auc": 0.8 + n / 100,
                  "node_ip": "127.0.0.1", **({"final": True, "test_auc": 0.91, "test_f1": 0.88} if n == 2 else {})}
        trial.last_result = result
        callback.on_trial_result(iteration=n, trials=[trial], trial=trial, result=result)
    callback.on_trial_complete(iteration=3, trials=[trial], trial=trial)

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(run_dir.name)
    [logged] = client.search_runs([experiment.experiment_id])
    assert logged.info.run_name == "trial_ab12_00003" and logged.info.status == "FINISHED"
    assert logged.data.params["learning_rate"] == "0.003" and logged.data.params["batch_norm"] == "True"
    assert logged.data.tags["lungsearch_run_folder"] == str(run_dir)
    assert [(m.step, round(m.value, 4)) for m in client.get_metric_history(logged.info.run_id, "objective")] \
        == [(1, 0.81), (2, 0.82)]
    assert logged.data.metrics["test_auc"] == 0.91  # the test metrics: the last step's
    assert "node_ip" not in logged.data.metrics
    mlflow.set_tracking_uri(None)


@needs_mlflow
def test_a_tracking_uri_mlflow_cannot_use_is_a_user_error():
    with pytest.raises(UserError, match="--mlflow nosuch://host: MLflow cannot log there"):
        tracking.mlflow_uri("nosuch://host")


@needs_mlflow
def test_an_mlflow_server_that_does_not_answer_is_a_user_error_before_any_work(tmp_path, capsys):
    import http.server
    import threading
    import time

    from lungsearch import cli

    started = time.time()
    with pytest.raises(UserError, match=r"--mlflow http://127.0.0.1:1: no MLflow server answers there \(.*refused"):
        tracking.mlflow_uri("http://127.0.0.1:1")
    args = ["run", "spaces/report.py", "--data", str(tmp_path), "--results", str(tmp_path / "results")]
    assert cli.main([*args, "--mlflow", "http://127.0.0.1:1"]) == 2
    assert "no MLflow server answers there" in capsys.readouterr().err and not (tmp_path / "results").exists()
    assert time.time() - started < 30

    class Health(http.server.BaseHTTPRequestHandler):  # a server that answers, if only with an error status
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    with http.server.HTTPServer(("127.0.0.1", 0), Health) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        uri = f"http://127.0.0.1:{server.server_address[1]}"
        assert tracking.mlflow_uri(uri) == uri
        server.shutdown()


def test_without_mlflow_the_flag_says_how_to_install_it(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(UserError, match=r'--mlflow http://mlflow:5000: MLflow is not installed; install it with '
                                        r'`pip install -e "\.\[mlflow\]"`'):
        tracking.mlflow_uri("http://mlflow:5000")
    # run_search refuses before any work: nothing read, no Ray started, no run folder
    with pytest.raises(UserError, match="MLflow is not installed"):
        run.run_search(Path("no-such-space.py"), str(tmp_path), tmp_path / "results", mlflow="mlruns")
    assert not (tmp_path / "results").exists()
