"""`orch run --dry-run`: what used to pass the dry run and then fail inside every trial is exit 2 at once,
naming the --set or file line, with nothing written."""

from __future__ import annotations

from tests.orchestrator.conftest import REPO_ROOT

QUICKSTART = REPO_ROOT / "search_spaces" / "quickstart.yaml"
COURSEWORK = REPO_ROOT / "search_spaces" / "coursework.yaml"


def test_an_unknown_encoder_fails_the_dry_run(orch, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = orch("run", QUICKSTART, "--dry-run", "--set", "model.encoder=resnet1011")
    assert result.exit_code == 2
    assert ("error: --set model.encoder=resnet1011: model.encoder: unknown encoder 'resnet1011'; "
            "did you mean resnet101") in result.output
    assert list(tmp_path.iterdir()) == []


def test_a_set_that_breaks_the_model_section_is_named_not_the_files_line(orch):
    result = orch("run", QUICKSTART, "--dry-run", "--set", "ablation={}", "--set", "model.decoder=mrnn")
    assert result.exit_code == 2
    assert "error: --set model.decoder=mrnn: model: decoder 'mrnn' sees the image once" in result.output
    assert "quickstart.yaml" not in result.output


def test_a_positional_override_of_a_grid_factor_is_refused_naming_both(orch, tmp_path, monkeypatch):
    """quickstart's grid sets model.decoder in every trial: `model.decoder=rnn` would be lost, so it is refused."""
    monkeypatch.chdir(tmp_path)
    result = orch("run", QUICKSTART, "model.decoder=rnn", "--dry-run")
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        f"error: --set model.decoder=rnn: model.decoder is a factor of the ablation grid (ablation in {QUICKSTART}:38), "
        "which sets it in every trial (drop the --set, or change ablation.model.decoder instead)"]
    assert list(tmp_path.iterdir()) == []


def test_positional_overrides_apply_after_the_set_ones(orch):
    result = orch("run", QUICKSTART, "train.epochs=3", "--set", "train.epochs=2", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "up to 3 epochs" in result.output


def test_a_set_with_a_list_is_shown_whole(orch):
    # `[resnet101, vgg61]` is printed as written, not taken for console markup.
    result = orch("run", COURSEWORK, "--smoke", "--dry-run", "--set", "ablation.model.encoder=[resnet101, vgg61]")
    assert result.exit_code == 2
    assert ("error: --set ablation.model.encoder=[resnet101, vgg61]: ablation value \"vgg61\" is invalid: "
            "model.encoder: unknown encoder 'vgg61'") in result.output


def test_a_missing_weights_file_fails_the_run_but_not_its_smoke_run(orch, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "cluster.yaml"
    config.write_text("# orch run cluster.yaml\nname: cluster\nmodel: {weights: /cluster/weights/r101.pth}\n"
                      "ablation: {model.decoder: [lstm, gru]}\n")
    result = orch("run", config, "--dry-run")
    assert result.exit_code == 2
    assert f"error: {config}:3: model.weights: '/cluster/weights/r101.pth' is not imagenet, none, or an " \
           "existing file" in result.output
    smoke = orch("run", config, "--smoke", "--dry-run")
    assert smoke.exit_code == 0, smoke.output
    assert "Plan for 'cluster-smoke'" in smoke.output and "2 trainings (2 grid cells)" in smoke.output


def test_the_plan_names_the_ray_the_run_will_use(orch, tmp_path, monkeypatch):
    """The plan prints the settings the run resolves (orchestrator.settings), not the loose ray.address:
    --address and RAY_ADDRESS show as what they are."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert "ray: a new local Ray for this run" in orch("run", QUICKSTART, "--dry-run").output
    joined = orch("run", QUICKSTART, "--dry-run", "--address", "head.cluster:6379").output
    assert "ray: joining head.cluster:6379 (--address)" in joined
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert "ray: joining 10.0.0.5:6379 (RAY_ADDRESS)" in orch("run", QUICKSTART, "--dry-run").output
    assert list(tmp_path.iterdir()) == []
