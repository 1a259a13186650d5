"""The ``zentalk-relay`` operator command: keys, identity and configuration checks.

Running the node is twistd's job (``twistd -n zentalk-relay``); this command
covers what an operator does around it. Every sub-command reads the same
configuration as the node, so ``info`` shows what the node would use.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__
from .bootstrap import Bootstrap
from .config import Config, ConfigError, load, parse_host_port
from .identity import IdentityError, load_identity


def _config(args: argparse.Namespace) -> Config:
    overrides = []
    if getattr(args, "data_dir", None):
        overrides.append(("--data-dir", "node.data_dir", args.data_dir))
    return load(Path(args.config) if getattr(args, "config", None) else None, overrides)


def _keygen(args: argparse.Namespace) -> int:
    config = _config(args)
    identity, created = load_identity(config.node.data_dir, create=True)
    if created:
        print(f"created {', '.join(created)} keys in {config.node.data_dir / 'keys'}")
    else:
        print(f"keys already exist in {config.node.data_dir / 'keys'}; nothing changed")
    print(f"node id: {identity.node_id.hex()}")
    return 0


def _info(args: argparse.Namespace) -> int:
    config = _config(args)
    identity, _ = load_identity(config.node.data_dir, create=False)
    endpoints: dict[str, list[str]] = {}
    if config.stun.enabled:
        endpoints["stun"] = [f"udp:{address}" for address in config.stun.udp] + list(config.stun.tcp) + (
            [f"tls:{config.stun.tls}"] if config.stun.tls else [])
    if config.link.enabled:
        endpoints["link"] = list(config.link.tcp) + [
            f"{kind}:{value}" for kind, value in (("tls", config.link.tls), ("ws", config.link.websocket)) if value]
    if config.metrics.enabled:
        endpoints["metrics"] = [config.metrics.listen]
    info = {
        "node_id": identity.node_id.hex(),
        "ed25519_public": identity.ed25519_public.hex(),
        "link_public": identity.link_public.hex(),
        "onion_public": identity.onion_public.hex(),
        "bootstrap": str(Bootstrap(identity.ed25519_public, identity.link_public, tuple(
            parse_host_port(address) for address in config.link.public_addresses) if config.link.enabled else ())),
        "data_dir": str(config.node.data_dir),
        "endpoints": endpoints,
        "version": __version__,
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    width = max(len(key) for key in info)
    for key, value in info.items():
        if key == "endpoints":
            for service, items in value.items():
                print(f"{'endpoint ' + service:<{width}}  {', '.join(items)}")
        else:
            print(f"{key:<{width}}  {value}")
    return 0


def _check_config(args: argparse.Namespace) -> int:
    load(Path(args.file))
    print(f"{args.file}: ok")
    return 0


def _turn_credentials(args: argparse.Namespace) -> int:
    """A TURN REST API user name and password from the node's shared secret."""
    import time

    from .nat.credentials import CredentialsError, load_secrets, rest_credentials

    path = args.secret_file
    realm = None
    if path is None:
        config = _config(args)
        path = config.turn.secret_file
        realm = config.turn.realm
        if not path:
            print("zentalk-relay: turn.secret_file is not set; give --secret-file", file=sys.stderr)
            return 1
    try:
        secret = load_secrets(path)[0]
    except CredentialsError as error:
        print(f"zentalk-relay: {error}", file=sys.stderr)
        return 1
    username, password = rest_credentials(secret, time.time(), args.ttl, args.user)
    if args.json:
        document = {"username": username, "password": password, "ttl": args.ttl}
        if realm is not None:
            document["realm"] = realm
        print(json.dumps(document, indent=2))
    else:
        print(f"username  {username}")
        print(f"password  {password}")
    return 0


