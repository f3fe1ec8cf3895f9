"""Heterogeneous LoRA ranks: truncation down and zero-padding up keep alpha/r scaling consistent."""

import numpy as np
import pytest

from stamen.server.rules import RULES
from stamen.shared.config import ConfigError, RunConfig
from stamen.shared.lora_ranks import pad_to_rank, padded_schema, truncate_to_rank
from stamen.shared.wire import AdapterSchema

A, B = "m.lora_A.default.weight", "m.lora_B.default.weight"
ALPHA, RANK = 16.0, 8


def _product(adapter, rank):
    return ALPHA / rank * adapter[B] @ adapter[A]


def test_truncation_keeps_the_first_components_of_the_product():
    rng = np.random.default_rng(0)
    server = {A: rng.normal(size=(RANK, 12)), B: rng.normal(size=(10, RANK))}
    client = truncate_to_rank(server, 3, RANK)
    assert client[A].shape == (3, 12) and client[B].shape == (10, 3)
    first_three = ALPHA / RANK * server[B][:, :3] @ server[A][:3]
    np.testing.assert_allclose(_product(client, 3), first_three)


def test_padding_round_trips_through_truncation_and_adds_zeros():
    rng = np.random.default_rng(1)
    delta = {A: rng.normal(size=(2, 12)), B: rng.normal(size=(10, 2))}
    padded = pad_to_rank(delta, 2, RANK)
    assert padded[A].shape == (RANK, 12) and padded[B].shape == (10, RANK)
    assert not padded[A][2:].any() and not padded[B][:, 2:].any()
    back = truncate_to_rank(padded, 2, RANK)
    np.testing.assert_allclose(back[A], delta[A])
    np.testing.assert_allclose(back[B], delta[B])
    np.testing.assert_allclose(_product(padded, RANK), _product(delta, 2))


def test_padded_schema_has_the_server_shapes_and_wire_dtype():
    schema = AdapterSchema({A: (2, 12), B: (10, 2)}, "int8")
    padded = padded_schema(schema, RANK)
    assert padded.shapes == {A: (RANK, 12), B: (10, RANK)} and padded.wire_dtype == "int8"


def test_padding_keeps_the_deltas_dtype():
    delta = {A: np.ones((2, 12), np.float32), B: np.ones((10, 2), np.float32)}
    assert {v.dtype for v in pad_to_rank(delta, 2, RANK).values()} == {np.dtype(np.float32)}


def test_client_ranks_are_validated():
    assert RunConfig().replace(**{"client-ranks": "8,4,2"}).simulated_client_ranks() == (8, 4, 2)
    with pytest.raises(ConfigError, match="client-ranks"):
        RunConfig().replace(**{"client-ranks": "16"})
    with pytest.raises(ConfigError, match="client-ranks cannot be combined with aggregation 'scaffold'"):
        RULES["scaffold"].check_fits(RunConfig().replace(**{"client-ranks": "4", "aggregation": "scaffold"}))
    with pytest.raises(ConfigError, match="ffa"):
        RunConfig().replace(**{"client-ranks": "4", "lora-aggregation": "ffa"})
