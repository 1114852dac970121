"""The MLflow pyfunc flavour of an exported captioner: what `orch export --register` puts in the registry.

    model = mlflow.pyfunc.load_model("models:/coursework/1")
    model.predict(pandas.DataFrame({"image": ["a.jpg", "b.jpg"]}), params={"beam_size": 5})

Input: a column `image` of image file paths. Output: a frame with `caption` and `error` (empty
when the image was captioned): one unreadable image never fails the batch. Loading it needs the
orch package importable (it holds the model code); its other requirements are logged with it.
"""

from __future__ import annotations

import mlflow.pyfunc
import pandas as pd

ARTIFACT = "export"  # the export folder, logged as this artifact of the pyfunc model


class CaptionerModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from trainers.inference import load_model

        self.model = load_model(context.artifacts[ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from trainers.inference import caption_images, decode_settings

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame({"image": list(model_input)})
        params = params or {}
        settings = decode_settings(self.model.config.decode, params.get("beam_size"), params.get("length_penalty"))
        results = caption_images(self.model, [str(path) for path in frame["image"]], settings)
        return pd.DataFrame({"caption": [r.caption for r in results], "error": [r.error for r in results]})


REQUIREMENTS = ("torch", "torchvision", "safetensors", "pillow", "numpy", "pyyaml", "pydantic", "rich", "filelock",
                "pycocoevalcap", "matplotlib", "pandas", "mlflow")
INPUT_EXAMPLE = {"image": ["photo.jpg"]}  # what a caller sends: image paths; one it cannot read gets an error row


def save_captioner(target, model_folder, decode: dict) -> None:
    """Save `model_folder` (an export or a checkpoint folder) as an MLflow pyfunc model in `target`, with
    its signature (decode settings as params), an input example and pinned requirements, quietly:
    MLflow's save prints nothing orch's users need (no warnings, no progress bars)."""
    import contextlib
    import io
    import logging
    import os
    import warnings

    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "image")]),
        outputs=Schema([ColSpec("string", "caption"), ColSpec("string", "error")]),
        params=ParamSchema([ParamSpec("beam_size", "long", decode["beam_size"]),
                            ParamSpec("length_penalty", "double", float(decode["length_penalty"]))]))
    quiet = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "MLFLOW_VALIDATE_SERVING_INPUT": "false"}
    before = {name: os.environ.get(name) for name in quiet}
    logger = logging.getLogger("mlflow")
    level = logger.level
    os.environ.update(quiet)
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            mlflow.pyfunc.save_model(str(target), python_model=CaptionerModel(), artifacts={ARTIFACT: str(model_folder)},
                                     signature=signature, input_example=pd.DataFrame(INPUT_EXAMPLE),
                                     pip_requirements=_requirements())
    finally:
        logger.setLevel(level)
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _requirements() -> list[str]:
    """Pinned versions of what loading the model imports (orch itself must be importable too)."""
    from importlib import metadata

    pins = []
    for name in REQUIREMENTS:
        try:
            pins.append(f"{name}=={metadata.version(name).split('+')[0]}")
        except metadata.PackageNotFoundError:
            continue
    return pins
