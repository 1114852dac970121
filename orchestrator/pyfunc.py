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

    def predict(self, context, model_input, params=None):
        from trainers.inference import caption_images, decode_settings

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame({"image": list(model_input)})
        params = params or {}
        settings = decode_settings(self.model.config.decode, params.get("beam_size"), params.get("length_penalty"))
        results = caption_images(self.model, [str(path) for path in frame["image"]], settings)
        return pd.DataFrame({"caption": [r.caption for r in results], "error": [r.error for r in results]})
