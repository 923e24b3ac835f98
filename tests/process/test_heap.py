import gc

from catalyzer.process.heap import YOUNG_THRESHOLD, freeze_startup_heap, keep_large_blocks


def test_objects_alive_at_startup_leave_the_collected_generations() -> None:
    survivor = [object()]
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    thresholds = gc.get_threshold()
    try:
        freeze_startup_heap()
        assert gc.get_freeze_count() > 0
        assert not any(o is survivor for o in gc.get_objects())
        assert gc.get_threshold() == (YOUNG_THRESHOLD, *thresholds[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def test_keep_large_blocks_tunes_glibc_malloc_where_there_is_one() -> None:
    import platform

    assert keep_large_blocks() is (platform.libc_ver()[0] == "glibc")
