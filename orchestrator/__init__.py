"""Turns YAML into plans, plans into Ray Tune trials, results into MLflow runs and reports."""
