"""Every refusal of either secure-aggregation half names its reason, and the bytes both halves sign are pinned.

A refusal that said nothing would leave an operator guessing which message a device turned down and why; a
signed statement that changed between versions would make every peer's signature fail. Protocol halves only,
with real cryptography (the ClientApp's refusals: tests/client/test_lying_server.py).
"""

from __future__ import annotations

import dataclasses
import logging
import random

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from flwr.app import ConfigRecord, RecordDict

from stamen.client import secure_aggregation as client_module
from stamen.client.secagg_checks import DeviceSettings
from stamen.client.secure_aggregation import SecAggClient, secure_input
from stamen.server.secure_aggregation import (
    MAX_CIPHERTEXT_BYTES,
    SecAggAborted,
    SecAggSettings,
    SecureAggregator,
    neighbourhoods,
)
from stamen.shared import shamir
from stamen.shared.config import RunConfig
from stamen.shared.dev_certs import DevCertificates, add_node_key
from stamen.shared.secagg_crypto import agreed_key, encrypt
from stamen.shared.secagg_identity import (
    DeviceIdentity,
    Roster,
    fingerprint,
    keys_statement,
    roster_of,
    survivors_statement,
    verify,
)
from stamen.shared.secagg_protocol import (
    CONSISTENCY_STAGE,
    KEY_SHARE,
    MASK_STAGE,
    SEED_SHARE,
    SHARE_STAGE,
    SIGNATURE,
    UNMASK_STAGE,
    PeerEntry,
    SecAggError,
    pack_shares,
    read_sum,
    update_vector,
)
from stamen.simulations.secure_sum import SESSION, secure_sum

SECURE = RunConfig().replace(**{"secure-aggregation": True})


def _round(nodes=(1, 2, 3), config: RunConfig = SECURE, identities: dict | None = None):
    """Clients that advertised keys, and the server holding them."""
    clients = {node: SecAggClient(RecordDict(), node, DeviceSettings(identity=(identities or {}).get(node)))
               for node in nodes}
    keys = {node: c.advertise(config, SESSION, 1, np.zeros(5)) for node, c in clients.items()}
    roster = Roster(config.privacy.secagg_roster)
    return clients, SecureAggregator(SESSION, 1, keys, 5, SecAggSettings(), random.Random(0), roster=roster), keys


def _shared(nodes=(1, 2, 3), config: RunConfig = SECURE, identities: dict | None = None):
    clients, server, keys = _round(nodes, config, identities)
    for node, (info, peers) in server.share_requests().items():
        server.add_shares(node, clients[node].share_keys(info, peers))
    return clients, server, keys


def _masked(nodes=(1, 2, 3), config: RunConfig = SECURE, identities: dict | None = None):
    clients, server, keys = _shared(nodes, config, identities)
    for node, (info, shares) in server.mask_requests().items():
        server.add_masked(node, clients[node].masked_input(info, shares))
    return clients, server, keys


# -- the client -------------------------------------------------------------------------------------------------

def test_a_device_refuses_a_neighbour_list_it_cannot_share_among_and_says_why():
    clients, server, _ = _round()
    info, peers = server.share_requests()[1]
    with pytest.raises(SecAggError, match="no secure round is pending on this node for round 1"):
        SecAggClient(RecordDict(), 1).share_keys(info, peers)
    lies = [
        (ConfigRecord({"two": peers["2"]}), "malformed neighbour list"),
        (ConfigRecord({"1": peers["2"], "2": peers["2"]}), "must name other nodes, not this one"),
        (ConfigRecord(), "must name other nodes, not this one"),
    ]
    for lie, reason in lies:
        with pytest.raises(SecAggError, match=reason):
            clients[1].share_keys(info, lie)
    for changed, reason in (({"num_clients": 2}, "2 neighbours among 2 clients"),
                            ({"modulus_bits": 64}, "declares a 64-bit modulus; the run's is 32"),
                            ({"num_clients": 1}, "declares 1 clients; a secure round has 2 to 1"),
                            ({"point": 2}, "Shamir points of this node and its neighbours must be distinct and "
                                           "positive"),
                            ({"point": 0}, "must be distinct and positive")):
        with pytest.raises(SecAggError, match=reason):
            clients[1].share_keys(dataclasses.replace(info, **changed), peers)
    clients[1].share_keys(info, peers)  # the honest list is accepted after all those


