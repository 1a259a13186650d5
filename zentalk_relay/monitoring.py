"""The HTTP face for operators: /metrics, /healthz and /status.

Prometheus scrapes /metrics; load balancers and systemd health checks poll
/healthz; people and scripts read /status. Requests are not logged: the
scraper's address is nobody's business at info level.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Callable

from twisted.application.service import Service
from twisted.web.pages import notFound
from twisted.web.resource import Resource
from twisted.web.server import Site

from .listen import describe_port, listen_stream
from .logs import logger
from .metrics import CONTENT_TYPE, NodeMetrics

log = logger(__name__)


class _Leaf(Resource):
    isLeaf = True

    def __init__(self, render: Callable[[], tuple[int, str, bytes]]) -> None:
        super().__init__()
        self._render = render

    def render_GET(self, request) -> bytes:
        code, content_type, body = self._render()
        request.setResponseCode(code)
        request.setHeader(b"content-type", content_type.encode())
        request.setHeader(b"cache-control", b"no-store")
        return body

    render_HEAD = render_GET


class _Root(Resource):
    def getChild(self, path: bytes, request):
        return notFound()


class _QuietSite(Site):
    """No access log, and connections only from the allowed networks (closed before a byte is read)."""

    noisy = False

    def __init__(self, resource, allow: tuple = ()) -> None:
        super().__init__(resource)
        self._allow = [ipaddress.ip_network(network, strict=False) for network in allow]
        self.refused = 0

    def buildProtocol(self, addr):
        host = getattr(addr, "host", None)
        if host is not None and self._allow:
            ip = ipaddress.ip_address(host.split("%")[0])
            if ip.version == 6 and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            if not any(ip in network for network in self._allow):
                self.refused += 1
                return None
        return super().buildProtocol(addr)

    def log(self, request) -> None:
        """No access log: it would record every scraper's address."""


class MonitorService(Service):
    """Serves the monitoring resources on one stream endpoint."""

    def __init__(self, reactor, listen: str, metrics: NodeMetrics, status: Callable[[], dict],
                 healthy: Callable[[], tuple[bool, list[str]]], allow: tuple = ()) -> None:
        self._reactor = reactor
        self._listen = listen
        self._status = status
        self._healthy = healthy
        self._port = None
        root = _Root()
        root.putChild(b"metrics", _Leaf(lambda: (200, CONTENT_TYPE, metrics.exposition())))
        root.putChild(b"healthz", _Leaf(self._health))
        root.putChild(b"status", _Leaf(self._status_json))
        self._site = _QuietSite(root, allow)
        metrics.watch_monitoring(lambda: self._site.refused)

    @property
    def endpoints(self) -> list[str]:
        return [] if self._port is None else [describe_port("tcp", self._port)]

    def _health(self) -> tuple[int, str, bytes]:
        ok, failing = self._healthy()
        if ok:
            return 200, "text/plain; charset=utf-8", b"ok\n"
        return 503, "text/plain; charset=utf-8", ("not running: " + ", ".join(failing) + "\n").encode()

    def _status_json(self) -> tuple[int, str, bytes]:
        return 200, "application/json", json.dumps(self._status(), indent=2).encode() + b"\n"

    def privilegedStartService(self) -> None:
        self._port = listen_stream(self._reactor, self._listen, self._site)
        log.info("metrics listening on {endpoint}", endpoint=describe_port("tcp", self._port))
        super().privilegedStartService()

    def stopService(self):
        super().stopService()
        port, self._port = self._port, None
        if port is not None:
            return port.stopListening()
        return None
