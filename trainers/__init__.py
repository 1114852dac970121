"""Captioning models, data, training and evaluation. Knows nothing of Ray or MLflow."""
