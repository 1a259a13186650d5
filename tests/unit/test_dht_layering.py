"""Every module of zentalk_relay/dht/ but the adapters is sans-IO: no Twisted, no prometheus_client,
no clock and no global randomness."""

import ast
from pathlib import Path

import pytest

from tests.unit.test_layering import forbidden_imports

DHT = Path(__file__).parents[2] / "zentalk_relay" / "dht"
ADAPTERS = {"protocol.py", "service.py"}
MODULES = [p for p in sorted(DHT.glob("*.py")) if p.name not in ADAPTERS]


def test_the_package_is_there():
    assert (DHT / "__init__.py").exists() and len(MODULES) > 5


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_io_framework(path):
    assert forbidden_imports(path.read_text()) == [], f"{path.name} must stay sans-IO"


def _calls(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        func = getattr(node, "func", None)
        if isinstance(node, ast.Call) and isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            names.add(f"{func.value.id}.{func.attr}")
    return names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_clock_and_no_global_randomness(path):
    calls = _calls(path.read_text())
    assert not calls & {"time.time", "time.monotonic", "os.urandom", "secrets.token_bytes"}
    assert not {c for c in calls if c.startswith("random.") and c != "random.Random"}
