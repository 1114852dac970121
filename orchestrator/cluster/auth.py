"""Ray's token authentication (RAY_AUTH_MODE=token): the token ray.init sends, for every Ray orch
starts or joins (docs/cluster.md, Security).

A Ray started for a run gets a fresh random token held only in this process's environment: the Ray
processes it starts inherit it, so the driver and the trials reach it, nothing writes it down, and
any other process, on this machine or another, is refused. The token is the guard: Ray's servers
listen on every interface (ray.init turns 127.0.0.1 into the node's address). A join sends the token
the environment gives, in Ray's own order; a token given turns the mode on.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Mapping, Optional

from orchestrator.settings import LOCAL_RAY
from trainers.errors import InputError

MODE_VARIABLE, TOKEN_VARIABLE, PATH_VARIABLE = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"


def given_token(environ: Mapping[str, str] = os.environ) -> tuple[Optional[str], str]:
    """The token a join sends and where it came from: RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH
    names, else Ray's default file (~/.ray/auth_token); (None, "") when there is none."""
    if environ.get(TOKEN_VARIABLE, "").strip():
        return environ[TOKEN_VARIABLE].strip(), TOKEN_VARIABLE
    if environ.get(PATH_VARIABLE):
        path = Path(environ[PATH_VARIABLE]).expanduser()
        try:
            token = path.read_text().strip()
        except OSError as error:
            raise InputError(f"{PATH_VARIABLE}: cannot read the Ray token file {path} ({error.strerror})") from None
        if not token:
            raise InputError(f"{PATH_VARIABLE}: the Ray token file {path} is empty: write the cluster's token in it")
        return token, f"{PATH_VARIABLE} ({path})"
    default = Path.home() / ".ray" / "auth_token"
    token = default.read_text().strip() if default.is_file() else ""
    return (token, str(default)) if token else (None, "")


def use_token(token: Optional[str]) -> None:
    """This process, and the Ray processes it starts from now on, send `token` (None: none, the mode off)."""
    from ray._raylet import AuthenticationTokenLoader, Config

    if token:
        os.environ.update({MODE_VARIABLE: "token", TOKEN_VARIABLE: token})
    else:
        os.environ[MODE_VARIABLE] = "disabled"
        os.environ.pop(TOKEN_VARIABLE, None)
    # Ray reads the mode and the token once per process; re-read them, as Ray does when it turns the mode on.
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def prepare(address: str) -> None:
    """Before ray.init(address): a fresh token for a new local Ray; for a join, the one the environment
    gives, unless preflight found the cluster open and turned the mode off (check_ray_token)."""
    if address == LOCAL_RAY:
        use_token(secrets.token_hex(32))
    elif os.environ.get(MODE_VARIABLE) != "disabled":
        use_token(given_token()[0])
