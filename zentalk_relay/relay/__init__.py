"""Delivery: onion forwarding across the relay mesh, and the mailbox for offline recipients."""
