"""The command-line conventions users bring from torchtune, Hydra and click tools: positional
`key=value` overrides, `orch config` for the resolved YAML, `--version`, shell completion and a
usage example at the foot of every `--help`."""

from __future__ import annotations

from importlib.metadata import version

import typer
import yaml
from typer.testing import CliRunner

from orchestrator.cli import app
from tests.orchestrator.conftest import REPO_ROOT

QUICKSTART = REPO_ROOT / "search_spaces" / "quickstart.yaml"


def orch(*args, env=None):
    return CliRunner().invoke(app, [str(arg) for arg in args], prog_name="orch", env=env)


def test_orch_config_prints_the_resolved_yaml_with_the_overrides(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = orch("config", QUICKSTART, "train.lr=1e-3", "--set", "train.epochs=2", "ablation={}")
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load(result.stdout)
    assert resolved["train"]["lr"] == 0.001 and resolved["train"]["epochs"] == 2 and resolved["ablation"] == {}
    assert resolved["model"]["decoder"] == "lstm" and resolved["decode"]["length_penalty"] == 0.0  # defaults filled
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_orch_config_refuses_a_bad_override_in_one_line():
    result = orch("config", QUICKSTART, "train.epochs=abc")
    assert result.exit_code == 2
    assert result.output.splitlines() == ["error: --set train.epochs=abc: train.epochs: Input should be a valid "
                                          "integer, unable to parse string as an integer (got \"abc\")"]


def test_version():
    result = orch("--version")
    assert result.exit_code == 0 and result.stdout == f"orch {version('orch')}\n"


def test_shell_completion_completes_commands_and_options():
    def complete(line: str) -> list[str]:
        words = line.split(" ")
        result = orch(env={"_ORCH_COMPLETE": "complete_bash", "COMP_WORDS": line, "COMP_CWORD": str(len(words) - 1)})
        assert result.exit_code == 0, result.output
        return result.stdout.split()

    assert complete("orch ru") == ["run"]
    assert complete("orch run --dr") == ["--dry-run"]
    script = orch("--show-completion", "bash")
    assert script.exit_code == 0 and "complete -o default -F _orch_completion orch" in script.stdout


def test_every_command_help_ends_with_an_example_of_it():
    commands = list(typer.main.get_command(app).commands)
    assert {"config", "run", "train", "caption", "export", "status", "report"} <= set(commands)
    for command in commands:
        shown = orch(command, "--help")
        assert shown.exit_code == 0, shown.output
        example = " ".join(shown.stdout.split("Example: `")[-1].split())
        assert example.startswith(f"orch {command} "), (command, shown.stdout)


def test_dry_run_is_a_plain_flag():
    shown = orch("run", "--help").stdout
    assert "  --dry-run  " in shown and "--no-dry-run" not in shown
