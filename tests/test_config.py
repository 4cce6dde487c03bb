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


# A 9-level "billion laughs": ~400 bytes that expand to 10**9 strings where aliases are honoured.
ALIAS_BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{chr(98 + k)}: &{chr(98 + k)} [{','.join(['*' + chr(97 + k)] * 10)}]\n" for k in range(8))


def _in_seconds(function, limit: float = 15.0):
    """The error ``function`` raises, failing the test if it took longer than ``limit`` (the
    failures guarded against took minutes; 5 s failed once on 2 cores shared with a training)."""
    import time

    start = time.perf_counter()
    with pytest.raises(ValueError) as error:
        function()
    assert time.perf_counter() - start < limit
    return str(error.value)


@pytest.mark.parametrize("where", ["top", "inside"])
def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path, where):
    path = tmp_path / "bomb.yaml"
    text = ALIAS_BOMB if where == "top" else "task: classification\ntrain:\n  stages:\n" + "".join(
        "    " + line + "\n" for line in ALIAS_BOMB.splitlines())
    path.write_text(text)
    assert len(text) < 700
    message = _in_seconds(lambda: load_config(path))
    assert "aliases (*a) are not allowed in a config" in message and "bomb.yaml, line" in message
    assert "\n" not in message and len(message) < 400
    message = _in_seconds(lambda: load_config(None, ["train.stages=" + ALIAS_BOMB.replace(
        "\n", ", ").join("{}")]))
    assert "cannot read the value" in message and len(message) < 400


def test_duplicate_keys_and_a_top_level_list_are_one_line_errors(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("task: classification\ntrain:\n  epochs: 3\n  batch_size: 4\n  epochs: 30\n")
    message = _in_seconds(lambda: load_config(path))
    assert message == (f"{path}, line 5: duplicate key 'epochs' (first on line 3): keep one")
    path.write_text("task: classification\ntask: segmentation\n")
    assert "duplicate key 'task'" in _in_seconds(lambda: load_config(path))
    path.write_text("- task: classification\n- train: {epochs: 3}\n")
    for overrides in ([], ["train.epochs=2"]):  # the override used to fail with AttributeError
        message = _in_seconds(lambda overrides=overrides: load_config(path, overrides))
        assert message == (f"{path}: the top level must be a mapping of sections (data:, model:, "
                           "train:, ...), not a list")


def test_values_echoed_in_errors_are_bounded(tmp_path):
    path = tmp_path / "long.yaml"
    path.write_text("model:\n  name: " + "x" * 1_000_000 + "\n")
    message = _in_seconds(lambda: load_config(path))
    assert message.startswith("model.name must be one of") and len(message) < 400
    path.write_text("train:\n  epochs: [" + ", ".join(["1"] * 100_000) + "]\n")
    message = _in_seconds(lambda: load_config(path))
    assert message.startswith("train.epochs must be an integer") and len(message) < 400
    path.write_text("".join(f"key{k}: {k}\n" for k in range(1000)) + "1: 2\n")
    message = _in_seconds(lambda: load_config(path))
    assert message.startswith("unknown config key(s) 1, key0,") and len(message) < 600
    message = _in_seconds(lambda: load_config(None, ["data.subjects=" + "[" * 10 + "y" * 10**5]))
    assert len(message) < 400
    path.write_text("# " + "x" * (2 << 20) + "\n")
    assert "more than a config's" in _in_seconds(lambda: load_config(path))


def test_saved_configs_never_hold_aliases(tmp_path):
    """What save_config writes, load_config reads: a value shared by two fields is written out."""
    config = load_config(None)
    tree = config.to_dict()
    tree["model"]["block_kernel_sizes"] = tree["model"]["block_filters"]  # one object, twice
    import yaml

    from braintumor_tf.config import _NoAliasDumper

    assert "*" not in yaml.dump(tree, Dumper=_NoAliasDumper)
    save_config(config, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == config
