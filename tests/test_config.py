"""RunConfig: one declaration per setting, validated where it is declared; method-only options refused."""

from __future__ import annotations

import math

import pytest

from bitfit.config import RunConfig, parse_layers
from bitfit.errors import UserError
from bitfit.methods import METHOD_OPTIONS, METHODS


def make(**kw) -> RunConfig:
    return RunConfig(**({"output_path": "unused", "task_name": "rte"} | kw))


@pytest.mark.parametrize("option,value", [("bias_terms", ["query"]), ("rand_budget", 10), ("mask_sparsity", 0.1)])
def test_an_option_is_refused_by_every_method_that_ignores_it(option, value):
    owner = METHOD_OPTIONS[option]
    assert make(fine_tune_type=owner, **{option: value})  # accepted by its own method
    for method in METHODS:
        if method != owner:
            with pytest.raises(UserError) as e:
                make(fine_tune_type=method, **{option: value}, **({"layers": ["0"]} if method == "layers" else {}))
            message = str(e.value)
            assert f"--{option.replace('_', '-')}" in message and repr(owner) in message and repr(method) in message
            assert len(message.splitlines()) == 1


def test_layers_is_refused_where_only_the_head_trains_and_required_by_the_layers_method():
    with pytest.raises(UserError, match="--layers 1 has no effect on fine-tune type 'frozen'"):
        make(fine_tune_type="frozen", layers=["1"])
    with pytest.raises(UserError, match="fine-tune type 'layers' needs --layers"):
        make(fine_tune_type="layers")
    assert make(fine_tune_type="layers", layers=["last:2"]).layer_spec == parse_layers(["last:2"])


def test_method_defaults_are_filled_only_for_their_method():
    assert make(fine_tune_type="sparse_mask").mask_sparsity == 0.01
    assert make(fine_tune_type="bitfit").mask_sparsity is None


@pytest.mark.parametrize("field,value,accepted", [
    ("weight_decay", math.nan, ">= 0, finite"), ("weight_decay", math.inf, ">= 0, finite"), ("weight_decay", -1.0, ">= 0"),
    ("max_grad_norm", math.nan, ">= 0 (0 disables)"), ("learning_rate", math.inf, "0 < lr <= 1"),
    ("learning_rate", 0.0, "0 < lr <= 1"), ("seed", -1, "an integer from 0 to 4294967295"),
    ("seed", 2**32, "an integer from 0 to 4294967295"), ("epochs", 1.5, "an integer from 1 to 10000"),
    ("warmup_ratio", 1.0, "0 <= ratio < 1"), ("batch_size", True, "an integer from 1"),
])
def test_bad_numbers_are_refused_with_what_is_accepted(field, value, accepted):
    with pytest.raises(UserError) as e:
        make(**{field: value})
    assert f"{field.replace('_', ' ')} {value!r} is out of range; accepted: {accepted}" in str(e.value)


def test_unknown_choices_name_what_is_accepted():
    with pytest.raises(UserError, match="unknown fine-tune type 'bitfitt'; accepted: full_ft, adapters, diff_prune, bitfit, lora, ia3, layers"):
        make(fine_tune_type="bitfitt")
    with pytest.raises(UserError, match="unknown optimizer 'sgd'; accepted: adamw, adam"):
        make(optimizer="sgd")


def test_a_run_config_is_built_from_its_arguments_only(monkeypatch):
    monkeypatch.setenv("GLUE_DIR", "/data/glue")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert (make().data_dir, make().precision) == (None, "fp32")  # the environment is not read here


def test_the_command_layer_resolves_glue_dir_and_the_launch_precision_once():
    from bitfit.config import environment_defaults

    env = {"GLUE_DIR": "/data/glue", "ACCELERATE_MIXED_PRECISION": "bf16"}
    assert environment_defaults({"task_name": "rte"}, env) == {"task_name": "rte", "data_dir": "/data/glue",
                                                               "precision": "bf16"}
    assert environment_defaults({"data_dir": "mine", "precision": None}, {}) == {"data_dir": "mine", "precision": "fp32"}
    with pytest.raises(UserError, match=r"^--precision fp32 contradicts accelerate launch's --mixed_precision bf16"):
        environment_defaults({"precision": "fp32"}, env)


def test_run_glue_takes_glue_dir_from_the_environment_and_records_it(tmp_path, monkeypatch):
    from bitfit.cli import train

    seen = []
    monkeypatch.setattr("bitfit.training.run", lambda cfg: seen.append(cfg))
    monkeypatch.setattr(train, "check_inputs", lambda cfg: None)  # (no data there: only where it was taken from)
    monkeypatch.setenv("GLUE_DIR", str(tmp_path))
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    parser = train.build_parser(__import__("bitfit.cli", fromlist=["make_parser"]).make_parser("run_glue.py", ""))
    assert train.cli(parser.parse_args(["-t", "rte", "-o", str(tmp_path / "run")])) == 0
    assert seen[0].data_dir == str(tmp_path) and seen[0].to_dict()["data_dir"] == str(tmp_path)


def test_resume_compares_settings_but_not_other_methods_options():
    cfg = make(fine_tune_type="bitfit")
    compared = cfg.compared_on_resume()
    assert "learning_rate" in compared and "bias_terms" in compared
    assert "mask_sparsity" not in compared and "rand_budget" not in compared  # never read by bitfit
    assert "gpu_device" not in compared and "eval_batch_size" not in compared  # may change on resume
