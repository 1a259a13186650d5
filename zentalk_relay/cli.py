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
    if config.dht.enabled:
        endpoints["dht"] = [f"udp:{address}" for address in config.dht.udp]
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
    from .tor import stored_onion_address

    onion = stored_onion_address(config.node.data_dir)  # derived from keys/tor_onion.key, offline
    if onion is not None:
        info["onion_service"] = f"{onion}:{config.tor.port}"
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


def _hex20(text: str) -> bytes:
    try:
        value = bytes.fromhex(text)
    except ValueError:
        value = b""
    if len(value) != 20:
        raise argparse.ArgumentTypeError(f"{text!r} is not 40 hex digits")
    return value


def _dht(args: argparse.Namespace) -> int:
    """One DHT operation from a short-lived node: lookup, peers, announce, get, put, relays."""
    from twisted.internet import defer, task

    from .client.discovery import start_dht
    from .dht.items import Item, immutable_target
    from .dht.protocol import find_relays

    config = _config(args)
    bootstrap = tuple(args.bootstrap) or config.dht.bootstrap
    if not bootstrap and config.dht.network == "zentalk":
        print("zentalk-relay: no DHT node to join: give --bootstrap HOST:PORT or set dht.bootstrap", file=sys.stderr)
        return 1
    item = None
    if args.dht_command == "put":
        import fastbencode

        value = fastbencode.bencode(args.value.encode("utf-8"))
        if args.mutable:
            identity, _ = load_identity(config.node.data_dir, create=False)
            seq = args.seq if args.seq is not None else int(__import__("time").time())
            item = Item.signed(identity.signing_key, value, seq, args.salt.encode("utf-8"))
        else:
            item = Item.immutable(value)
    outcome: dict = {}

    async def run(reactor) -> None:
        # A store from a read-only node makes libtorrent add it to its table and then wait on it.
        writes = args.dht_command in ("put", "announce")
        service = await start_dht(reactor, bootstrap, bind=args.bind, read_only=not writes,
                                  network=config.dht.network)
        try:
            outcome.update(await _dht_operation(args, service.primary, item, find_relays, immutable_target))
        finally:
            await service.stopService()

    def main(reactor):
        return defer.Deferred.fromCoroutine(run(reactor)).addTimeout(args.timeout, reactor)

    try:
        task.react(main)
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            print(f"zentalk-relay: dht {args.dht_command} did not finish within {args.timeout:g} s",
                  file=sys.stderr)
            return 1
    if args.json:
        print(json.dumps(outcome, indent=2))
    else:
        for key, value in outcome.items():
            if isinstance(value, list):
                print(f"{key}:")
                for entry in value:
                    print(f"  {entry if not isinstance(entry, dict) else ' '.join(f'{k}={v}' for k, v in entry.items())}")
            else:
                print(f"{key}: {value}")
    return 0 if outcome.get("found", True) else 2


async def _dht_operation(args, dht, item, find_relays, immutable_target) -> dict:
    command = args.dht_command
    if command == "lookup":
        done = await dht.find_node(args.target)
        result = done.result
        return {"found": bool(result.nodes), "rounds": result.rounds, "queried": result.queried,
                "nodes": [{"id": n.id.hex(), "address": f"{n.ip}:{n.port}"} for n in result.nodes]}
    if command == "peers":
        done = await dht.get_peers(args.info_hash)
        return {"found": bool(done.result.peers), "rounds": done.result.rounds,
                "peers": [f"{ip}:{port}" for ip, port in done.result.peers]}
    if command == "announce":
        done = await dht.announce(args.info_hash, args.port)
        return {"found": done.stored > 0, "stored": done.stored, "errors": list(done.errors)}
    if command == "get":
        done = await dht.get(args.target, args.salt.encode("utf-8"))
        found = done.result.item
        if found is None:
            return {"found": False, "rounds": done.result.rounds}
        import fastbencode

        decoded = fastbencode.bdecode(found.value)
        shown = decoded.decode("utf-8", "replace") if isinstance(decoded, bytes) else repr(decoded)
        answer = {"found": True, "value": shown, "rounds": done.result.rounds}
        if found.key is not None:
            answer.update({"key": found.key.hex(), "seq": found.seq})
        return answer
    if command == "put":
        done = await dht.put(item)
        return {"found": done.stored > 0, "target": item.target.hex(), "stored": done.stored,
                "errors": list(done.errors), **({"seq": item.seq} if item.key else {})}
    records = await find_relays(dht, limit=args.limit)
    return {"found": bool(records), "relays": [
        {"node_id": r.node_id.hex(), "bootstrap": str(r.bootstrap()), "onion_public": r.onion_key.hex(),
         "load": r.load, "version": r.version} for r in records]}


