"""The peer and item stores: bounds, expiry, and persistence through JSON."""

import json
import random

import pytest
from nacl.signing import SigningKey

from zentalk_relay.dht.items import Item
from zentalk_relay.dht.krpc import ErrorCode, KrpcError
from zentalk_relay.dht.storage import ItemStore, PeerStore


def test_peer_store_round_trip_keeps_what_is_live():
    store = PeerStore()
    store.announce(b"a" * 20, ("192.0.2.1", 1), 0.0)
    store.announce(b"a" * 20, ("2001:db8::1", 2), 100.0)
    store.announce(b"b" * 20, ("192.0.2.2", 3), 0.0)
    data = json.loads(json.dumps(store.to_dict(50.0)))
    again = PeerStore.from_dict(data, 1850.0)  # the first and third expired at 1800
    assert again.peers(b"a" * 20, 1850.0, 10, random.Random()) == [("2001:db8::1", 2)]
    assert len(again) == 1
    assert again.peers(b"a" * 20, 1900.0, 10, random.Random()) == []


def test_item_store_round_trip_verifies_again():
    key = SigningKey(bytes(32))
    mutable = Item.signed(key, b"3:abc", 4, b"salt")
    immutable = Item.immutable(b"4:spam")
    store = ItemStore()
    store.put(mutable, 0.0)
    store.put(immutable, 10.0)
    data = json.loads(json.dumps(store.to_dict(20.0)))
    again = ItemStore.from_dict(data, 30.0)
    assert again.get(mutable.target, 30.0) == mutable and again.get(immutable.target, 30.0) == immutable
    with pytest.raises(KrpcError) as info:
        again.put(Item.signed(key, b"1:x", 3, b"salt"), 31.0)
    assert info.value.code == ErrorCode.SEQ_TOO_LOW
    assert again.get(mutable.target, 7200.0) is None  # the expiry was kept
    data["items"][0][0] = b"3:xyz".hex()  # tampered value: the signature no longer verifies
    with pytest.raises(ValueError):
        ItemStore.from_dict(data, 30.0)


@pytest.mark.parametrize(
    "data",
    [None, {"format": "x"}, {"format": "zentalk-dht-items/1", "items": [[1, 2]]},
     {"format": "zentalk-dht-items/1", "items": [["zz", None, None, None, "", 1.0]]},
     {"format": "zentalk-dht-items/1", "items": [["6931", None, None, -1, "", 1.0]]},
     {"format": "zentalk-dht-items/1", "items": [["6931", None, None, None, "", "soon"]]}],
)
def test_malformed_item_store_is_value_error(data):
    with pytest.raises(ValueError):
        ItemStore.from_dict(data, 0.0)


@pytest.mark.parametrize(
    "data",
    [None, {"format": "zentalk-dht-peers/1", "torrents": [["00" * 20, [["nonsense", 1, 5.0]]]]},
     {"format": "zentalk-dht-peers/1", "torrents": [["00" * 19, []]]},
     {"format": "zentalk-dht-peers/1", "torrents": [["00" * 20, [["192.0.2.1", 0, 5.0]]]]}],
)
def test_malformed_peer_store_is_value_error(data):
    with pytest.raises(ValueError):
        PeerStore.from_dict(data, 0.0)
