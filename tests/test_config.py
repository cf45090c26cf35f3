"""Config errors name the field and the allowed values; presets and overrides resolve."""

import pytest

from tandem.config import load_config
from tandem.errors import ConfigError


def test_preset_fills_objective_and_override_wins():
    cfg = load_config(None, ["method=chord", "objective.controllers.mu.peak=0.9", "steps=3"])
    assert cfg.objective.terms["sft"].kind == "chord_phi"
    mu = cfg.objective.controllers["mu"]
    assert mu.kind == "warmup_cosine" and mu.peak == 0.9
    assert mu.valley == 0.02  # kept from the preset
    assert cfg.steps == 3


def test_switching_kind_replaces_preset_params_and_shorthands():
    cfg = load_config(
        None, ["method=chord", "objective.controllers.mu={kind: constant, value: 0.1}"]
    )
    assert cfg.objective.controllers["mu"].kind == "constant"
    assert cfg.objective.controllers["mu"].value == 0.1
    cfg = load_config(None, ["method=chord", "objective.controllers.mu=0.3"])  # a number: constant
    assert cfg.objective.controllers["mu"].value == 0.3
    cfg = load_config(None, ["method=grpo", "objective.advantage=rloo"])  # a name: {kind: name}
    assert cfg.objective.advantage.kind == "rloo"


def test_null_removes_an_entry_and_terms_can_be_added():
    cfg = load_config(None, ["method=grpo", "objective.terms.entropy=null"])
    assert "entropy" not in cfg.objective.terms
    cfg = load_config(
        None, ["method=grpo", "objective.terms.bonus={kind: nll, sources: rollouts, coef: 0.1}"]
    )
    assert cfg.objective.terms["bonus"].sources == ["rollouts"]


def test_pipeline_stages_resolve_each_method():
    cfg = load_config(None, ["method=sft_then_grpo", "stages.sft.steps=3", "stages.rl.lr=2e-6"])
    assert [n for n, _ in cfg.stage_list()] == ["sft", "rl"]
    assert cfg.stages["sft"].objective.terms["sft"].kind == "nll"
    assert cfg.stages["rl"].objective.terms["pg"].kind == "pg" and cfg.stages["rl"].lr == 2e-6
    with pytest.raises(ConfigError, match="stages.<name>.objective"):
        load_config(None, ["method=sft_then_grpo", "objective.terms.pg.clip_high=0.3"])
    with pytest.raises(ConfigError, match="stages.sft.steps: only the last stage"):
        load_config(None, ["method=sft_then_grpo", "stages.sft.steps=null"])


def test_resolved_config_round_trips(tmp_path):
    from tandem.config import dump_config

    cfg = load_config(None, ["method=luffy", "objective.terms.entropy=null", "steps=7"])
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(cfg))
    again = load_config(path, preset=False)
    assert again == cfg and "entropy" not in again.objective.terms


@pytest.mark.parametrize(
    "override, needle",
    [
        ("stepz=3", "stepz: unknown field"),
        (
            "objective.terms.pg.agg=mean",
            "objective.terms.pg.agg: got 'mean'; allowed: 'token-mean'",
        ),
        ("objective.terms.kl.estimator=k4", "allowed: 'k1', 'k2', 'k3', 'k1+' or 'k3+'"),
        ("objective.terms.pg.kind=gspo2", "objective.terms.pg.kind: got 'gspo2'; allowed: 'pg'"),
        ("objective.terms.pg.clip_hgih=0.3", "objective.terms.pg.clip_hgih: unknown field"),
        ("objective.terms.pg.sources=[demos]", "objective.terms.pg.sources: unknown source(s)"),
        ("objective.terms.pg.coef=mu", "objective.terms.pg.coef: 'mu' is not a controller"),
        ("objective.advantage=gae2", "objective.advantage.kind: got 'gae2'; allowed: 'grpo'"),
        ("objective.advantage=null", "objective.advantage: the terms need advantages"),
        ("objective.sources.rollouts.kind=rollout", "allowed: 'rollouts', 'demo_in_group'"),
        ("method=ppo2", "method: got 'ppo2'; allowed: sft, grpo"),
        ("steps=-1", "steps: Input should be greater than or equal to 0"),
        ("model.dtype=fp8", "model.dtype: got 'fp8'; allowed: 'fp32', 'bf16' or 'fp64'"),
        ("model.device=tpu", "model.device"),
        ("objective.updates=[{terms: [pgg]}]", "objective.updates.0.terms: unknown term(s)"),
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
    with pytest.raises(ConfigError, match="objective.sources.rollouts: demos .1. must be fewer"):
        load_config(None, ["method=luffy", "samples_per_prompt=1"])


def test_every_bundled_recipe_resolves():
    from tandem.cli import bundled_recipes

    for name, path in bundled_recipes().items():
        cfg = load_config(path)
        assert cfg.stage_list(), name


def test_every_preset_has_a_bundled_recipe():
    from tandem.cli import bundled_recipes
    from tandem.methods import PRESETS

    methods = {load_config(path).method for path in bundled_recipes().values()}
    assert set(PRESETS) <= methods, sorted(set(PRESETS) - methods)
