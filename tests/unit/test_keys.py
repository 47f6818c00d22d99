import pytest

from server.protocol.keys import (
    KeyFormatError,
    MachinePrivate,
    MachinePublic,
    NodePrivate,
    NodePublic,
)


def test_text_round_trip_and_prefix_is_strict() -> None:
    key = MachinePrivate.generate().public()
    assert MachinePublic.parse(key.text) == key
    assert key.text.startswith("mkey:") and len(key.text) == 5 + 64
    with pytest.raises(KeyFormatError):
        NodePublic.parse(key.text)  # a machine key is not a node key
    with pytest.raises(KeyFormatError):
        MachinePublic.parse(key.text.upper().replace("MKEY:", "mkey:"))


def test_zero_key_is_the_one_clients_send_on_first_login() -> None:
    zero = NodePublic.parse("nodekey:" + "0" * 64)
    assert zero.is_zero and zero == NodePublic.zero()


def test_kinds_never_compare_equal() -> None:
    raw = bytes(range(32))
    assert MachinePublic(raw) != NodePublic(raw)
    assert len({MachinePublic(raw), MachinePublic(raw)}) == 1


def test_private_key_is_not_printed() -> None:
    assert "privkey" not in repr(MachinePrivate.generate())


# RFC 7748 section 6.1 (X25519 Diffie-Hellman test vector).
ALICE_PRIVATE = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
ALICE_PUBLIC = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
BOB_PRIVATE = "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"
BOB_PUBLIC = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
SHARED = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"


def test_public_keys_and_dh_match_rfc7748() -> None:
    from server.protocol.noise_handshake import _dh, public_of

    alice = MachinePrivate(bytes.fromhex(ALICE_PRIVATE))
    bob = MachinePrivate(bytes.fromhex(BOB_PRIVATE))
    assert alice.public().raw.hex() == ALICE_PUBLIC == public_of(alice).hex()
    assert bob.public().raw.hex() == BOB_PUBLIC == public_of(bob).hex()
    assert _dh(alice, bob.public()).hex() == SHARED == _dh(bob, alice.public()).hex()


def test_the_handshakes_public_keys_are_the_keys_own() -> None:
    from server.protocol.noise_handshake import public_of

    for _ in range(50):
        key = NodePrivate.generate()
        assert public_of(key) == key.public_raw()
