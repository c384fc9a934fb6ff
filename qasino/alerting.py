"""Alerts on the reactor side: the rules file, evaluation after each
snapshot, and the edges (qasino_server_alerts, ZeroMQ ALERT frames,
Alertmanager).

How evaluation stays out of everyone's way:

- It starts after a snapshot is announced, never inside a rotation.
- Every rule's SQL runs on a reader (the engine's background readers: the
  same read-only connections, at a lower CPU priority), on the snapshot
  that was announced (pinned, so a later rotation cannot pull it away),
  with the same read-only guard and time limit as a client query. Rules
  run one at a time; a rule still running after 0.25 s opens a second lane
  (``slots``), so one slow rule does not hold the others, while normally
  only one thread does alert work (on the shared 2-core machine one lane
  disturbed client queries less than two in bench/alerts.py runs).
- The state machine, the table rows and the messages are computed on a
  background reader as well; the reactor only hands the results out.
- If a round is still running when the next snapshot comes, that
  generation is skipped (logged); rounds never pile up.
- The results go to the store for the *next* snapshot's
  qasino_server_alerts (snapshots stay immutable files), to ZeroMQ
  subscribers and to Alertmanager at once. Alertmanager is sent to with
  Twisted's Agent, with a timeout; a failed send is logged and retried at
  the next evaluation, and never delays anything else.
"""

from __future__ import annotations

import base64
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Optional

import orjson
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    TimeoutError,
    maybeDeferred,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from qasino.core.alerts import (
    FIRING,
    RESOLVED,
    AlertRule,
    AlertState,
    Instance,
    Outcome,
    alertmanager_alert,
    change_message,
    counts_by_state,
    evaluate,
    load_alerts_file,
    table_rows,
)
from qasino.core.errors import QasinoError
from qasino.engine import Engine, ViewsSource
from qasino.store.store import SnapshotInfo

log = Logger(namespace="qasino.alerts")

# Alertmanager requests give up after this long (connect + answer).
SEND_TIMEOUT_S = 10.0
# Resolved instances not yet delivered to one Alertmanager are kept (for
# retries) up to this many.
MAX_UNSENT_RESOLVED = 10_000


