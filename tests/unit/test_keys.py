import pytest

from server.protocol.keys import KeyFormatError, MachinePrivate, MachinePublic, NodePublic


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
