"""What the twistd plugin arranges around the node."""

import gc

from twisted.internet.testing import MemoryReactorClock

from zentalk_relay.tap import YOUNG_COLLECTION_THRESHOLD, freeze_after_start


def test_start_up_state_leaves_the_collector_once_the_reactor_runs():
    gc.unfreeze()
    thresholds = gc.get_threshold()
    reactor = MemoryReactorClock()
    freeze_after_start(reactor)
    assert gc.get_freeze_count() == 0  # not while services are still starting
    reactor.run()  # the memory reactor fires its callWhenRunning hooks and returns
    assert gc.get_freeze_count() == 0 and gc.get_threshold() == thresholds
    try:
        reactor.advance(0)  # the turn after start-up
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (YOUNG_COLLECTION_THRESHOLD, *thresholds[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
