import pytest

from stamen.shared.config import ConfigError, RunConfig, parse_override


def test_flat_round_trip_keeps_every_value():
    config = RunConfig().replace(**{"lora-rank": 4, "lora-targets": "q_proj,k_proj", "learning-rate": 0.01})
    again = RunConfig.from_flat(config.to_flat())
    assert again == config
    assert again.adapter.targets == ("q_proj", "k_proj")
    assert again.adapter.rank == 4


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("quantisation", "fp8", "quantisation"),
        ("wire-dtype", "bfloat16", "wire-dtype"),
        ("lora-rank", 0, "lora-rank"),
        ("fraction-train", 1.5, "fraction-train"),
        ("local-steps", "many", "local-steps"),
        ("replay-loss", "kl", "replay-loss"),
        ("distill-temperature", 0, "distill-temperature"),
    ],
)
def test_bad_values_are_refused_naming_the_key(key, value, named):
    with pytest.raises(ConfigError, match=named):
        RunConfig().replace(**{key: value})


def test_an_unknown_key_is_refused_with_the_closest_known_one_and_not_the_whole_list():
    with pytest.raises(ConfigError) as refused:
        RunConfig.from_flat({"lora-rnak": 8, "zzz": 1})
    message = str(refused.value)
    assert "'lora-rnak' (did you mean 'lora-rank'?)" in message
    assert "'zzz'" in message and "'zzz' (did" not in message
    assert "secagg-timeout" not in message and "\n" not in message


def test_ignored_protocol_keys_pass():
    flat = {**RunConfig().to_flat(), "server-round": 3}
    assert RunConfig.from_flat(flat, ignore=("server-round",)) == RunConfig()


def test_override_parsing():
    assert parse_override("lora-rank=16") == ("lora-rank", 16)
    assert parse_override("learning-rate=5e-4") == ("learning-rate", 5e-4)
    assert parse_override("use=true") == ("use", True)
    assert parse_override("base-model=tiny") == ("base-model", "tiny")
    assert parse_override("attack=nan") == ("attack", "nan")  # a word, not a float
    assert parse_override("x=inf") == ("x", "inf")
    with pytest.raises(ConfigError):
        parse_override("no-equals-sign")


@pytest.mark.parametrize("sources", ["none", "ewc"])
def test_distillation_without_replayed_rows_is_refused(sources):
    with pytest.raises(ConfigError, match=r"replay-loss.*needs a source with examples"):
        RunConfig().replace(**{"replay": sources, "replay-loss": "distill"})


def test_interpolation_is_refused_for_adapters_without_an_exact_one():
    RunConfig().replace(**{"adapter": "ia3", "wise-alpha": 0.5})  # exact for IA3 and LoRA
    with pytest.raises(ConfigError, match=r"adapter.*no exact interpolation"):
        RunConfig().replace(**{"adapter": "dora", "wise-keep-gain": 0.9})
