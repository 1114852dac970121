"""The one exception type for bad user input (config, data, arguments).

The CLI turns it into exit code 2 with its message; everything else is exit code 1.
"""


class InputError(Exception):
    """Bad input that the user must fix. The message names the file, key, line or item."""


class TrainingDiverged(RuntimeError):
    """The loss became NaN/inf or grew past `train.divergence_factor` times its start (exit code 1)."""
