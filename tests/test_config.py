"""Run config: defaults are the digits recipe, recipes hold their published numbers, overrides are typed."""

from __future__ import annotations

import pytest
import yaml

from ditkit.config import RunConfig, apply_overrides, config_diff, load_config
from ditkit.recipes import RECIPES, recipe


def test_defaults_are_the_digits_recipe():
    assert load_config() == recipe("digits") == RunConfig()
    cfg = RunConfig()
    assert cfg.data.path == "digits" and cfg.data.hflip is False
    assert cfg.model.class_dropout_prob > 0  # class-conditional with label dropout: guidance works
    # flow matching, sampled in 10 dpm++2m steps; every other recipe is the official DDPM process
    assert cfg.process.kind == "flow" and (cfg.sample.sampler, cfg.sample.steps) == ("dpm++2m", 10)
    assert (cfg.train.max_steps, cfg.train.batch_size, cfg.train.lr) == (1000, 64, 2e-3)
    for name in sorted(set(RECIPES) - {"digits"}):
        assert recipe(name).process.kind == "ddpm" and recipe(name).sample.sampler == "ddpm", name
    old = recipe("digits-ddpm")  # the embedded default before flow matching
    assert (old.train.max_steps, old.train.batch_size, old.sample.steps) == (1500, 128, 100)
    assert old.data == cfg.data and old.model == cfg.model


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipes_round_trip_through_dict_and_yaml(name):
    cfg = recipe(name)
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    assert RunConfig.from_dict(yaml.safe_load(cfg.to_yaml())) == cfg
    assert cfg.recipe == name


def test_recipe_numbers():
    wikiart = recipe("wikiart").train
    assert (wikiart.lr, wikiart.lr_schedule, wikiart.warmup_ratio) == (3e-4, "cosine", 0.01)
    assert wikiart.warmup == round(0.01 * wikiart.max_steps)
    assert recipe("wikiart").data.hflip
    ft = recipe("finetune").train
    assert (ft.lr, ft.lr_schedule, ft.warmup_steps, ft.batch_size, ft.weight_decay) == (
        5e-5,
        "constant",
        10,
        2,
        0.01,
    )
    inet = recipe("imagenet").train
    assert (inet.lr, inet.weight_decay, inet.batch_size, inet.ema_decay) == (1e-4, 0.0, 256, 0.9999)
    assert inet.lr_schedule == "constant" and inet.warmup == 0 and not inet.ema_warmup


def test_overrides_are_type_checked_and_converted():
    cfg = apply_overrides(
        RunConfig(),
        [
            "train.lr=3e-4",
            "train.max_steps=1e3",
            "data.hflip=yes",
            "train.betas=0.9,0.95",
            "model.depth=2",
            "sample.labels=[3, 7]",
            "model.init_from=none",
            "data.vae=null",
        ],
    )
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float)  # YAML would read "3e-4" as a string
    assert cfg.train.max_steps == 1000 and isinstance(cfg.train.max_steps, int)
    assert cfg.data.hflip is True
    assert cfg.train.betas == (0.9, 0.95)
    assert cfg.model.depth == 2
    assert cfg.sample.labels == (3, 7)
    assert cfg.model.init_from is None and cfg.data.vae is None


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lrr=1", "did you mean 'train.lr'"),
        ("trian.lr=1", "did you mean 'train.lr'"),
        ("lr=1", "did you mean 'train.lr'"),
        ("train.ema_decy=0.9", "did you mean 'train.ema_decay'"),
        ("train.lr=fast", "train.lr expects a number"),
        ("train.max_steps=1.5", "train.max_steps expects an integer"),
        ("data.hflip=maybe", "data.hflip expects true/false"),
        ("train.betas=0.9", "train.betas expects a list of 2"),
        ("train.lr", "expects key=value"),
        ("train.lr_schedule=cosin", "did you mean 'cosine'"),
        ("train.batch_size=-4", "train.batch_size must be > 0"),
    ],
)
def test_bad_overrides_fail_with_one_helpful_line(override, message):
    with pytest.raises(ValueError) as info:
        apply_overrides(RunConfig(), [override])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_validation_across_fields():
    with pytest.raises(ValueError, match="not divisible by train.grad_accum"):
        apply_overrides(RunConfig(), ["train.batch_size=10", "train.grad_accum=3"])
    with pytest.raises(ValueError, match="guidance_scale must be >= 1"):
        apply_overrides(RunConfig(), ["sample.guidance_scale=0.5"])


def test_yaml_file_starts_from_its_recipe(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("recipe: wikiart\ndata:\n  path: /data/wikiart\ntrain:\n  lr: 1.0e-4\n")
    cfg = load_config(str(path), ["train.max_steps=10"])
    assert cfg.recipe == "wikiart" and cfg.data.path == "/data/wikiart"
    assert cfg.train.lr == 1e-4 and cfg.train.max_steps == 10
    assert cfg.train.lr_schedule == "cosine"  # from the recipe
    assert config_diff(recipe("wikiart"), cfg) == ["data.path", "train.max_steps", "train.lr"]


def test_bad_files_and_names(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: 1e-3\n  warmup_stepz: 3\n")
    with pytest.raises(
        ValueError, match="unknown config key 'train.warmup_stepz'; did you mean 'train.warmup_steps'"
    ):
        load_config(str(bad))
    with pytest.raises(FileNotFoundError):
        load_config(str(tmp_path / "missing.yaml"))
    with pytest.raises(ValueError, match="did you mean 'wikiart'"):
        load_config("wikiar")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(str(broken))


def test_allow_outside_paths_is_a_data_key_and_coercion_lives_in_its_own_module():
    from ditkit.config import read_config_file, valid_keys  # still importable from ditkit.config
    from ditkit.config_coerce import coerce, merge

    assert RunConfig().data.allow_outside_paths is False
    assert load_config(None, ["data.allow_outside_paths=yes"]).data.allow_outside_paths is True
    assert "data.allow_outside_paths" in valid_keys() and callable(read_config_file)
    assert coerce("1,2", tuple[int, ...], "k") == (1, 2) and coerce("3e-4", float | None, "k") == 3e-4
    with pytest.raises(ValueError, match="unknown config key 'data.alow_outside_paths'; did you mean"):
        apply_overrides(RunConfig(), ["data.alow_outside_paths=true"])
    assert (
        merge(RunConfig(), {"train": {"lr": "1e-3"}}, {"train": type(RunConfig().train)}, origin="x").train.lr
        == 1e-3
    )


def test_config_sampler_choices_are_the_registry():
    """config.py keeps a plain tuple (no import of the sampling layer at config time); it must list exactly
    the registry's samplers, so the config, the CLI and the pipeline accept the same names."""
    from ditkit import config
    from ditkit.sampling import sampler_names

    assert set(config.SAMPLERS) == set(sampler_names())
