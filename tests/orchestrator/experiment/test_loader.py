"""The experiment YAML loader: inheritance, --set, and an error message for every kind of mistake."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.experiment.schema import ExperimentConfig
from orchestrator.experiment.loader import dump_resolved, load_config
from orchestrator.experiment.keys import apply_overrides, deep_merge, flatten, to_nested
from trainers.errors import InputError


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def load_error(path: Path, overrides=()) -> str:
    with pytest.raises(InputError) as caught:
        load_config(path, overrides)
    return str(caught.value)


# --- a tiny file works, defaults resolve ----------------------------------------------------------------

def test_a_tiny_yaml_gets_every_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(write(tmp_path, "tiny.yaml", "name: tiny\n"))
    assert config.model.decoder == "lstm" and config.decode.beam_size == 3
    assert config.ablation == {} and config.search is None
    assert config.tracking.experiment == "tiny"
    assert config.tracking.uri == f"sqlite:///{tmp_path.resolve() / 'results' / 'mlflow.db'}"
    assert config.scheduler.max_t == config.train.epochs
    assert config.ray.storage == str(tmp_path.resolve() / "results") and config.ray.max_failures == 2


def test_an_empty_file_is_refused_not_a_run_of_every_default(tmp_path):
    """An empty file (or one of comments) is a mistake, never a plan of every default (issue 12)."""
    for text in ("", "# to do\n", "{}\n"):
        with pytest.raises(InputError, match=r"empty\.yaml: the experiment file is empty"):
            load_config(write(tmp_path, "empty.yaml", text))


def test_search_metric_defaults_to_eval_select_by(tmp_path):
    config = load_config(write(tmp_path, "s.yaml", """
        eval: {select_by: Bleu_4}
        search: {space: {train.lr: {loguniform: [1.0e-5, 1.0e-3]}}}
    """))
    assert config.search.metric == "Bleu_4" and config.search.algorithm == "optuna"


def test_scheduler_max_t_covers_the_longest_trial(tmp_path):
    config = load_config(write(tmp_path, "e.yaml", """
        train: {epochs: 5}
        ablation: {train.epochs: [3, 12]}
        scheduler: {kind: asha}
    """))
    assert config.scheduler.max_t == 12


def test_a_relative_sqlite_uri_is_made_absolute_for_trials_in_other_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(write(tmp_path, "t.yaml", "tracking: {uri: 'sqlite:///runs/mlflow.db'}\n"))
    assert config.tracking.uri == f"sqlite:///{tmp_path.resolve() / 'runs' / 'mlflow.db'}"


def test_trainer_config_applies_a_trials_overrides(tmp_path):
    config = load_config(write(tmp_path, "c.yaml", "model: {decoder: gru}\n"))
    trainer = config.trainer_config({"train.lr": 1e-3, "decode.length_penalty": 0.5})
    assert (trainer.model.decoder, trainer.train.lr, trainer.decode.length_penalty) == ("gru", 1e-3, 0.5)
    assert config.train.lr == 4e-4  # the experiment itself is unchanged
    with pytest.raises(InputError, match=r"model\.dropout: Input should be less than 1"):
        config.trainer_config({"model.dropout": 1.5})


def test_valid_keys_are_the_dotted_leaves():
    keys = ExperimentConfig.valid_keys()
    assert {"model.decoder", "train.scheduled_sampling.max_rate", "decode.length_penalty",
            "search.space", "ablation", "resources.gpu", "ray.storage"} <= set(keys)
    assert "model" not in keys and "train.scheduled_sampling" not in keys
    assert "ray.storage" not in ExperimentConfig.trial_keys()


def test_dump_resolved_loads_back_to_the_same_config(tmp_path):
    write(tmp_path, "base.yaml", "model: {decoder: gru}\n")
    config = load_config(write(tmp_path, "exp.yaml", """
        base: base.yaml
        name: roundtrip
        ablation: {train.seed: [0, 1], decode.beam_size: [1, 5]}
        search: {num_samples: 3, space: {train.lr: {loguniform: [1.0e-5, 1.0e-3]}, model.dropout: {choice: [0.1, 0.5]}}}
        resources: {gpu: 0.25}
    """))
    text = dump_resolved(config)
    assert "base:" not in text  # already merged
    again = load_config(write(tmp_path, "resolved.yaml", text))
    assert again.model_dump(exclude={"base"}) == config.model_dump(exclude={"base"})
    assert again.model.decoder == "gru"


def test_the_loader_stays_free_of_heavy_imports():
    """`orch run --dry-run` and `orch --help` must start fast."""
    code = ("import sys, orchestrator.experiment.loader, orchestrator.experiment.plan, orchestrator.settings; "
            "print(sorted(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[3], env={"PYTHONPATH": "."})
    assert out.stdout.strip() == "[]"


# --- base inheritance --------------------------------------------------------------------------------------

def test_base_inheritance_two_levels_with_relative_paths(tmp_path):
    write(tmp_path, "base.yaml", """
        name: base
        model: {encoder: resnet101, decoder: lstm, dropout: 0.3}
        train: {epochs: 7, scheduled_sampling: {max_rate: 0.2, ramp_epochs: 4}}
        ablation: {train.seed: [0, 1, 2]}
        search: {num_samples: 5, space: {train.lr: {uniform: [1.0e-4, 1.0e-3]}}}
    """)
    write(tmp_path, "family/middle.yaml", """
        base: ../base.yaml
        model: {decoder: gru}
        train: {scheduled_sampling: {max_rate: 0.1}}
    """)
    child = write(tmp_path, "family/child.yaml", """
        base: middle.yaml
        name: child
        ablation: {model.encoder: [resnet101, vgg16]}
        search: {space: {train.alpha_c: {uniform: [0.5, 2.0]}}}
    """)
    config = load_config(child)
    assert config.name == "child" and config.base == "middle.yaml"
    # key by key: each level overrides only what it names
    assert (config.model.encoder, config.model.decoder, config.model.dropout) == ("resnet101", "gru", 0.3)
    assert config.train.epochs == 7
    assert (config.train.scheduled_sampling.max_rate, config.train.scheduled_sampling.ramp_epochs) == (0.1, 4)
    # ablation and search.space are replaced wholesale, the rest of search merges
    assert config.ablation == {"model.encoder": ["resnet101", "vgg16"]}
    assert list(config.search.space) == ["train.alpha_c"] and config.search.num_samples == 5


def test_a_base_cycle_is_reported_with_its_files(tmp_path):
    write(tmp_path, "a.yaml", "name: a\nbase: b.yaml\n")
    write(tmp_path, "b.yaml", "base: a.yaml\n")
    message = load_error(tmp_path / "a.yaml")
    assert message == f"{tmp_path / 'b.yaml'}:1: base files form a cycle: a.yaml -> b.yaml -> a.yaml"


def test_a_missing_base_names_the_line_that_asked_for_it(tmp_path):
    path = write(tmp_path, "exp.yaml", "name: x\nbase: nowhere.yaml\n")
    assert load_error(path).startswith(f"{path}:2: base file 'nowhere.yaml' not found")


def test_an_error_in_a_base_names_the_base_file_and_line(tmp_path):
    write(tmp_path, "sub/base.yaml", "model:\n  dropout: 1.5\n")
    child = write(tmp_path, "exp.yaml", "base: sub/base.yaml\n")
    assert load_error(child).startswith(f"{tmp_path / 'sub' / 'base.yaml'}:2: model.dropout:")


# --- --set overrides ----------------------------------------------------------------------------------------

def test_set_coerces_values_through_yaml(tmp_path):
    path = write(tmp_path, "exp.yaml", "name: x\nablation: {train.seed: [0, 1]}\n")
    config = load_config(path, [
        "train.lr=1e-3",                          # float, even without YAML 1.1's dot
        "train.epochs=3",                         # int
        "data.feature_cache=false",               # bool
        "eval.metrics=[Bleu, CIDEr]",             # list
        "train.grad_clip=null",                   # None
        "model.decoder=gru",                      # str
        "ablation.model.encoder=[resnet101, vgg16]",
        "search.space.train.alpha_c={uniform: [0.5, 1.5]}",
    ])
    assert config.train.lr == 1e-3 and isinstance(config.train.lr, float)
    assert config.train.epochs == 3 and config.data.feature_cache is False
    assert config.eval.metrics == ["Bleu", "CIDEr"] and config.train.grad_clip is None
    assert config.model.decoder == "gru"
    assert config.ablation == {"train.seed": [0, 1], "model.encoder": ["resnet101", "vgg16"]}
    assert config.search.space["train.alpha_c"].args == [0.5, 1.5]


def test_set_on_an_unknown_key_fails_like_a_yaml_key(tmp_path):
    path = write(tmp_path, "exp.yaml", "name: x\n")
    assert load_error(path, ["model.decodr=gru"]) == \
        "--set model.decodr=gru: unknown key 'model.decodr' — did you mean 'model.decoder'?"


def test_set_needs_key_equals_value(tmp_path):
    path = write(tmp_path, "exp.yaml", "name: x\n")
    assert "expected KEY=VALUE" in load_error(path, ["train.lr"])


def test_a_bad_set_value_names_the_set(tmp_path):
    path = write(tmp_path, "exp.yaml", "model: {dropout: 0.1}\n")
    assert load_error(path, ["model.dropout=1.5"]) == \
        "--set model.dropout=1.5: model.dropout: Input should be less than 1 (got 1.5)"


# --- error messages: file, line, key, reason -----------------------------------------------------------------

def test_unknown_key_names_file_line_and_nearest_key(tmp_path):
    path = write(tmp_path, "search_spaces/x.yaml", """
        name: x
        model:
          encoder: vgg16
          decodr: gru
    """)
    assert load_error(path) == f"{path}:4: unknown key 'model.decodr' — did you mean 'model.decoder'?"


def test_unknown_key_without_a_near_match_lists_the_keys_there(tmp_path):
    path = write(tmp_path, "x.yaml", "scheduler: {zzzzzz: 1}\n")
    message = load_error(path)
    assert message.startswith(f"{path}:1: unknown key 'scheduler.zzzzzz'")
    assert "kind, grace_period, reduction_factor, max_t" in message


def test_wrong_type_names_file_line_key_and_reason(tmp_path):
    path = write(tmp_path, "x.yaml", "train:\n  seed: 1\n  epochs: many\n")
    assert load_error(path) == (f"{path}:3: train.epochs: Input should be a valid integer, "
                                f"unable to parse string as an integer (got \"many\")")


def test_impossible_value_names_file_line_key_and_reason(tmp_path):
    path = write(tmp_path, "x.yaml", "model:\n  dropout: 1.5\n")
    assert load_error(path) == f"{path}:2: model.dropout: Input should be less than 1 (got 1.5)"


def test_every_problem_is_listed_at_once(tmp_path):
    path = write(tmp_path, "x.yaml", "model:\n  dropout: 1.5\n  decodr: gru\neval: {metrics: [Bleu, Cider]}\n")
    lines = load_error(path).splitlines()
    assert lines == [
        f"{path}:3: unknown key 'model.decodr' — did you mean 'model.decoder'?",
        f"{path}:2: model.dropout: Input should be less than 1 (got 1.5)",
        f"{path}:4: eval.metrics[1]: Input should be 'Bleu', 'METEOR', 'ROUGE_L' or 'CIDEr' (got \"Cider\")",
    ]


def test_a_section_rule_names_the_section_line(tmp_path):
    path = write(tmp_path, "x.yaml", "name: x\nmodel: {decoder: mrnn, attention: soft}\n")
    message = load_error(path)
    assert message.startswith(f"{path}:2: model: decoder 'mrnn' sees the image once")


def test_bad_yaml_syntax_names_the_line(tmp_path):
    path = write(tmp_path, "x.yaml", "name: x\nmodel: {decoder: gru\ntrain: {epochs: 2}\n")
    message = load_error(path)
    assert message.startswith(f"{path}:3: invalid YAML:") and "line 2" in message


def test_a_key_written_twice_is_an_error(tmp_path):
    path = write(tmp_path, "x.yaml", "model:\n  decoder: gru\n  decoder: lstm\n")
    assert load_error(path) == f"{path}:3: duplicate key 'model.decoder' (first on line 2)"


def test_a_missing_file_is_named(tmp_path):
    assert load_error(tmp_path / "nope.yaml") == f"config file not found: {tmp_path / 'nope.yaml'}"


def test_the_top_level_must_be_a_mapping(tmp_path):
    path = write(tmp_path, "x.yaml", "- a\n- b\n")
    assert "top level must be a mapping" in load_error(path)


def test_a_bad_ablation_key_names_its_line_and_nearest_key(tmp_path):
    path = write(tmp_path, "x.yaml", """
        name: x
        ablation:
          model.encoder: [resnet101, vgg16]
          model.decodr: [lstm, gru]
    """)
    assert load_error(path) == (f"{path}:4: ablation key 'model.decodr' is not a config key a trial can vary "
                                f"— did you mean 'model.decoder'?")


def test_an_orchestrator_key_cannot_be_ablated(tmp_path):
    path = write(tmp_path, "x.yaml", "ablation:\n  ray.max_failures: [1, 2]\n")
    assert load_error(path).startswith(f"{path}:2: ablation key 'ray.max_failures' is not a config key a trial can")


def test_an_invalid_ablation_value_names_its_line(tmp_path):
    path = write(tmp_path, "x.yaml", """
        ablation:
          train.seed: [0, 1]
          model.dropout:
            - 0.1
            - 1.5
    """)
    assert load_error(path) == (f"{path}:5: ablation value 1.5 is invalid: "
                                f"model.dropout: Input should be less than 1 (got 1.5)")


def test_an_invalid_combination_of_ablation_values_names_the_cell(tmp_path):
    path = write(tmp_path, "x.yaml", """
        model: {attention: none}
        ablation:
          model.decoder: [lstm, mrnn]
          model.attention: [none, soft]
    """)
    message = load_error(path)
    assert message.startswith(f'{path}:3: ablation cell {{model.decoder: "mrnn", model.attention: "soft"}} is invalid')
    assert "takes no attention" in message


def test_an_empty_ablation_list_is_an_error(tmp_path):
    path = write(tmp_path, "x.yaml", "ablation:\n  train.seed: []\n")
    assert load_error(path) == f"{path}:2: ablation train.seed: empty list, give at least one value"


def test_a_repeated_ablation_value_is_an_error(tmp_path):
    path = write(tmp_path, "x.yaml", "ablation:\n  model.decoder: [lstm, gru, lstm]\n")
    assert load_error(path) == f"{path}:2: ablation model.decoder: value \"lstm\" is listed twice"


def test_a_search_over_an_unknown_key_is_an_error(tmp_path):
    path = write(tmp_path, "x.yaml", "search:\n  space:\n    train.lrr: {loguniform: [1.0e-5, 1.0e-3]}\n")
    assert load_error(path) == (f"{path}:3: search.space key 'train.lrr' is not a config key a trial can vary "
                                f"— did you mean 'train.lr'?")


def test_a_search_key_also_in_the_ablation_is_an_error(tmp_path):
    path = write(tmp_path, "x.yaml", """
        ablation: {train.lr: [1.0e-4, 1.0e-3]}
        search:
          space:
            train.lr: {loguniform: [1.0e-5, 1.0e-3]}
    """)
    assert load_error(path) == f"{path}:4: search.space key 'train.lr' is also an ablation key: vary it in one place"


def test_decode_keys_may_be_searched(tmp_path):
    config = load_config(write(tmp_path, "x.yaml", "search: {space: {decode.length_penalty: {uniform: [0.0, 2.0]}}}\n"))
    assert config.search.space["decode.length_penalty"].kind == "uniform"


@pytest.mark.parametrize("dimension, reason", [
    ("{uniform: [0.0, 1.5]}", "uniform reaches 1.5, which is invalid: model.dropout: Input should be less than 1"),
    ("{uniform: [0.5, 0.1]}", "uniform needs lo < hi"),
    ("{loguniform: [0.0, 0.5]}", "loguniform needs lo > 0"),
    ("{normal: [0.0, 0.5]}", "unknown distribution 'normal'"),
    ("[0.1, 0.5]", "write one distribution"),
    ("{choice: []}", "choice needs at least one option"),
])
def test_a_bad_search_dimension_names_its_line(tmp_path, dimension, reason):
    path = write(tmp_path, "x.yaml", f"search:\n  space:\n    model.dropout: {dimension}\n")
    message = load_error(path)
    assert message.startswith(f"{path}:3: ") and reason in message


def test_a_float_range_over_an_integer_key_is_caught(tmp_path):
    path = write(tmp_path, "x.yaml", "search:\n  space:\n    train.epochs: {uniform: [1, 10]}\n")
    assert "valid integer" in load_error(path)
    load_config(write(tmp_path, "ok.yaml", "search:\n  space:\n    train.epochs: {int: [1, 10]}\n"))


def test_remote_storage_needs_an_explicit_tracking_uri(tmp_path):
    path = write(tmp_path, "x.yaml", "ray:\n  storage: s3://bucket/prefix\n")
    assert load_error(path).startswith(f"{path}:2: ray.storage is 's3://bucket/prefix'")
    config = load_config(path, ["tracking.uri=http://mlflow.internal:5000"])
    assert config.tracking.uri == "http://mlflow.internal:5000"


@pytest.mark.parametrize("yaml_text, fragment", [
    ("ray: {address: 'my cluster'}", "ray.address: must be null"),
    ("resources: {gpu: 1.5}", "resources.gpu: a trial trains on one device and there is no multi-GPU trainer"),
    ("resources: {gpu: 2}", "resources.gpu: a trial trains on one device and there is no multi-GPU trainer: use 1"),
    ("scheduler: {kind: asha, grace_period: 30}", "scheduler.grace_period 30 is more than scheduler.max_t 20"),
    ("search: {num_samples: 4}", "search.space: Field required"),
    ("trainer: aligner", "trainer: Input should be 'captioner'"),
])
def test_orchestrator_sections_are_validated(tmp_path, yaml_text, fragment):
    path = write(tmp_path, "x.yaml", yaml_text + "\n")
    message = load_error(path)
    assert message.startswith(f"{path}:1: ") and fragment in message


# --- a trial trains where its reservation says ------------------------------------------------------------

def test_cuda_without_a_reserved_gpu_is_refused_naming_both_keys(tmp_path):
    path = write(tmp_path, "x.yaml", "name: x\ntrain: {device: cuda}\n")
    assert load_error(path) == (f"{path}:2: train.device is 'cuda' but resources.gpu is 0: a trial that reserves "
                                "no GPU trains with CUDA hidden (set resources.gpu: 1, or a fraction such as 0.5 to "
                                "share a GPU; or train.device: auto)")
    assert load_config(path, ["resources.gpu=0.5"]).train.device == "cuda"


def test_cpu_with_a_reserved_gpu_is_refused_and_a_set_is_blamed(tmp_path):
    path = write(tmp_path, "x.yaml", "name: x\nresources: {gpu: 0.5}\n")
    assert load_error(path, ["train.device=cpu"]) == (
        "--set train.device=cpu: train.device is 'cpu' but resources.gpu is 0.5: each trial would hold a GPU it "
        "never uses (set resources.gpu: 0 to train on CPUs, or train.device: auto)")


def test_a_grid_or_a_search_reaching_the_other_device_is_refused(tmp_path):
    grid = write(tmp_path, "grid.yaml", "name: g\nablation:\n  train.device: [auto, cuda]\n")
    assert load_error(grid).startswith(f"{grid}:3: ablation value \"cuda\" is invalid: train.device is 'cuda' but "
                                       "resources.gpu is 0")
    search = write(tmp_path, "search.yaml", "name: s\nresources: {gpu: 1}\nsearch:\n  space:\n"
                                             "    train.device: {choice: [cpu, auto]}\n")
    assert "search.space train.device reaches \"cpu\", which is invalid: train.device is 'cpu' but resources.gpu " \
           "is 1" in load_error(search)


def test_orch_train_reserves_nothing_so_cuda_stands_alone(tmp_path):
    path = write(tmp_path, "x.yaml", "name: x\ntrain: {device: cuda}\n")
    assert load_config(path, trials=False).train.device == "cuda"


def test_ray_autoscaling_is_off_unless_said(tmp_path):
    assert load_config(write(tmp_path, "x.yaml", "name: x\n")).ray.autoscaling is False
    assert load_config(write(tmp_path, "y.yaml", "name: y\nray: {autoscaling: true}\n")).ray.autoscaling is True


@pytest.mark.parametrize("address", [None, "auto", "head-node:6379", "ray://10.0.0.1:10001"])
def test_accepted_ray_addresses(address):
    assert ExperimentConfig(ray={"address": address}).ray.address == address


# --- checked at load: what used to fail only inside each trial ------------------------------------------------

def test_a_top_level_results_key_is_unknown(tmp_path):
    path = write(tmp_path, "x.yaml", "name: x\nresults: out\n")
    assert load_error(path) == f"{path}:2: unknown key 'results' — did you mean 'resources'?"


def test_a_runs_saved_config_from_an_older_orch_still_loads(tmp_path):
    path = write(tmp_path, "orch.yaml", "name: x\nresults: results\n")  # what `orch resume` re-reads
    assert load_config(path, saved=True).name == "x"


def test_an_unknown_encoder_names_the_set_and_the_nearest_name(tmp_path):
    path = write(tmp_path, "x.yaml", "model: {encoder: resnet18}\n")
    assert load_error(path, ["model.encoder=resnet1011"]).startswith(
        "--set model.encoder=resnet1011: model.encoder: unknown encoder 'resnet1011'; did you mean resnet101")


def test_every_encoder_of_a_grid_and_a_search_is_checked(tmp_path):
    path = write(tmp_path, "x.yaml", "ablation:\n  model.encoder:\n    - resnet18\n    - vgg61\n")
    assert load_error(path).startswith(f'{path}:4: ablation value "vgg61" is invalid: model.encoder: '
                                       "unknown encoder 'vgg61'; did you mean")
    path = write(tmp_path, "s.yaml", "search:\n  space:\n    model.encoder: {choice: [resnet18, resnet1011]}\n")
    assert load_error(path).startswith(f'{path}:3: search.space model.encoder: choice reaches "resnet1011", '
                                       "which is invalid: model.encoder: unknown encoder 'resnet1011'")


def test_an_unknown_detector_names_its_line(tmp_path):
    path = write(tmp_path, "x.yaml", "trainer: alignment\nalignment:\n  detector: fasterrcnn_resnet51_fpn\n")
    assert load_error(path).startswith(f"{path}:3: alignment.detector: unknown detector 'fasterrcnn_resnet51_fpn'; "
                                       "did you mean fasterrcnn_resnet50_fpn")


def test_a_missing_weights_file_is_named_before_anything_starts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, "x.yaml", "name: x\nmodel:\n  weights: weights/r18.pt\n")
    assert load_error(path) == (f"{path}:3: model.weights: 'weights/r18.pt' is not imagenet, none, or an existing "
                                f"file (looked for {tmp_path / 'weights' / 'r18.pt'})")
    assert load_config(path, check_files=False).model.weights == "weights/r18.pt"  # what --smoke reads first


def test_a_weights_file_is_relative_to_the_working_folder_and_resolved_for_trials(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "weights/r18.pt", "")
    write(tmp_path, "weights/r34.pt", "")
    path = write(tmp_path, "configs/x.yaml", """
        model: {weights: weights/r18.pt}
        ablation: {model.weights: [weights/r34.pt, none]}
    """)
    config = load_config(path)
    assert config.model.weights == str(tmp_path / "weights" / "r18.pt")
    assert config.ablation["model.weights"] == [str(tmp_path / "weights" / "r34.pt"), "none"]
    bad = write(tmp_path, "configs/bad.yaml", "ablation:\n  model.weights:\n    - none\n    - weights/r50.pt\n")
    assert load_error(bad).startswith(f'{bad}:4: ablation value "weights/r50.pt" is invalid: model.weights: '
                                      "'weights/r50.pt' is not imagenet, none, or an existing file")


def test_detector_weights_are_checked_when_a_detector_is_used(tmp_path):
    text = "trainer: alignment\nalignment:\n  regions: {regions}\n  detector_weights: missing.pt\n"
    assert load_config(write(tmp_path, "grid.yaml", text.format(regions="grid"))).alignment.regions == "grid"
    path = write(tmp_path, "detector.yaml", text.format(regions="detector"))
    assert load_error(path).startswith(f"{path}:4: alignment.detector_weights: 'missing.pt' is not coco or an "
                                       "existing file")


# --- search.metric ------------------------------------------------------------------------------------------------

SEARCH = "search: {space: {train.lr: {loguniform: [1.0e-5, 1.0e-3]}}}\n"


def test_search_metric_must_be_a_metric_the_trainer_reports(tmp_path):
    path = write(tmp_path, "x.yaml", SEARCH)
    assert load_error(path, ["search.metric=cider"]) == (
        "--set search.metric=cider: search.metric 'cider' is not a val metric trainer captioner reports — did you "
        "mean 'CIDEr'? (choose one of Bleu_1, Bleu_2, Bleu_3, Bleu_4, METEOR, ROUGE_L, CIDEr, neg_loss: "
        "eval.select_by names, where neg_loss ranks by val_loss)")
    assert "did you mean 'CIDEr'?" in load_error(path, ["search.metric=val_CIDEr"])
    assert load_config(path, ["search.metric=neg_loss", "search.mode=max"]).search.metric == "neg_loss"


def test_search_metric_must_be_computed_by_eval_metrics(tmp_path):
    path = write(tmp_path, "x.yaml", "eval: {metrics: [Bleu, CIDEr]}\nsearch: {metric: METEOR, space: "
                                     "{train.lr: {loguniform: [1.0e-5, 1.0e-3]}}}\n")
    message = load_error(path)
    assert message.startswith(f"{path}:2: search.metric 'METEOR' is not a val metric trainer captioner reports")
    assert "(choose one of Bleu_1, Bleu_2, Bleu_3, Bleu_4, CIDEr, neg_loss:" in message
    grid = write(tmp_path, "grid.yaml", "search: {metric: Bleu_4, space: {train.lr: {loguniform: [1.0e-5, 1.0e-3]}}}\n"
                                        "ablation:\n  eval.metrics:\n    - [Bleu, CIDEr]\n    - [CIDEr]\n")
    assert load_error(grid).startswith(f'{grid}:5: ablation value ["CIDEr"] is invalid: search.metric \'Bleu_4\' '
                                       "is not computed without its family in eval.metrics")


def test_an_alignment_search_is_ranked_by_retrieval(tmp_path):
    path = write(tmp_path, "x.yaml", "trainer: alignment\n" + SEARCH)
    assert load_config(path, ["search.metric=t2i_R5"]).search.metric == "t2i_R5"
    assert "reports — did you mean 'rsum'?" in load_error(path, ["search.metric=rsun"])


# --- a --set is blamed for what it breaks ---------------------------------------------------------------------

def test_a_set_that_breaks_a_section_rule_is_named(tmp_path):
    path = write(tmp_path, "x.yaml", "name: x\nmodel: {decoder: lstm, attention: soft}\n")
    assert load_error(path, ["model.decoder=mrnn"]) == ("--set model.decoder=mrnn: model: decoder 'mrnn' sees the "
                                                        "image once and takes no attention: set model.attention: none")


def test_a_file_that_breaks_a_section_rule_keeps_its_line_whatever_is_set(tmp_path):
    path = write(tmp_path, "x.yaml", "name: x\nmodel: {decoder: mrnn, attention: soft}\n")
    assert load_error(path, ["model.dropout=0.1", "train.lr=1e-3"]).startswith(
        f"{path}:2: model: decoder 'mrnn' sees the image once")


def test_a_set_elsewhere_is_named_for_the_key_it_invalidates(tmp_path):
    path = write(tmp_path, "x.yaml", "scheduler: {kind: asha, grace_period: 3}\n")
    assert load_error(path, ["train.lr=1e-3", "train.epochs=2"]) == (
        "--set train.epochs=2: scheduler.grace_period 3 is more than scheduler.max_t 2: no trial could be stopped")


def test_set_ablation_empty_drops_the_grid_and_a_set_pins_the_value(tmp_path):
    path = write(tmp_path, "x.yaml", "model: {decoder: lstm}\nablation:\n  model.decoder: [lstm, gru]\n"
                                     "  train.seed: [0, 1]\n" + SEARCH)
    one = load_config(path, ["ablation={}", "search=null", "model.decoder=gru"])
    assert one.ablation == {} and one.search is None and one.model.decoder == "gru"


def test_a_set_of_a_key_the_grid_sets_is_refused_naming_both(tmp_path):
    """The grid sets the key in every trial: the --set would be silently lost, so it is refused."""
    path = write(tmp_path, "x.yaml", "model: {decoder: lstm}\nablation:\n  model.decoder: [lstm, gru]\n" + SEARCH)
    assert load_error(path, ["model.decoder=rnn"]) == (
        f"--set model.decoder=rnn: model.decoder is a factor of the ablation grid (ablation in {path}:3), which sets "
        "it in every trial (drop the --set, or change ablation.model.decoder instead)")
    assert load_error(path, ["model={decoder: rnn}"]).startswith("--set model={decoder: rnn}: model.decoder is a factor")
    drawn = load_error(path, ["train.lr=1e-3"])
    assert drawn.startswith("--set train.lr=1e-3: train.lr is drawn by the search (search.space in ")
    assert load_config(path, ["ablation.model.decoder=[rnn]"]).ablation["model.decoder"] == ["rnn"]


# --- dotted keys <-> nested dicts -------------------------------------------------------------------------------

key_names = st.text(alphabet="abcdefgh_", min_size=1, max_size=6)
leaf_values = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5),
                        st.lists(st.integers(), max_size=3))
nested_dicts = st.recursive(st.dictionaries(key_names, leaf_values, max_size=4),
                            lambda children: st.dictionaries(key_names, children, max_size=4), max_leaves=20)


@settings(max_examples=100, deadline=None)
@given(nested_dicts)
def test_flatten_then_to_nested_round_trips(nested):
    flat = flatten(nested)
    assert to_nested(flat) == nested
    assert not any(isinstance(v, dict) and v for v in flat.values())


def test_apply_overrides_sets_dotted_keys_without_touching_its_input():
    nested = {"train": {"lr": 1.0, "scheduled_sampling": {"max_rate": 0.0}}, "data": {"synthetic": None}}
    result = apply_overrides(nested, {"train.scheduled_sampling.max_rate": 0.25, "data.synthetic.n": 100})
    assert result == {"train": {"lr": 1.0, "scheduled_sampling": {"max_rate": 0.25}}, "data": {"synthetic": {"n": 100}}}
    assert nested["train"]["scheduled_sampling"]["max_rate"] == 0.0


def test_deep_merge_replaces_atomic_mappings_wholesale():
    base = {"model": {"encoder": "vgg16", "decoder": "lstm"}, "ablation": {"train.seed": [0, 1]}}
    child = {"model": {"decoder": "gru"}, "ablation": {"model.encoder": ["vgg16"]}}
    assert deep_merge(base, child, atomic=[("ablation",)]) == {
        "model": {"encoder": "vgg16", "decoder": "gru"}, "ablation": {"model.encoder": ["vgg16"]}}
