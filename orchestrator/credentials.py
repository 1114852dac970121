"""Credentials come from the environment and are never written (docs/cluster.md, Security).

These variables are read where they are used (MLflow's request code, pyarrow, Ray) and nowhere
copied: not into orch.yaml, plan.json, MLflow, logs or the journal. A password inside a URI is
used to connect and shown masked everywhere else.
"""

from __future__ import annotations

from urllib.parse import urlsplit

SECRET_VARIABLES = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "AWS_SECRET_ACCESS_KEY", "RAY_AUTH_TOKEN")
MASK = "***"


def masked(uri: str) -> str:
    """`uri` with the password of its user-info (`user:password@host`) replaced by ***."""
    parts = urlsplit(uri)
    if not parts.password:
        return uri
    user, _, host = parts.netloc.rpartition("@")
    return parts._replace(netloc=f"{user.split(':', 1)[0]}:{MASK}@{host}").geturl()


def is_masked(uri: str) -> bool:
    """A URI masked() wrote: its password is gone."""
    return urlsplit(uri).password == MASK
