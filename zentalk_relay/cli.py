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
        endpoints["stun"] = [f"udp:{address}" for address in config.stun.udp]
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
