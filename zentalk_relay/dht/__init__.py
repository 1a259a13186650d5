"""The Kademlia DHT (BitTorrent KRPC: BEP 5, 42, 43, 44): sans-IO codec, routing table, storage, lookups."""
