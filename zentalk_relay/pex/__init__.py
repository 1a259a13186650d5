"""Peer exchange: the peer book, the PEX messages, and discovery over relay links."""
