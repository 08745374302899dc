"""lungsearch: search for chest X-ray pneumonia classifiers with Keras 3 and Ray Tune."""
import os

# Set before anything imports Keras: trials sharing a GPU must not grab all of its memory up front
# (JAX preallocates 75%, TensorFlow maps it all), and TensorFlow's start-up chatter hides progress.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"


def version() -> str:
    """The installed distribution's version; the package's own where it runs uninstalled (PYTHONPATH)."""
    from importlib import metadata

    try:
        return metadata.version("lungsearch")
    except metadata.PackageNotFoundError:
        return __version__