def test_a_device_refuses_shares_that_are_not_its_neighbours_or_name_another_pair():
    clients, server, _ = _shared()
    info, routed = server.mask_requests()[1]
    with pytest.raises(SecAggError, match="node 9 is not one of this client's neighbours"):
        clients[1].masked_input(info, ConfigRecord({**routed, "9": routed["2"]}))
    # node 3 (malicious) encrypts, under its real key with node 1, a plaintext claiming to come from node 2
    mine = clients[3].state["secagg-client"]
    peer = PeerEntry.from_bytes(bytes(mine["peer/1"]))
    key = agreed_key(bytes(mine["encryption-secret"]), peer.encryption_key, info.encryption_purpose())
    share = shamir.Share(1, 5)
    forged = encrypt(key, pack_shares(2, 1, share, share), info.share_context(3, 1))
    with pytest.raises(SecAggError, match="the share from node 3 names 2 -> 1"):
        clients[1].masked_input(info, ConfigRecord({"2": routed["2"], "3": forged}))


def test_a_device_signs_only_a_survivor_set_that_names_it_once_each_and_only_under_a_roster():
    identities = {node: DeviceIdentity.generate() for node in (1, 2, 3)}
    config = SECURE.replace(**{"secagg-roster": ",".join(i.fingerprint for i in identities.values())})
    clients, server, _ = _masked(config=config, identities=identities)
    info = server.consistency_requests()[1]
    for survivors in ((2, 3), (1, 1, 2)):
        with pytest.raises(SecAggError, match="must name distinct nodes, this one among them"):
            clients[1].sign_survivors(dataclasses.replace(info, survivors=survivors))
    assert set(clients[1].sign_survivors(info)) == {SIGNATURE}
    plain_clients, plain_server, _ = _masked()
    plain_info = dataclasses.replace(plain_server.unmask_requests()[1][0], stage=CONSISTENCY_STAGE)
    with pytest.raises(SecAggError, match="a consistency stage, but the run has no roster for signatures"):
        plain_clients[1].sign_survivors(plain_info)
    info, _ = plain_server.unmask_requests()[1]
    with pytest.raises(SecAggError, match="sent its masked input but is not named a survivor"):
        plain_clients[1].unmask(dataclasses.replace(info, survivors=(2, 3)))


def test_a_device_without_its_identity_or_off_the_roster_advertises_no_keys():
    stranger = DeviceIdentity.generate()
    listed = SECURE.replace(**{"secagg-roster": DeviceIdentity.generate().fingerprint})
    with pytest.raises(SecAggError, match=r"has no identity key \(node config identity-key\) to sign its keys"):
        SecAggClient(RecordDict(), 1).advertise(listed, SESSION, 1, np.zeros(4))
    with pytest.raises(SecAggError, match="this device's identity key is not on the run's roster"):
        SecAggClient(RecordDict(), 1, DeviceSettings(identity=stranger)).advertise(listed, SESSION, 1, np.zeros(4))
    client = SecAggClient(RecordDict(), 1)
    client.advertise(SECURE, SESSION, 1, np.array([1, 2], dtype=np.int64))
    assert client.state["secagg-input"]["vector"].numpy().dtype == np.float64  # kept as the codec reads it


def test_a_devices_own_settings_come_from_its_node_config_and_are_checked(tmp_path):
    certs = DevCertificates(tmp_path)
    key = add_node_key(certs, "phone")
    settings = DeviceSettings.from_node_config({"secagg-min-threshold": 0.75, "secagg-min-neighbours": 3,
                                                "identity-key": str(key)})
    assert (settings.min_threshold, settings.min_neighbours) == (0.75, 3)
    assert settings.identity.fingerprint == roster_of([certs.node_public_key("phone")])[0]
    assert DeviceSettings.from_node_config({}) == DeviceSettings(0.5, 1, None)
    for bad, reason in (({"secagg-min-threshold": 1.0}, r"secagg-min-threshold must be in \[0.5, 1\), got 1.0"),
                        ({"secagg-min-threshold": 0.4}, r"must be in \[0.5, 1\), got 0.4"),
                        ({"secagg-min-neighbours": 0}, "secagg-min-neighbours must be >= 1, got 0")):
        with pytest.raises(SecAggError, match=reason):
            DeviceSettings.from_node_config(bad)
    (tmp_path / "garbage.key").write_text("not a key")
    with pytest.raises(SecAggError, match=r"identity key .*garbage.key is not an OpenSSH private key"):
        DeviceIdentity.load(tmp_path / "garbage.key")
    rsa_key = rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
    (tmp_path / "rsa.key").write_bytes(rsa_key)
    with pytest.raises(SecAggError, match=r"rsa.key is a .*RSAPrivateKey; an EC or Ed25519 key signs"):
        DeviceIdentity.load(tmp_path / "rsa.key")


