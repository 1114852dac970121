"""What the logged model takes in its `image` column: a file's path, or the image itself in base64."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from orchestrator.pyfunc import image_source


def test_a_base64_image_longer_than_any_path_is_its_bytes_and_a_file_stays_a_path(tmp_path):
    """The quickstart's 64 px images are 12 kB of base64: more than a path may hold (4096), so asking the
    file system whether it is a file fails (ENAMETOOLONG) instead of answering no."""
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    encoded = base64.b64encode(buffer.getvalue()).decode()
    assert len(encoded) > 4096
    assert image_source(encoded) == buffer.getvalue()
    path = tmp_path / "image.png"
    path.write_bytes(buffer.getvalue())
    assert image_source(str(path)) == str(path)
    assert image_source("missing.png") == "missing.png"  # neither: captioned as 'no such file'
