from twisted.application.service import ServiceMaker

zentalk_relay = ServiceMaker(
    "zentalk-relay",
    "zentalk_relay.tap",
    "Zentalk network node: relay, STUN/TURN, DHT, peer exchange, metrics",
    "zentalk-relay",
)
