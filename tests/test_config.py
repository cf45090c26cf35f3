"""Config errors name the field and the allowed values; presets and overrides resolve."""

import pytest

from tandem.config import load_config
from tandem.errors import ConfigError


def test_preset_fills_objective_and_override_wins():
    cfg = load_config(None, ["method=chord", "objective.mu.peak=0.9", "steps=3"])
    assert cfg.objective.expert_loss == "chord_phi"
    assert cfg.objective.mu.kind == "warmup_cosine"
    assert cfg.objective.mu.peak == 0.9
    assert cfg.objective.mu.valley == 0.02  # kept from the preset
    assert cfg.steps == 3


def test_switching_controller_kind_replaces_preset_params():
    cfg = load_config(None, ["method=chord", "objective.mu={kind: constant, value: 0.1}"])
    assert cfg.objective.mu.kind == "constant" and cfg.objective.mu.value == 0.1


@pytest.mark.parametrize(
    "override, needle",
    [
        ("stepz=3", "stepz: unknown field"),
        ("objective.agg=mean", "objective.agg: got 'mean'; allowed: 'token-mean'"),
        ("method=ppo2", "method: got 'ppo2'; allowed: sft, grpo"),
        ("objective.advantage=gae", "objective.advantage: got 'gae'"),
        ("steps=-1", "steps: Input should be greater than or equal to 0"),
        ("model.dtype=fp8", "model.dtype: got 'fp8'; allowed: 'fp32' or 'bf16'"),
        ("objective.mu.kind=linear", "objective.mu"),
        ("nodot", "must look like key.sub=value"),
    ],
)
def test_bad_values_name_the_field(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert needle in str(e.value)
    assert "Traceback" not in str(e.value)


def test_bad_yaml_names_file_and_line(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("method: grpo\nsteps: [1,\n")
    with pytest.raises(ConfigError, match=r"r.yaml:\d+: not valid YAML"):
        load_config(p)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_config(tmp_path / "nope.yaml")


def test_luffy_needs_groups():
    with pytest.raises(ConfigError, match="demo_in_group needs samples_per_prompt >= 2"):
        load_config(None, ["method=luffy", "samples_per_prompt=1"])
