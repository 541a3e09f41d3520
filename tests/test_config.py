import pytest
import yaml

from insertion_vla.config import SCHEMA, ConfigError, defaults, load_config

SIM_CONFIG = "train_config_smolvla_sim.yaml"


def test_sim_config_lists_every_key_with_the_seed_values():
    with open(SIM_CONFIG) as f:
        data = yaml.safe_load(f)

    def keys(d, prefix=""):
        return {prefix + k for k, v in d.items()} | {x for k, v in d.items() if isinstance(v, dict) and k != "cameras"
                                                      for x in keys(v, prefix + k + ".")}
    assert keys(data) == keys(SCHEMA)
    cfg = load_config(SIM_CONFIG)
    assert cfg["seed"] == 1000 and cfg["training"]["batch_size"] == 16 and cfg["training"]["steps"] == 30000
    assert cfg["optimizer"]["lr"] == 1e-4 and cfg["scheduler"]["decay_lr"] == 2.5e-6
    assert cfg["validation"]["num_episodes"] == 20 and cfg["policy"]["resize_imgs_with_padding"] == [512, 512]


def test_overrides_are_parsed_as_yaml_and_replace_dicts_whole():
    cfg = load_config(SIM_CONFIG, [
        "--training.steps=100", "--policy.resize_imgs_with_padding=[64, 64]", "--optimizer.lr=3e-5",
        "--dataset.cameras={zed_left: camera1, oak_wrist: camera2}", "--wandb.entity=lab",
    ])
    assert cfg["training"]["steps"] == 100
    assert cfg["policy"]["resize_imgs_with_padding"] == [64, 64]
    assert cfg["optimizer"]["lr"] == 3e-5
    assert cfg["dataset"]["cameras"] == {"zed_left": "camera1", "oak_wrist": "camera2"}
    assert cfg["wandb"]["entity"] == "lab"


@pytest.mark.parametrize("override, message", [
    ("--training.stepz=5", "Did you mean 'training.steps'"),
    ("--optimizer.learning_rate=1", "unknown config key 'optimizer.learning_rate'"),
    ("--training.steps=ten", "must be int"),
    ("--training.steps=1.5", "must be int"),
    ("--training.use_bfloat16=1", "must be bool"),
    ("--dataset=3", "is a section"),
    ("training.steps=3", "--section.key=value"),
    ("--dataset.horizon=10", "must equal policy.chunk_size"),
    ("--dataset.near_target_estimate=true", "dataset.placement_estimate is null"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(SIM_CONFIG, [override])


def test_the_true_placement_and_the_placement_estimate_are_one_or_the_other():
    with pytest.raises(ConfigError, match="both put a placement in the state: set one of them"):
        load_config(SIM_CONFIG, ["--dataset.true_placement=true", "--dataset.placement_estimate=/any/vlm"])
    assert load_config(SIM_CONFIG, ["--dataset.true_placement=true"])["dataset"]["true_placement"] is True


def test_unknown_key_in_file_suggests_the_closest(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  batch_sizee: 4\n")
    with pytest.raises(ConfigError, match=r"training.batch_sizee.*Did you mean 'training.batch_size'"):
        load_config(path)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_a_state_is_required():
    with pytest.raises(ConfigError, match="needs a state"):
        load_config(None, ["--dataset.use_ee_pose=false", "--dataset.use_qpos=false"])


def test_defaults_are_copies():
    a = defaults()
    a["dataset"]["cameras"]["x"] = "y"
    assert "x" not in defaults()["dataset"]["cameras"]


def test_configuration_reference_table_matches_the_schema():
    from pathlib import Path

    from insertion_vla.config import markdown_reference

    page = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    assert markdown_reference() in page, (
        "docs/configuration.md's config table is stale: paste `python -m insertion_vla.config`")
