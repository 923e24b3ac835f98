import gc

from catalyzer.process.heap import freeze_startup_heap


def test_objects_alive_at_startup_leave_the_collected_generations() -> None:
    survivor = [object()]
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    try:
        freeze_startup_heap()
        assert gc.get_freeze_count() > 0
        assert not any(o is survivor for o in gc.get_objects())
    finally:
        gc.unfreeze()
