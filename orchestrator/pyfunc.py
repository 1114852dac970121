"""The MLflow model of a trained captioner, and the code MLflow runs to load it.

    model = mlflow.pyfunc.load_model("models:/quickstart@champion")
    model.predict(pandas.DataFrame({"image": ["a.jpg", base64_of_a_png]}), params={"beam_size": 5})

Input: a column `image`, each an image file's path or the image's bytes in base64 (what a client
of `mlflow models serve` sends). Output: a frame with `caption` and `error` (empty when the image
was captioned): one unreadable image never fails the batch.

This file is the model's code (MLflow's models-from-code): it is saved inside every model and
run when the model loads, where orch may not be installed. So it imports nothing of orch: the
model carries a copy of the `trainers` package (`code_paths`) and its requirements.txt lists what
that needs. Its import path stays `orchestrator.pyfunc`: models registered before it was the
model's code hold a pickled `orchestrator.pyfunc.CaptionerModel`, which loads where orch is.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

import mlflow.models
import mlflow.pyfunc
import pandas as pd

ARTIFACT = "export"  # the checkpoint (or export) folder, logged as this artifact of the pyfunc model


class CaptionerModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from trainers.inference import load_model

        self.model = load_model(context.artifacts[ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from trainers.inference import caption_images, decode_settings

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame({"image": list(model_input)})
        params = params or {}
        settings = decode_settings(self.model.config.decode, params.get("beam_size"), params.get("length_penalty"))
        results = caption_images(self.model, [image_source(value) for value in frame["image"]], settings)
        return pd.DataFrame({"caption": [r.caption for r in results], "error": [r.error for r in results]})


def image_source(value: str | bytes) -> str | bytes:
    """An `image` cell as trainers.inference reads it: an existing file's path stays a path; anything else
    that is strict base64 is the image's bytes; the rest is a path (captioned as 'no such file').
    A base64 image is longer than any file name may be: asking the file system about it is an error."""
    if isinstance(value, bytes) or _is_file(value):
        return value
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return value


def _is_file(value: str) -> bool:
    try:
        return Path(value).is_file()
    except OSError:  # ENAMETOOLONG: a name (or one of its parts) longer than the file system takes
        return False


if __name__ != "orchestrator.pyfunc":  # MLflow runs this file as a saved model's code (models-from-code)
    mlflow.models.set_model(CaptionerModel())


# What the model's code imports (this file and trainers.inference with its imports), pinned in its
# requirements.txt; orch is not among them.
REQUIREMENTS = ("mlflow", "pandas", "torch", "torchvision", "safetensors", "pillow", "numpy", "pyyaml", "pydantic",
                "filelock", "psutil", "rich")


def save_captioner(target: Path, model_folder: Path, decode: dict, example_png: bytes) -> None:
    """Save `model_folder` (an export or a checkpoint folder) as an MLflow pyfunc model in `target`: this
    file as its code, a copy of `trainers`, its signature (decode settings as params), `example_png` as its
    input example (base64) and pinned requirements; then check it serves that example as
    `mlflow models serve` would (MLflow's serving-input validation): no error.

    Quietly: MLflow's save prints nothing orch's users need (no warnings, no progress bars)."""
    import trainers
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "image")]),
        outputs=Schema([ColSpec("string", "caption"), ColSpec("string", "error")]),
        params=ParamSchema([ParamSpec("beam_size", "long", decode["beam_size"]),
                            ParamSpec("length_penalty", "double", float(decode["length_penalty"]))]))
    example = pd.DataFrame({"image": [base64.b64encode(example_png).decode("ascii")]})
    with _quiet_mlflow():
        mlflow.pyfunc.save_model(str(target), python_model=__file__, artifacts={ARTIFACT: str(model_folder)},
                                 code_paths=[str(Path(trainers.__file__).parent)], signature=signature,
                                 input_example=example, pip_requirements=_requirements())
        served = mlflow.models.validate_serving_input(str(target), mlflow.models.Model.load(target).get_serving_input(target))
    # An error is a model that cannot serve; an empty caption is a model that learned little (a smoke
    # run's, an early epoch's): it is logged, as its scores say what it is worth.
    if served["error"][0]:
        raise RuntimeError(f"{target}: the saved model does not caption its own input example ({served['error'][0]})")


class _quiet_mlflow:
    """MLflow's logger at ERROR, its warnings and stderr swallowed, its progress bars off, for a block."""

    PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"

    def __enter__(self):
        import contextlib
        import io
        import logging
        import os
        import warnings

        self._logger = logging.getLogger("mlflow")
        self._level, self._bar = self._logger.level, os.environ.get(self.PROGRESS_BAR)
        os.environ[self.PROGRESS_BAR] = "false"
        self._logger.setLevel(logging.ERROR)
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")
        self._stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
        return self

    def __exit__(self, *exc):
        import os

        self._stack.close()
        self._logger.setLevel(self._level)
        if self._bar is None:
            os.environ.pop(self.PROGRESS_BAR, None)
        else:
            os.environ[self.PROGRESS_BAR] = self._bar
        return False


def _requirements() -> list[str]:
    """Pinned versions of what loading the model imports."""
    from importlib import metadata

    pins = []
    for name in REQUIREMENTS:
        try:
            pins.append(f"{name}=={metadata.version(name).split('+')[0]}")
        except metadata.PackageNotFoundError:
            continue
    return pins
