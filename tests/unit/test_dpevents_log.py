"""Which datapath events the daemon writes to its event log (controller/dpevents.EventLog):
each kind once per subflow, a bounded memory of subflows, malformed options rate-limited so
a flood of bad packets cannot flood the log."""

from controller import dpevents

FLOW = ("10.0.0.1", 40000, "10.0.0.2", 5201)


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_each_kind_is_noted_once_per_subflow():
    log = dpevents.EventLog(Clock())
    assert log.admit("mp_fail", FLOW)
    assert not log.admit("mp_fail", FLOW)
    assert log.admit("tcprst", FLOW)
    assert log.admit("mp_fail", FLOW[:3] + (5202,))


def test_the_memory_of_subflows_is_bounded():
    log = dpevents.EventLog(Clock())
    for port in range(dpevents.SEEN_MAX * 2):
        assert log.admit("fastclose", ("10.0.0.1", port, "10.0.0.2", 1))
    assert len(log.seen) == dpevents.SEEN_MAX


def test_malformed_notes_are_rate_limited_and_the_rest_counted():
    clock = Clock()
    log = dpevents.EventLog(clock)
    admitted = [log.admit("malformed", ("10.9.0.1", p, "10.0.0.2", 1)) for p in range(50)]
    assert admitted.count(True) == dpevents.MALFORMED_PER_WINDOW
    assert log.suppressed == 50 - dpevents.MALFORMED_PER_WINDOW
    clock.t += dpevents.MALFORMED_WINDOW_S + 1
    assert log.admit("malformed", ("10.9.0.1", 999, "10.0.0.2", 1))


def test_every_tcprst_reason_of_rfc_8684_has_a_name():
    assert sorted(dpevents.TCPRST_REASONS) == list(range(7))


class FakeRing:
    """A ring with a readable fd (a pipe) and a queue of events."""

    def __init__(self, events):
        import os

        self.r, self.w = os.pipe()
        os.write(self.w, b"x")
        self.events, self.reads = list(events), 0

    def fileno(self):
        return self.r

    def read(self):
        self.reads += 1
        out, self.events = self.events, []
        return out


def test_the_daemon_drains_the_ring_at_most_once_per_period(monkeypatch):
    """A flood of wire events costs the daemon one drain per DP_EVENTS_PERIOD_S, not a CPU."""
    import selectors

    from controller import abi, daemon
    from controller.config import DaemonConfig

    d = daemon.Daemon(DaemonConfig(datapath=False))
    d.dp_events = FakeRing([abi.Event(type=abi.EventType.EV_MPC_KEYS)])
    d.sel.register(d.dp_events, selectors.EVENT_READ, d._on_dp_events)
    clock = [100.0]
    monkeypatch.setattr(daemon.time, "monotonic", lambda: clock[0])
    [(key, _)] = d.sel.select(0)
    key.data()
    assert d.dp_events.reads == 1 and d.sel.select(0) == []   # resting: not watched
    assert d._next_timer() <= daemon.DP_EVENTS_PERIOD_S
    assert not [e for e in d.events if e["event"] != "started"]   # keys are never noted
    clock[0] += daemon.DP_EVENTS_PERIOD_S
    d._run_timers()
    assert [k.data for k, _ in d.sel.select(0)] == [d._on_dp_events]   # watched again