def test_values_outside_the_range_are_clipped_and_counted(caplog):
    with caplog.at_level(logging.WARNING):
        vector = secure_input(np.array([0.5, 2.0, -1.0, -3.0]), 1000, SECURE)
    assert "2 of 4 update values lie outside secagg-value-range 1 and are clipped to it" in caplog.text
    np.testing.assert_allclose(vector, [0.5, 2.0, -1.0, -3.0, 1.0])  # the codec clips; the warning counts


def test_a_noise_share_is_added_to_the_update_and_a_draw_that_would_be_truncated_is_refused(monkeypatch):
    config = SECURE.replace(**{"dp": "distributed", "dp-clip": 1.0, "dp-noise-multiplier": 0.01})
    value_range = config.secure_value_range()
    vectors = {node: secure_input(np.full(64, 0.001 * node), 10, config) for node in (1, 2, 3)}
    total, _, weight, _ = read_sum(secure_sum(vectors, config=config).total, value_range, 64)
    clipped = sum(0.001 * node for node in (1, 2, 3))
    assert weight == pytest.approx(3.0) and np.abs(total - clipped).max() < 5 * 0.01  # the update, plus z C noise

    class Wild:  # a draw far in the tail: encoding would truncate it
        def normal(self, loc, scale, size):
            return np.full(size, 2.0)

    monkeypatch.setattr(client_module.np.random, "default_rng", lambda seed: Wild())
    with pytest.raises(SecAggError, match="4 noised values left the value range; refusing to send truncated noise"):
        secure_sum({node: update_vector(np.zeros(4), 1.0, 1.0) for node in (1, 2, 3)}, config=config)


# -- identities and what they sign ------------------------------------------------------------------------------

def test_what_a_device_signs_is_pinned_byte_for_byte():
    signed = b"stamen-secagg-keys\x00r/train\x003\x007\x00eemms"
    assert keys_statement("r/train", 3, 7, b"e" * 2, b"m" * 2, b"s") == signed
    assert survivors_statement("r/train", 3, [12, 7]) == b"stamen-secagg-survivors\x00r/train\x003\x007,12"


def test_an_identity_is_an_ec_or_ed25519_openssh_key_and_a_signature_verifies_only_its_own_statement(tmp_path):
    edwards = ed25519.Ed25519PrivateKey.generate()
    (tmp_path / "ed.key").write_bytes(edwards.private_bytes(serialization.Encoding.PEM,
                                                            serialization.PrivateFormat.OpenSSH,
                                                            serialization.NoEncryption()))
    for identity in (DeviceIdentity.load(tmp_path / "ed.key"), DeviceIdentity.generate()):
        signature = identity.sign(b"statement")
        verify(identity.public, signature, b"statement")
        with pytest.raises(SecAggError, match="does not verify"):
            verify(identity.public, signature, b"another statement")
        assert fingerprint(identity.public + b" a comment") == identity.fingerprint == fingerprint(identity.public)
    with pytest.raises(SecAggError, match="a signature of 161 bytes is longer than any this protocol makes"):
        verify(identity.public, b"s" * 161, b"statement")
    with pytest.raises(SecAggError, match="does not verify"):
        verify(identity.public, b"s" * 160, b"statement")  # the longest allowed is read, and fails
    rsa_public = rsa.generate_private_key(65537, 2048).public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                                                serialization.PublicFormat.OpenSSH)
    for public, reason in ((b"", "an identity must be an OpenSSH public key of at most 512 bytes"),
                           (b"x" * 513, "of at most 512 bytes"), ("text", "of at most 512 bytes"),
                           (b"ssh-nothing AAAA", "an identity is not an OpenSSH public key"),
                           (rsa_public, "is a .*RSAPublicKey; only EC and Ed25519 keys sign here")):
        with pytest.raises(SecAggError, match=reason):
            fingerprint(public)
    unknown = DeviceIdentity.generate()
    with pytest.raises(SecAggError, match=rf"identity {unknown.fingerprint[:16]} is not on the run's roster$"):
        Roster([identity.fingerprint]).admit(unknown.public, unknown.sign(b"x"), b"x")


