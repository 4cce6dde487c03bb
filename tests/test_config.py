import dataclasses

import pytest

from braintumor_tf.config import CONFIG_DIR, Config, load_config, parse_override, save_config


def test_default_config_loads_and_is_read_only():
    config = load_config()
    assert config.data.root is None
    assert config.model.block_filters == (32, 64, 128, 256, 256)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.train.epochs = 3


def test_every_shipped_config_loads():
    for path in sorted(CONFIG_DIR.glob("classification*.yaml")):
        assert isinstance(load_config(path), Config)


def test_overrides_are_parsed_as_yaml_and_validated():
    config = load_config(overrides=["train.epochs=3", "optimizer.name=adopt",
                                    "model.block_filters=[8, 16]", "model.block_kernel_sizes=[3, 3]",
                                    "model.block_downsample=[true, false]", "data.root=/x/y"])
    assert config.train.epochs == 3
    assert config.optimizer.name == "adopt"
    assert config.model.block_filters == (8, 16)
    assert config.data.root == "/x/y"
    assert parse_override("a.b=null") == ("a.b", None)


@pytest.mark.parametrize("override, message", [
    ("train.epochs=0", "train.epochs"),
    ("train.precision=half", "train.precision"),
    ("optimizer.name=lamb", "optimizer.name"),
    ("data.channels=2", "data.channels"),
    ("train.epoch=3", "unknown config key.*train.epoch"),
    ("model.block_filters=[8]", "same"),
    ("schedule.warmup_fraction=0.8", "sum"),
    ("epochs", "key=value"),
])
def test_bad_values_give_clear_errors(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(overrides=[override])


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_save_and_reload_round_trip(tmp_path):
    config = load_config(overrides=["train.epochs=7"])
    save_config(config, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == config
    assert config.replace(**{"train.epochs": 9}).train.epochs == 9


def test_cap_per_group_keeps_at_most_k_copies_and_every_group():
    from braintumor_tf.data.run_split import cap_per_group

    rows = [{"path": f"{g}_{i}", "group": g} for g in range(5) for i in range(g + 1)]
    capped = cap_per_group(rows, 2, seed=0)
    counts = {}
    for row in capped:
        counts[row["group"]] = counts.get(row["group"], 0) + 1
    assert counts == {0: 1, 1: 2, 2: 2, 3: 2, 4: 2}
    assert cap_per_group(rows, 2, seed=0) == capped
    assert cap_per_group(rows, 10, seed=0) == rows


def test_dataclass_defaults_are_the_default_config_file():
    """One source of defaults: classification.yaml spells out every key, and a key left out of
    another config means exactly what it says there."""
    import yaml

    written = yaml.safe_load((CONFIG_DIR / "classification.yaml").read_text())

    def leaves(tree, prefix=""):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    defaults = dict(leaves(Config().to_dict()))
    assert set(dict(leaves(written))) == set(defaults)
    assert Config().to_dict() == load_config().to_dict()


def test_the_release_recipe_is_the_default_training_for_longer():
    """The release (savedmodels/classifier/2) was trained by the default config with 12 epochs
    (the default has 7 to fit 30 minutes); its recipe file must keep training exactly that, or
    its model card's numbers describe another model."""
    release = load_config("classification_release")
    assert release.train.epochs == 12
    assert release.to_dict() == load_config(None, ["train.epochs=12"]).to_dict()


def test_packaged_configs_by_name_and_missing_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ folder here, as after a wheel install
    assert load_config("segmentation").task == "segmentation"
    assert load_config("configs/segmentation_seed.yaml").task == "segmentation"
    with pytest.raises(ValueError, match="config file not found: nope.yaml"):
        load_config("nope.yaml")


def test_values_are_coerced_by_the_field_type():
    config = load_config(None, ["optimizer.learning_rate=1e-3", "train.epochs=3.0",
                                "model.dropout=0", "data.image_size=96"])
    assert config.optimizer.learning_rate == 0.001 and isinstance(config.optimizer.learning_rate, float)
    assert config.train.epochs == 3 and isinstance(config.train.epochs, int)
    assert config.model.dropout == 0.0 and config.data.image_size == 96


@pytest.mark.parametrize("override,message", [
    ("train.epochs=abc", "train.epochs must be an integer, got 'abc'"),
    ("train.epochs=2.5", "train.epochs must be an integer, got 2.5"),
    ("model.dropout=abc", "model.dropout must be a finite number, got 'abc'"),
    ("data.image_size=[1, 2]", r"data.image_size must be an integer, got \[1, 2\]"),
    ("optimizer.learning_rate=.inf", "optimizer.learning_rate must be a finite number"),
    ("optimizer.learning_rate=nan", "optimizer.learning_rate must be a finite number"),
    ("data.augment.horizontal_flip=3", "data.augment.horizontal_flip must be true or false"),
    ("model.block_filters=[16, x]", r"model.block_filters\[1\] must be an integer"),
    ("train.monitor=val_dice", "train.monitor must be a logged metric"),
    ("train.epochs=[", "--set train.epochs: cannot read the value"),
])
def test_bad_values_are_one_line_naming_the_key(override, message):
    with pytest.raises(ValueError, match=message) as error:
        load_config(None, [override])
    assert "\n" not in str(error.value)


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("task: classification\ntrain:\n  epochs: [1,\n  batch_size: 4\n")
    with pytest.raises(ValueError, match=r"bad\.yaml, line \d+") as error:
        load_config(path)
    assert "\n" not in str(error.value)
