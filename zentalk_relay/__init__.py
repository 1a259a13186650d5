"""zentalk-relay: the infrastructure node of the Zentalk network."""

__version__ = "0.1.0"
