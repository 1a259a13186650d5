"""The fuzzing properties of the DHT (fuzz/fuzz_krpc.py), on its seeds and on cases from hypothesis."""

import importlib.util
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "fuzz" / "corpus" / "krpc"


def _load_harness():
    spec = importlib.util.spec_from_file_location("fuzz_krpc", ROOT / "fuzz" / "fuzz_krpc.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


F = _load_harness()


def test_the_committed_corpus_is_the_harness_seeds():
    assert {p.name: p.read_bytes() for p in CORPUS.iterdir()} == F.seeds()


@pytest.mark.parametrize("name", sorted(F.seeds()))
def test_seed(name):
    F.check(F.seeds()[name])


_SEEDS = sorted(F.seeds().values())


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(_SEEDS), st.data())
def test_mutated_seeds(seed, data):
    raw = bytearray(seed)
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    F.check(bytes(raw))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=120))
def test_random_inputs(data):
    F.check(data)