def test_a_roster_is_the_sorted_fingerprints_of_the_devices_public_key_files(tmp_path):
    certs = DevCertificates(tmp_path)
    for name in ("b", "a"):
        add_node_key(certs, name)
    roster = roster_of(certs.node_public_keys())
    assert roster == tuple(sorted(fingerprint(path.read_bytes()) for path in certs.node_public_keys()))
    assert len(roster) == 2 and all(len(entry) == 64 for entry in roster)


# -- the server -------------------------------------------------------------------------------------------------

def test_the_server_drops_a_stage_reply_it_cannot_use_and_says_why():
    with pytest.raises(SecAggAborted, match="secure aggregation needs at least 2 clients, 1 advertised keys"):
        _round(nodes=(1,))
    clients, server, _ = _round()
    info, peers = server.share_requests()[1]
    shares = clients[1].share_keys(info, peers)
    for bad, reason in ((dict(shares), "node 1 sent its shares as dict, not a ConfigRecord"),
                        (ConfigRecord({**shares, "9": shares["2"]}), r"sent shares for \['2', '3', '9'\], not for "),
                        (ConfigRecord({**shares, "2": b"c" * (MAX_CIPHERTEXT_BYTES + 1)}),
                         f"a share that is not a ciphertext of at most {MAX_CIPHERTEXT_BYTES} bytes"),
                        (ConfigRecord({**shares, "2": "text"}), "not a ciphertext")):
        with pytest.raises(SecAggError, match=reason):
            server.add_shares(1, bad)
    server.add_shares(1, ConfigRecord({**shares, "2": b"c" * MAX_CIPHERTEXT_BYTES}))  # the bound itself is allowed
    with pytest.raises(SecAggError, match="node 2 may not send a masked input now"):
        server.add_masked(2, np.zeros(5, np.uint32))  # before it shared
    for node in (2, 3):
        server.add_shares(node, clients[node].share_keys(*server.share_requests()[node]))
    for vector, reason in ((np.zeros(4, np.uint32), r"is uint32\(4,\), expected uint32\(5,\)"),
                           (np.zeros(5, np.uint64), r"is uint64\(5,\), expected uint32\(5,\)")):
        with pytest.raises(SecAggError, match=f"masked input of node 2 {reason}"):
            server.add_masked(2, vector)
    server.add_masked(2, np.zeros(5, np.uint32))
    with pytest.raises(SecAggError, match="node 2 may not send a masked input now"):
        server.add_masked(2, np.zeros(5, np.uint32))  # twice


def test_the_stage_records_name_their_stage_and_the_mask_stage_the_metrics():
    clients, server, _ = _round()
    assert {info.stage for info, _ in server.share_requests().values()} == {SHARE_STAGE}
    server.metric_names = ("train-loss",)
    for node, (info, peers) in server.share_requests().items():
        server.add_shares(node, clients[node].share_keys(info, peers))
    assert {(info.stage, info.metrics) for info, _ in server.mask_requests().values()} == {
        (MASK_STAGE, ("train-loss",))}
    assert [info.point for info, _ in server.share_requests().values()] == [1, 2, 3]
    with pytest.raises(SecAggAborted, match="no client sent a masked input"):
        server.finish({})
    for node, (info, shares) in server.mask_requests().items():
        server.add_masked(node, clients[node].masked_input(info, shares))
    assert {(info.stage, info.survivors) for info in server.consistency_requests().values()} == {
        (CONSISTENCY_STAGE, (1, 2, 3))}
    assert {(info.stage, signed) for info, signed in server.unmask_requests().values()} == {(UNMASK_STAGE, None)}


def test_the_server_takes_signatures_of_the_survivor_set_only_from_survivors_once_each_and_needs_t_of_them():
    identities = {node: DeviceIdentity.generate() for node in (1, 2, 3)}
    config = SECURE.replace(**{"secagg-roster": ",".join(i.fingerprint for i in identities.values())})
    clients, server, _ = _masked(config=config, identities=identities)
    requests = server.consistency_requests()
    for node, bad, reason in ((1, {SIGNATURE: b"x"}, "node 1 sent no signature of the survivor set"),
                              (1, ConfigRecord(), "node 1 sent no signature of the survivor set"),
                              (1, ConfigRecord({SIGNATURE: "text"}), "sent no signature"),
                              (9, ConfigRecord({SIGNATURE: b"x"}), "node 9 may not sign the survivor set now")):
        with pytest.raises(SecAggError, match=reason):
            server.add_signature(node, bad)
    with pytest.raises(SecAggError, match="does not verify"):  # node 2's signature presented as node 1's
        server.add_signature(1, clients[2].sign_survivors(requests[2]))
    server.add_signature(1, clients[1].sign_survivors(requests[1]))
    with pytest.raises(SecAggError, match="node 1 may not sign the survivor set now"):
        server.add_signature(1, ConfigRecord({SIGNATURE: b"again"}))
    with pytest.raises(SecAggAborted, match="only 1 of the 2 signatures of the survivor set needed came back"):
        server.unmask_requests()
    server.add_signature(3, clients[3].sign_survivors(requests[3]))
    (_, signed), *_ = server.unmask_requests().values()  # t = 2 signatures: exactly enough
    assert sorted(signed) == ["1", "3"]


