"""MLflow tracking (--mlflow): the tracking URI, checked, and Ray Tune's MLflow logger for a run folder."""
from __future__ import annotations

import importlib.util
import os
import urllib.error
import urllib.request
from pathlib import Path

from ..config import UserError

PROBE_TIMEOUT_S = 10.0  # an MLflow server must answer this fast: MLflow itself retries a dead one for minutes


def mlflow_uri(uri: str) -> str:
    """The MLflow tracking URI to log to, checked: a URI as given, a folder as an absolute file:// URI (so that
    resume, from any folder, logs to the same place). MLflow 3 keeps such a file store in maintenance mode and
    refuses it unless MLFLOW_ALLOW_FILE_STORE is set: a folder the user names is taken as that consent. A
    UserError when MLflow is not installed, cannot open the store, or no server answers at an http(s) URI."""
    if importlib.util.find_spec("mlflow") is None:
        raise UserError(f'--mlflow {uri}: MLflow is not installed; install it with `pip install -e ".[mlflow]"` '
                        f'(or `pip install mlflow-skinny`), or leave out --mlflow')
    if "://" not in uri and uri.split(":", 1)[0] not in ("file", "databricks", "databricks-uc", "sqlite"):
        uri = Path(uri).expanduser().resolve().as_uri()
    elif uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):  # a database file relative to here
        uri = f"sqlite:///{Path(uri[len('sqlite:///'):]).expanduser().resolve()}"
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    try:
        MlflowClient(tracking_uri=uri)  # opens the store (a server is not contacted yet)
    except Exception as err:  # MLflow's own errors: a scheme it does not know, a driver it lacks
        raise UserError(f"--mlflow {uri}: MLflow cannot log there: {str(err).strip().splitlines()[0]}") from None
    if uri.split("://", 1)[0].lower() in ("http", "https"):
        check_server(uri)
    return uri


def check_server(uri: str) -> None:
    """A UserError, within seconds, when no server answers at an http(s) tracking URI. Any HTTP answer will do
    (an error status too: MLflow's own calls then say what is wrong)."""
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_S).close()
    except urllib.error.HTTPError:
        return
    except (OSError, ValueError) as err:  # URLError is an OSError; a malformed URL a ValueError
        reason = getattr(err, "reason", err)
        why = f"no answer within {PROBE_TIMEOUT_S:g} s" if isinstance(reason, TimeoutError) else str(reason)
        raise UserError(f"--mlflow {uri}: no MLflow server answers there ({why}); start it (`mlflow server "
                        f"--host 127.0.0.1 --port 5000`), pass another tracking URI or a folder, or leave out "
                        f"--mlflow") from None


def mlflow_callback(uri: str, run_dir: Path):
    """Ray Tune's MLflow logger: an MLflow run per trial in the experiment named after the run folder, with the
    trial's parameters and its metrics at every epoch (step = epoch); the last epoch's row holds the trial's
    test metrics, so they are the metrics of its last step."""
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    return MLflowLoggerCallback(tracking_uri=uri, experiment_name=run_dir.name,
                                tags={"lungsearch_run_folder": str(run_dir)})
