"""Experiment settings live in configs/experiment/*.yaml and are read with jsonargparse."""
import pytest

from experiments.config import CONFIGS, ConfigError, load_config
from experiments.clever_hans.data import CleverHansConfig
from experiments.demo.run import DemoConfig


@pytest.mark.parametrize("name, cls", [("demo", DemoConfig), ("clever-hans", CleverHansConfig)])
def test_shipped_configs_fill_every_field_of_their_dataclass(name, cls):
    """Each shipped file names every setting (none falls back silently to a Python default)."""
    import yaml
    keys = set(yaml.safe_load((CONFIGS / f"{name}.yaml").read_text()))
    assert keys == set(cls.__dataclass_fields__)
    assert isinstance(load_config(cls, name), cls)


def test_benchmark_configs_are_read_from_yaml():
    from benchmarks.common import CONFIG, SEED_FAITHFUL
    assert SEED_FAITHFUL == {"method": "seed", "batch_size": 1, "options": {
        "lr": 0.07, "max_iter": 20, "l1_weight": 10.0, "num_steps": 100, "t_start": 780}}
    assert CONFIG.batch_size == 16 and tuple(CONFIG.data) == ("toy-test", 400, 7)


def test_overrides_and_bad_configs(tmp_path):
    cfg = load_config(CleverHansConfig, "clever-hans", test_seed=99, images=None)
    assert cfg.test_seed == 99 and cfg.images == load_config(CleverHansConfig, "clever-hans").images
    bad = tmp_path / "bad.yaml"
    bad.write_text("strength: 1.0\nstrenght: 0.5\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(CleverHansConfig, bad)
    bad.write_text("images: many\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(CleverHansConfig, bad)
    with pytest.raises(ConfigError, match="shipped: .*clever-hans"):
        load_config(CleverHansConfig, "no-such-experiment")


def test_demo_command_takes_a_config_a_data_seed_and_n():
    from ldvce.cli import CLI, build_parser
    from ldvce.cliparse import parse
    argv = ["demo", "--spurious", "--data-seed", "6161", "--n", "24", "--config",
            str(CONFIGS / "clever-hans.yaml")]
    _, kw = parse(CLI, build_parser(argv), argv)
    assert kw["data_seed"] == 6161 and kw["n"] == 24 and kw["config"].endswith("clever-hans.yaml")
    from ldvce.cli import main
    with pytest.raises(SystemExit, match="--data-seed goes with --spurious"):
        main(["demo", "--data-seed", "3"])