def _testnet(args: argparse.Namespace) -> int:
    from .testnet import run

    try:
        return run(args.nodes, args.base_port, Path(args.dir), args.duration, settings=tuple(args.set))
    except (ValueError, RuntimeError) as error:
        print(f"zentalk-relay: testnet: {error}", file=sys.stderr)
        return 1


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

    testnet = commands.add_parser("testnet", help="N nodes on loopback that find each other, until Ctrl-C")
    testnet.add_argument("--nodes", type=int, default=3, help="how many nodes (default 3)")
    testnet.add_argument("--dir", default="zentalk-testnet", help="where configurations, state and logs go "
                                                                  "(default ./zentalk-testnet)")
    testnet.add_argument("--base-port", type=int, default=17400,
                         help="node i uses ports BASE+10i ... BASE+10i+4 on 127.0.0.1 (default 17400)")
    testnet.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    testnet.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="a setting for every node, as twistd's --set (e.g. turn.enabled=true), or for node I "
                              "only with I:KEY=VALUE; repeatable")
    testnet.set_defaults(run=_testnet)

    dht = commands.add_parser("dht", help="DHT operations from a short-lived node: lookup, peers, announce, get, "
                                          "put, relays")
    operations = dht.add_subparsers(dest="dht_command", required=True)

    def dht_command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = with_config(operations.add_parser(name, help=help_text))
        sub.add_argument("--bootstrap", action="append", default=[], metavar="HOST:PORT",
                         help="a DHT node to join through; repeatable (default: dht.bootstrap of the configuration)")
        sub.add_argument("--bind", default="0.0.0.0:0", help="local UDP address (default 0.0.0.0:0; [::]:0 for IPv6)")
        sub.add_argument("--timeout", type=float, default=30.0, help="give up after this many seconds (default 30)")
        sub.add_argument("--json", action="store_true", help="machine-readable output")
        sub.set_defaults(run=_dht)
        return sub

    dht_command("lookup", "the nodes nearest a 160-bit id").add_argument("target", type=_hex20, help="40 hex digits")
    dht_command("peers", "peers announced on an info-hash").add_argument("info_hash", type=_hex20,
                                                                        help="40 hex digits")
    announce = dht_command("announce", "announce a port on an info-hash")
    announce.add_argument("info_hash", type=_hex20, help="40 hex digits")
    announce.add_argument("--port", type=int, default=None, help="the port (default: the source port, implied_port)")
    get = dht_command("get", "a BEP 44 item by its target")
    get.add_argument("target", type=_hex20, help="40 hex digits")
    get.add_argument("--salt", default="", help="the salt of a mutable item (needed to verify it)")
    put = dht_command("put", "store a string as a BEP 44 item; prints its target")
    put.add_argument("value", help="the value, stored as a bencoded string")
    put.add_argument("--mutable", action="store_true", help="a mutable item signed with the node's Ed25519 key")
    put.add_argument("--salt", default="", help="salt of the mutable item")
    put.add_argument("--seq", type=int, default=None, help="sequence number (default: the Unix time)")
    relays = dht_command("relays", "relays announced in the DHT, with their verified records")
    relays.add_argument("--limit", type=int, default=32, help="records to fetch at most (default 32)")
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
