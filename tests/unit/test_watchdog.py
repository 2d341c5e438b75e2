import time

from rltune.watchdog import Watchdog


def test_watchdog_names_the_stalled_phase_and_dumps_stacks(tmp_path):
    seen = []
    wd = Watchdog(0.3, tmp_path, on_stall=seen.append)
    with wd.watch("time/reward"):
        time.sleep(1.0)
    wd.close()
    assert len(wd.dumps) == 1 and "time_reward" in wd.dumps[0].name
    text = wd.dumps[0].read_text()
    assert "phase 'time/reward' made no progress" in text and "test_watchdog" in text
    assert seen and "time/reward" in seen[0]


def test_watchdog_quiet_when_progressing(tmp_path):
    wd = Watchdog(0.5, tmp_path)
    for _ in range(8):
        with wd.watch("time/update"):
            time.sleep(0.1)
    wd.close()
    assert wd.dumps == []