class Lanes:
    """Runs jobs one at a time, opening another lane (up to ``lanes``) for
    as long as a job has run longer than ``slow_s``: a slow alert does not
    hold the others, and normally only one reader does alert work."""

    def __init__(self, clock: Any, lanes: int = 2, slow_s: float = 0.25) -> None:
        self.clock = clock
        self.lanes = max(1, lanes)
        self.slow_s = slow_s
        self.queue: deque[tuple[Callable[..., Deferred[Any]], tuple[Any, ...], Deferred[Any]]] = (
            deque()
        )
        self.running = 0
        self.opened = 0  # lanes opened by slow jobs still running

    def run(self, fn: Callable[..., Deferred[Any]], *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.queue.append((fn, args, d))
        self._pump()
        return d

    def _pump(self) -> None:
        while self.queue and self.running < min(self.lanes, 1 + self.opened):
            fn, args, d = self.queue.popleft()
            self._start(fn, args, d)

    def _start(
        self, fn: Callable[..., Deferred[Any]], args: tuple[Any, ...], d: Deferred[Any]
    ) -> None:
        self.running += 1
        slow = [False]

        def mark_slow() -> None:
            slow[0] = True
            self.opened += 1
            self._pump()

        timer = self.clock.callLater(self.slow_s, mark_slow)

        def finish(result: object) -> None:
            self.running -= 1
            if timer.active():
                timer.cancel()
            if slow[0]:
                self.opened -= 1
            d.callback(result)  # a Failure errbacks
            self._pump()

        maybeDeferred(fn, *args).addBoth(finish)


class AlertsSource(ViewsSource):
    """The alerts file, watched and reloaded like the views file; a broken
    file keeps the last good rules (``last_error`` says why)."""

    what = "alerts"

    def load(self, path: str) -> list[Any]:
        return load_alerts_file(path)

    def log_missing(self, where: str) -> None:
        # No alerts file is the normal case (the default is optional).
        log.info("no alerts file at {path}: no alerts", path=where)

    def log_loaded(self, items: list[Any]) -> None:
        broken = [rule for rule in items if rule.error]
        for rule in broken:
            log.warn("alert {name}: {error}", name=rule.alert, error=rule.error)

    def reload(self) -> bool:
        """Re-read the file now, changed or not (SIGHUP); True if it loaded.
        The rules apply from the next evaluation."""
        self.forget()
        return self.poll()

    @property
    def rules(self) -> list[AlertRule]:
        return list(self.views)


def rules_source(rules: Sequence[AlertRule]) -> AlertsSource:
    """An AlertsSource with a fixed set of rules (tests, bench)."""
    source = AlertsSource(None)
    source.views = list(rules)
    return source


class AlertmanagerSender:
    """POSTs to one Alertmanager's ``/api/v2/alerts``.

    Every evaluation sends the firing instances; resolved ones are sent
    until one send succeeds. A send still in flight makes the next one wait
    for the following evaluation.
    """

    def __init__(self, url: str, reactor: Any, timeout_s: float = SEND_TIMEOUT_S) -> None:
        # Imported here: the HTTP client costs start-up time, and only a
        # server given --alertmanager-url needs it.
        from twisted.web.client import Agent, HTTPConnectionPool

        parts = urllib.parse.urlsplit(url.rstrip("/"))
        self.auth: Optional[bytes] = None
        if parts.username is not None:
            # user:password@ in the URL: HTTP basic auth (kept out of logs).
            secret = f"{urllib.parse.unquote(parts.username)}:"
            secret += urllib.parse.unquote(parts.password or "")
            self.auth = b"Basic " + base64.b64encode(secret.encode("utf-8"))
            host = parts.hostname or ""
            netloc = f"[{host}]" if ":" in host else host
            if parts.port is not None:
                netloc += f":{parts.port}"
            parts = parts._replace(netloc=netloc)
        self.url = urllib.parse.urlunsplit(parts) + "/api/v2/alerts"
        self.reactor = reactor
        self.timeout_s = timeout_s
        self.agent = Agent(
            reactor,
            connectTimeout=timeout_s,
            pool=HTTPConnectionPool(reactor, persistent=False),
        )
        self._unsent_resolved: dict[tuple[str, Any], dict[str, object]] = {}
        self._in_flight = False
        self.sent = 0
        self.failed = 0
        self.last_error: Optional[str] = None

    def send(
        self, firing: list[dict[str, object]], resolved: list[tuple[Any, dict[str, object]]]
    ) -> Optional[Deferred[Any]]:
        for ident, alert in resolved:
            self._unsent_resolved[ident] = alert
        while len(self._unsent_resolved) > MAX_UNSENT_RESOLVED:
            self._unsent_resolved.pop(next(iter(self._unsent_resolved)))
        if self._in_flight:
            return None
        sending = dict(self._unsent_resolved)
        alerts = firing + list(sending.values())
        if not alerts:
            return None
        self._in_flight = True
        from twisted.web.client import FileBodyProducer
        from twisted.web.http_headers import Headers

        body = orjson.dumps(alerts)
        headers = {b"Content-Type": [b"application/json"]}
        if self.auth is not None:
            headers[b"Authorization"] = [self.auth]
        producer: Any = FileBodyProducer(BytesIO(body))
        d: Any = self.agent.request(
            b"POST",
            self.url.encode("utf-8"),
            Headers(headers),
            producer,
        )
        d.addCallback(self._answered)
        d.addTimeout(self.timeout_s, self.reactor)
        d.addCallbacks(self._delivered, self._failed, callbackArgs=(sending, len(alerts)))
        d.addBoth(self._done)
        return d

    def _answered(self, response: Any) -> Deferred[tuple[int, bytes]]:
        from twisted.web.client import readBody

        code = response.code
        return readBody(response).addCallback(lambda body: (code, body))

    def _delivered(self, answer: tuple[int, bytes], sent: dict[Any, Any], n: int) -> None:
        code, body = answer
        if code // 100 != 2:
            self._failed(Failure(RuntimeError(f"HTTP {code}: {body[:200]!r}")))
            return
        for ident in sent:
            self._unsent_resolved.pop(ident, None)
        self.sent += n
        self.last_error = None

    def _failed(self, failure: Failure) -> None:
        self.failed += 1
        message = _describe(failure, self.timeout_s)
        if self.last_error != message:
            log.warn(
                "sending alerts to {url} failed (retried next generation): {error}",
                url=self.url,
                error=message,
            )
        self.last_error = message

    def _done(self, result: object) -> None:
        self._in_flight = False


class AlertEvaluator:
    """Evaluates the alert rules after every snapshot (see the module doc)."""

    def __init__(
        self,
        engine: Engine,
        source: AlertsSource,
        slots: int = 2,
        alertmanager_urls: Sequence[str] = (),
        publish: Optional[Callable[[dict[str, object]], None]] = None,
        generator_url: Callable[[], str] = lambda: "http://localhost/alerts",
        hold_generations: float = 3.0,
    ) -> None:
        self.engine = engine
        self.source = source
        self.lanes = Lanes(engine.clock, lanes=slots)
        self.senders = [AlertmanagerSender(url, engine.clock) for url in alertmanager_urls]
        self.publish = publish
        self.generator_url = generator_url
        self.hold_generations = hold_generations
        self.state = AlertState()
        self.running: Optional[Deferred[None]] = None
        self.rounds = 0
        self.skipped = 0
        self.last_eval_ms: Optional[float] = None
        self.listeners: list[Callable[[AlertState], None]] = []

    # The engine calls this on the reactor thread after each snapshot.
    def on_generation(self, info: SnapshotInfo) -> None:
        if self.running is not None:
            self.skipped += 1
            log.warn(
                "alerts of generation {number} not evaluated: the previous evaluation "
                "is still running",
                number=info.generation_number,
            )
            return
        self.evaluate(info)

    def reload(self) -> bool:
        """Re-read the alerts file now (SIGHUP); True if it loaded."""
        return self.source.reload()

    def evaluate(self, info: SnapshotInfo) -> Deferred[None]:
        """One round over the snapshot being served; fires when done."""
        self.source.poll()
        rules = self.source.rules
        store = self.engine.store
        runner = self.engine.runner
        # The background readers when the runner has them (the server's
        # ThreadRunner); test runners only have read.
        read = getattr(runner, "read_background", runner.read)
        started = time.perf_counter()
        pin = store.pin_snapshot()
        number = pin.number

        def run(rule: AlertRule) -> Deferred[Any]:
            d: Deferred[Any] = self.lanes.run(read, store.query_pinned, pin, rule.sql)
            d.addCallbacks(
                lambda r: Outcome(r.column_names, r.rows), _outcome_of_failure, errbackArgs=()
            )
            return d

        todo = [r for r in rules if r.error is None]
        jobs = [run(rule) for rule in todo]
        d: Deferred[Any] = DeferredList(jobs, consumeErrors=True)
        # Set before the callbacks: with nothing to wait for they run at once
        # (and clear it again).
        self.running = d

        def settle(results: list[tuple[bool, Any]]) -> Deferred[Any]:
            store.release_snapshot(pin)
            outcomes = {
                rule.alert: (value if ok else Outcome(error=str(value)))
                for rule, (ok, value) in zip(todo, results)
            }
            now = float(self.engine.clock.seconds())
            hold = max(60.0, self.hold_generations * info.generation_duration_s)
            # The state machine, the table rows and the messages are pure
            # work that grows with the instances: off the reactor thread.
            return read(
                _settle,
                self.state,
                rules,
                outcomes,
                number,
                now,
                self.source.last_error,
                self.engine.identity,
                self.generator_url() if self.senders else "",
                hold,
            )

        def apply(settled: _Settled) -> None:
            self.state = settled.state
            self.last_eval_ms = (time.perf_counter() - started) * 1000
            self.rounds += 1
            store.set_alert_rows(settled.rows)
            self._announce(settled.messages)
            self._send(settled.firing, settled.resolved)
            for listener in list(self.listeners):
                listener(self.state)
            if rules:
                log.info(
                    "evaluated {n} alerts of generation {number} in {ms:.1f} ms",
                    n=len(todo),
                    number=number,
                    ms=self.last_eval_ms,
                )

        def failed(failure: Failure) -> None:
            log.failure("alert evaluation failed", failure)

        def done(_: object) -> None:
            self.running = None

        d.addCallback(settle)
        d.addCallback(apply)
        d.addErrback(failed)
        d.addBoth(done)
        return d

    def _announce(self, messages: list[dict[str, object]]) -> None:
        if self.publish is None:
            return
        for message in messages:
            try:
                self.publish(message)
            except Exception:
                log.failure("could not publish an ALERT frame")

    def _send(
        self, firing: list[dict[str, object]], resolved: list[tuple[Any, dict[str, object]]]
    ) -> None:
        for sender in self.senders:
            try:
                d = sender.send(firing, resolved)
            except Exception:
                log.failure("could not send alerts to {url}", url=sender.url)
                continue
            if d is not None:
                d.addErrback(lambda f: log.failure("alertmanager send failed", f))

    def counts(self) -> dict[tuple[str, str], int]:
        """Instances per (alertname, state), errors included: the values of
        the ``qasino_alerts{alertname,state}`` metric."""
        return counts_by_state(self.state, self.source.last_error)

    def rows(self) -> list[tuple[object, ...]]:
        """The live rows (what the next snapshot's qasino_server_alerts holds)."""
        return table_rows(self.state, self.source.last_error)


@dataclass(frozen=True)
class _Settled:
    """What one evaluation produced, computed off the reactor thread."""

    state: AlertState
    rows: list[tuple[object, ...]]
    messages: list[dict[str, object]]
    firing: list[dict[str, object]]
    resolved: list[tuple[Any, dict[str, object]]]


def _settle(
    state: AlertState,
    rules: Sequence[AlertRule],
    outcomes: dict[str, Outcome],
    number: int,
    now: float,
    file_error: Optional[str],
    identity: str,
    generator_base: str,
    hold_s: float,
) -> _Settled:
    """The next state and everything the edges need from it (pure)."""
    new_state, changes = evaluate(state, rules, outcomes, number, now)
    firing: list[dict[str, object]] = []
    resolved: list[tuple[Any, dict[str, object]]] = []
    if generator_base:

        def url(inst: Instance) -> str:
            return generator_base + "?" + urllib.parse.urlencode({"alertname": inst.alertname})

        firing = [
            alertmanager_alert(i, url(i), now, hold_s)
            for i in new_state.instances.values()
            if i.state == FIRING
        ]
        resolved = [
            (i.ident, alertmanager_alert(i, url(i), now, hold_s))
            for i in changes
            if i.state == RESOLVED and i.fired_epoch is not None
        ]
    return _Settled(
        new_state,
        table_rows(new_state, file_error),
        [change_message(i, identity) for i in changes],
        firing,
        resolved,
    )


def _describe(failure: Failure, timeout_s: float) -> str:
    """A one-line reason for a failed send."""
    if failure.check(TimeoutError, CancelledError):
        return f"no answer within {timeout_s:g} s"
    from twisted.web.client import RequestTransmissionFailed, ResponseNeverReceived

    reasons = getattr(failure.value, "reasons", None)
    if failure.check(ResponseNeverReceived, RequestTransmissionFailed) and reasons:
        inner = "; ".join(r.getErrorMessage() for r in reasons)
        return f"no answer ({inner})"
    return failure.getErrorMessage() or repr(failure.value)


def _outcome_of_failure(failure: Failure) -> Outcome:
    if failure.check(QasinoError):
        error = failure.value
        assert isinstance(error, QasinoError)
        return Outcome(error=error.message)
    log.failure("an alert's query failed unexpectedly", failure)
    return Outcome(error=f"internal error: {failure.getErrorMessage()}")
