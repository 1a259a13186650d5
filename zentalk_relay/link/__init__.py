"""The relay link protocol: framing, Noise NK, handshake and authentication, session state."""