def _probe(args: argparse.Namespace) -> int:
    """RFC 5780 NAT behaviour discovery against a STUN server (the reference client's detector)."""
    import socket

    from twisted.internet import defer, task

    from .client.nat import discover

    try:
        infos = socket.getaddrinfo(args.host, args.port, type=socket.SOCK_DGRAM,
                                   family=socket.AF_INET6 if args.ipv6 else socket.AF_INET)
    except socket.gaierror as error:
        print(f"zentalk-relay: cannot resolve {args.host}: {error.strerror}", file=sys.stderr)
        return 1
    server = infos[0][4][:2]
    outcome: list = []

    def main(reactor):
        return defer.Deferred.fromCoroutine(discover(reactor, server, rto=args.rto)).addCallback(outcome.append)

    try:
        task.react(main)
    except SystemExit as exit_:  # react always ends with sys.exit
        if exit_.code not in (0, None):
            return 1
    result, local_address = outcome[0]
    local = [local_address]
    if args.json:
        print(json.dumps({
            "server": list(server), "local": list(local[0]), "reachable": result.reachable,
            "mapped": list(result.mapped) if result.mapped else None, "rfc5780": result.rfc5780,
            "other_address": list(result.other) if result.other else None, "behind_nat": result.behind_nat,
            "mapping": result.mapping, "filtering": result.filtering, "nat_type": result.classic,
        }, indent=2))
        return 0 if result.reachable else 2

    def show(address) -> str:
        return f"[{address[0]}]:{address[1]}" if ":" in address[0] else f"{address[0]}:{address[1]}"

    print(f"server          {show(server)}")
    if not result.reachable:
        print("result          no answer: UDP to the server is blocked, or nothing listens there")
        return 2
    support = f"yes, other address {show(result.other)}" if result.rfc5780 else "no (mapping and filtering unknown)"
    print(f"RFC 5780        {support}")
    nat = {True: "behind a NAT", False: "no NAT", None: "unknown"}[result.behind_nat]
    print(f"mapped address  {show(result.mapped) if result.mapped else '-'} (local {show(local[0])}: {nat})")
    print(f"mapping         {result.mapping}")
    print(f"filtering       {result.filtering}")
    print(f"NAT type        {result.classic}")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="zentalk-relay", description="Operate a Zentalk relay node.")
    top.add_argument("--version", action="version", version=f"zentalk-relay {__version__}")
    commands = top.add_subparsers(dest="command", required=True)

    def with_config(sub: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sub.add_argument("-c", "--config", help="TOML configuration file")
        sub.add_argument("-d", "--data-dir", help="data directory (overrides node.data_dir)")
        return sub

    keygen = with_config(commands.add_parser("keygen", help="create the node's keys if they do not exist"))
    keygen.set_defaults(run=_keygen)
    info = with_config(commands.add_parser("info", help="node id, public keys, bootstrap string, endpoints"))
    info.add_argument("--json", action="store_true", help="machine-readable output")
    info.set_defaults(run=_info)
    check = commands.add_parser("check-config", help="validate a configuration file as the node would")
    check.add_argument("file")
    check.set_defaults(run=_check_config)
    credentials = with_config(commands.add_parser(
        "turn-credentials", help="a TURN REST API user name and password from the shared secret"))
    credentials.add_argument("--secret-file", help="the secret file (default: turn.secret_file of the configuration)")
    credentials.add_argument("--ttl", type=int, default=86400, help="seconds the credentials stay valid (default 86400)")
    credentials.add_argument("--user", default="", help="a label appended to the user name, e.g. an account id")
    credentials.add_argument("--json", action="store_true", help="machine-readable output")
    credentials.set_defaults(run=_turn_credentials)
    probe = commands.add_parser("probe", help="NAT behaviour discovery (RFC 5780) against a STUN server")
    probe.add_argument("host", help="the STUN server, a name or an address")
    probe.add_argument("--port", type=int, default=3478, help="its UDP port (default 3478)")
    probe.add_argument("-6", dest="ipv6", action="store_true", help="use IPv6")
    probe.add_argument("--rto", type=float, default=0.2,
                       help="first retransmission timeout in seconds; each test gives up after 15x this (default 0.2)")
    probe.add_argument("--json", action="store_true", help="machine-readable output")
    probe.set_defaults(run=_probe)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except (ConfigError, IdentityError) as error:
        print(f"zentalk-relay: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