def test_the_server_ignores_a_malformed_share_rebuilds_around_a_wrong_one_and_names_a_secret_it_cannot_rebuild(
        caplog):
    vectors = {node: np.full(4, 0.1 * node) for node in range(1, 6)}

    def answers(change):
        clients, server, _ = _masked(nodes=tuple(vectors))
        revealed = {node: clients[node].unmask(info) for node, (info, _) in server.unmask_requests().items()}
        change(revealed)
        return server.finish(revealed), server

    def malformed(revealed):
        revealed[1] = ConfigRecord({**revealed[1], f"{SEED_SHARE}/2": b"\x01" * 9})

    with caplog.at_level(logging.WARNING):
        total, server = answers(malformed)
    assert "node 1 revealed a malformed share of node 2; ignored" in caplog.text
    assert np.abs(total).max() <= server.codec.sum_error_bound  # zeros summed: the others' shares sufficed

    def wrong(revealed):  # a holder that lies: a well-formed share of another value
        share = shamir.Share.from_bytes(bytes(revealed[1][f"{SEED_SHARE}/2"]))
        revealed[1] = ConfigRecord({**revealed[1], f"{SEED_SHARE}/2": shamir.Share(share.x, share.y + 1).to_bytes()})

    total, server = answers(wrong)
    assert np.abs(total).max() <= server.codec.sum_error_bound

    def all_wrong(revealed):  # every holder shifts its share by 1: every subset rebuilds the seed plus 1
        for holder in list(revealed):
            key = f"{SEED_SHARE}/2"
            if key in revealed[holder]:
                share = shamir.Share.from_bytes(bytes(revealed[holder][key]))
                revealed[holder] = ConfigRecord({**revealed[holder], key: shamir.Share(share.x, share.y + 1)
                                                 .to_bytes()})

    with pytest.raises(SecAggAborted, match=r"no 3 of the 5 shares of node 2's seed that came back rebuild the "
                                            r"secret it committed to"):
        answers(all_wrong)


def test_a_rebuilt_mask_key_that_is_not_the_one_advertised_is_never_used():
    clients, server, _ = _shared(nodes=(1, 2, 3, 4, 5))
    for node, (info, shares) in server.mask_requests().items():
        if node != 5:  # node 5 drops after sharing: its mask key is rebuilt
            server.add_masked(node, clients[node].masked_input(info, shares))
    revealed = {node: clients[node].unmask(info) for node, (info, _) in server.unmask_requests().items()}
    other = shamir.split(bytes(32), [1, 2, 3, 4, 5], 3)  # shares of another key, consistent with each other
    for node, record in revealed.items():
        revealed[node] = ConfigRecord({**record, f"{KEY_SHARE}/5": other[node - 1].to_bytes()})
    with pytest.raises(SecAggAborted, match="no 3 of the 4 shares of node 5's key that came back rebuild the secret "
                                            "it committed to"):
        server.finish(revealed)


def test_neighbourhoods_are_complete_up_to_the_degree_and_k_regular_beyond_it():
    nodes = list(range(10))
    assert all(len(peers) == 9 for peers in neighbourhoods(nodes, 9, random.Random(0)).values())  # k = n - 1
    assert all(len(peers) == 1 for peers in neighbourhoods([1, 2], 0, random.Random(0)).values())
    sparse = neighbourhoods(nodes, 3, random.Random(0))  # an odd degree rounds up to the next even one
    assert {len(peers) for peers in sparse.values()} == {4}
    assert {len(peers) for peers in neighbourhoods(list(range(40)), 0, random.Random(0)).values()} == {12}
    _, _, keys = _round(nodes=tuple(range(1, 21)))
    server = SecureAggregator(SESSION, 1, keys, 5, SecAggSettings(degree=4), random.Random(0))
    assert {len(peers) for peers in server.graph.values()} == {4}  # the run's degree is the one used
