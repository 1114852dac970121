"""Captioning models, data, training and evaluation. Knows nothing of Ray or MLflow.

Importing it asks for reproducible arithmetic in this process before any product runs
(trainers.determinism): MKL reads its setting once, at its first call.
"""

from trainers import determinism

determinism.request()
