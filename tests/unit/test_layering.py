"""Sans-IO modules never import Twisted or prometheus_client.

Inside each service package, every module but ``protocol.py`` and
``service.py`` is sans-IO; so are the top-level modules listed below.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[2] / "zentalk_relay"
SERVICE_PACKAGES = ["nat", "link", "relay", "dht"]
ADAPTERS = {"protocol.py", "service.py"}
TOP_LEVEL_SANS_IO = ["identity.py", "bootstrap.py", "ratelimit.py"]
FORBIDDEN = ("twisted", "prometheus_client")


def forbidden_imports(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [name for name in names if name.split(".")[0] in FORBIDDEN]
    return found


def _sans_io_modules() -> list[Path]:
    modules = [PACKAGE / name for name in TOP_LEVEL_SANS_IO]
    for package in SERVICE_PACKAGES:
        modules += [path for path in sorted((PACKAGE / package).glob("*.py")) if path.name not in ADAPTERS]
    return modules


def test_the_checker_catches_imports_anywhere():
    assert forbidden_imports("def f():\n    from twisted.internet import reactor\n") == ["twisted.internet"]
    assert forbidden_imports("import prometheus_client as p\n") == ["prometheus_client"]
    assert forbidden_imports("from . import twisted_like\nimport os\n") == []


def test_every_service_package_exists():
    for package in SERVICE_PACKAGES:
        assert (PACKAGE / package / "__init__.py").exists()


@pytest.mark.parametrize("path", _sans_io_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_sans_io_module_imports_no_io_framework(path):
    assert forbidden_imports(path.read_text()) == [], f"{path.name} must stay sans-IO"
