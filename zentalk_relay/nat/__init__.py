"""NAT traversal: the STUN codec, the Binding responder and their UDP adapter."""
