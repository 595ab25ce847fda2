"""The agent's main loop: heartbeat, report, decide, install, sleep (DESIGN.md section 7).

One cycle (:meth:`Agent.run_once`):

1. heartbeat with the running version and device metadata; the answer carries
   the server's time, the heartbeat interval and any pending install
   directive (one request per interval, ANCHORS.md "Polling");
2. deliver queued status reports (the outbox);
3. ask :func:`javia_core.scheduling.decide_install` whether to install now,
   with the *server's* time — ``server_time`` of the last heartbeat plus the
   monotonic time elapsed since (a Pi has no RTC; its wall clock is never
   used for this) — and the application's idle time;
4. install when told.

This module is the loop; the decisions it asks for live elsewhere: what an
offer allows (its signed type, urgency evidence, the pinned maintenance
window) in :mod:`javia_agent.offers`, the server-fault backoff and its reports
in :mod:`javia_agent.faults`, the heartbeat's inventory in
:mod:`javia_agent.inventory`, and the install itself in
:mod:`javia_agent.installer`.

:meth:`Agent.run_forever` repeats it, sleeping until the next heartbeat
(interval with jitter) or the decision's ``wake_at``, whichever is first. The
sleep is interruptible: SIGTERM or SIGINT lets the current step finish safely
(a download pauses for a later resume) and the loop exits with status 0.
Network errors back off with jitter (at least the server's ``Retry-After``)
and never end the loop. A wake-up (:mod:`javia_agent.wakeup`, a held request
beside the heartbeat) ends the sleep early: the agent heartbeats at once.
Under systemd (``Type=notify``) the agent reports
readiness, its status and watchdog pings (:mod:`javia_agent.systemd`).
"""

from __future__ import annotations

import json
import logging
import random
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, Any

from javia_agent._fs import InstanceLockedError, atomic_write, hold_instance_lock
from javia_agent.activity import IdleTracker
from javia_agent.app_health import ApplicationMonitor
from javia_agent.client import DeviceClient
from javia_agent.clock import Clock
from javia_agent.config import AgentConfig, read_token
from javia_agent.errors import (
    AgentError,
    AuthenticationError,
    ConfigError,
    DownloadTooLargeError,
)
from javia_agent.faults import ServerFaults
from javia_agent.installer import (
    Installer,
    InstallOutcome,
    InstallResult,
    pause_hook_from_environment,
)
from javia_agent.inventory import agent_version, device_metadata
from javia_agent.memory import release_memory
from javia_agent.offers import OfferTiming
from javia_agent.outbox import Outbox
from javia_agent.services import CommandService, SystemdService, application_environment
from javia_agent.staging_ahead import held_by_pause, prepare_if_due
from javia_agent.state import PRE_SWITCH_STATES, UpdateState
from javia_agent.systemd import SystemdNotifier
from javia_agent.token_refusal import TokenRefusalLog, token_refused_message
from javia_agent.transport import MAX_SERVER_DELAY_SECONDS, RetryPolicy
from javia_agent.wakeup import WakeupChannel
from javia_core.errors import JaviaError
from javia_core.failures import FailureDetails
from javia_core.models import (
    ApplicationHealth,
    DeviceStatus,
    HeartbeatRequest,
    HeartbeatResponse,
    InstallDirective,
    StatusReport,
    UpdateStatus,
)
from javia_core.scheduling import InstallDecision, check_offered_window, decide_install
from javia_core.versioning import Version

__all__ = ["Agent", "CycleResult", "build_service"]

logger = logging.getLogger(__name__)

#: First delay after a failed heartbeat, in seconds; doubles per failure up to the interval.
BACKOFF_BASE_SECONDS = 30.0
#: After an install ran, heartbeat again this soon to announce the new version.
AFTER_INSTALL_SECONDS = 1.0
MIN_SLEEP_SECONDS = 1.0
#: In the state directory: held (``flock``) by the one agent using that directory.
INSTANCE_LOCK_NAME = "agent.lock"


def build_service(config: AgentConfig) -> CommandService | SystemdService:
    """The application service the configuration names (systemd or command)."""
    paths = config.paths
    if config.service_mode == "command":
        return CommandService(
            config.start_command,
            current_link=paths.current_link,
            pid_file=paths.pid_file,
            log_file=paths.app_log,
            activity_file=paths.activity_file,
            app_env=config.app_env,
            stop_timeout_seconds=config.stop_timeout_seconds,
            checkpoint=pause_hook_from_environment(paths.state_dir),
        )

    def environment() -> dict[str, str]:
        release = paths.current_link.resolve()
        return application_environment(release, paths.activity_file, config.app_env)

    return SystemdService(config.service_name, environment=environment, env_file=paths.app_env_file)


@dataclass(frozen=True)
class CycleResult:
    """What one :meth:`Agent.run_once` did.

    Attributes:
        response: the heartbeat answer.
        server_now: the server-clock instant the decision used (aware UTC).
        decision: the policy's answer, or ``None`` without a pending update.
        outcome: the install's outcome if one ran.
        reports_delivered: queued reports delivered this cycle.
        sleep_seconds: how long to wait before the next cycle.
    """

    response: HeartbeatResponse
    server_now: datetime
    decision: InstallDecision | None
    outcome: InstallOutcome | None
    reports_delivered: int
    sleep_seconds: float


class Agent:
    """The device agent. Collaborators are injected; see :meth:`from_config`.

    Args:
        config: the agent configuration.
        client: the device API client.
        installer: the installer (shares ``outbox`` through its reporter).
        outbox: queued status reports.
        idle: the application's idle-time tracker.
        clock: the monotonic clock (server time is extrapolated on it).
        rng: randomness for jitter (seeded in tests).
        decide: the install policy (``decide_install``).
        metadata: returns the heartbeat inventory.
        notifier: readiness, status and watchdog pings to systemd (default:
            as the environment says; does nothing outside systemd).
        application: returns the heartbeat's ``application`` object, or
            ``None`` when unknown (:class:`javia_agent.app_health.ApplicationMonitor`);
            default: none sent.
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        client: DeviceClient,
        installer: Installer,
        outbox: Outbox,
        idle: IdleTracker,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        decide: Callable[..., InstallDecision] = decide_install,
        metadata: Callable[[], dict[str, Any]] | None = None,
        notifier: SystemdNotifier | None = None,
        application: Callable[[], ApplicationHealth | None] | None = None,
    ) -> None:
        self.config = config
        self.client = client
        #: The state directory's instance lock (:meth:`from_config` takes it); None in tests.
        self.instance_lock: IO[str] | None = None
        self.installer = installer
        self.outbox = outbox
        self.idle = idle
        self.clock = clock or Clock()
        self.rng = rng or random.Random()
        self._decide = decide
        self._metadata = metadata or (
            lambda: device_metadata(config.install_root, ip_address=client.local_address)
        )
        self._application = application or (lambda: None)
        self._stop = threading.Event()
        self._woken = threading.Event()  # the wait between cycles is interrupted (wake or stop)
        self._wake_lock = threading.Lock()
        self._wake_at: float | None = None  # monotonic time of the heartbeat a wake-up asked for
        #: The wake-up channel (:mod:`javia_agent.wakeup`), started by :meth:`run_forever`; None: off.
        self.wakeup_channel: WakeupChannel | None = None
        self._server_time: datetime | None = None
        self._server_time_at: float | None = None  # monotonic reading when it arrived
        self.interval_seconds = config.heartbeat_interval_seconds
        self._failures = 0
        self._token_refusals = TokenRefusalLog()
        self.notifier = notifier or SystemdNotifier(None)
        #: What an offer allows: its signed type, urgency evidence, the pinned window.
        self.offers = OfferTiming(config)
        #: Server faults on an offered update and the backoff before trying it again.
        self.faults = ServerFaults(self.clock, self.rng)

    @classmethod
    def from_config(cls, config: AgentConfig, *, clock: Clock | None = None) -> Agent:
        """Wire a real agent from the configuration (token file, service mode, paths).

        Raises:
            ConfigError: the device is not registered (no server URL, uuid or
                token), or the server URL is insecure.
        """
        if not config.server_url or config.device_uuid is None:
            raise ConfigError(
                "this device is not registered: run javia agent register --server URL --api-key KEY"
            )
        token = read_token(config.token_file)
        lock_path = config.state_dir / INSTANCE_LOCK_NAME
        try:
            instance_lock = hold_instance_lock(lock_path)
        except InstanceLockedError as error:
            raise ConfigError(
                f"another javia agent (process {error.holder or 'unknown'}) runs with state "
                f"directory {config.state_dir}: stop it first (systemctl stop javia-agent)"
            ) from None
        except OSError as error:
            raise ConfigError(
                f"cannot lock {lock_path}: {error.strerror or error} (is the state directory writable?)"
            ) from None
        clock = clock or Clock()
        notifier = SystemdNotifier.from_environment()
        client = DeviceClient(
            config.server_url,
            device_uuid=config.device_uuid,
            token=token,
            ca_bundle=config.ca_bundle,
            allow_insecure_http=config.allow_insecure_http,
            timeout_seconds=config.request_timeout_seconds,
            request_deadline_seconds=config.request_deadline_seconds,
            user_agent=f"javia-agent/{agent_version()}",
            retry=RetryPolicy(
                attempts=config.download_retry_attempts,
                base_delay_seconds=config.download_retry_base_seconds,
                max_delay_seconds=config.download_retry_max_seconds,
            ),
            download_rate_limit=config.download_rate_limit_bytes,
            # A token rotated on the server and written to the file is picked up
            # at the next 401, without a restart.
            token_source=lambda: read_token(config.token_file),
            # While an answer streams in: the watchdog is pinged and a stop is noticed.
            should_stop=lambda: agent.stopping,
            keepalive=notifier.watchdog,
            sleep=clock.sleep,
            monotonic=clock.monotonic,
        )
        outbox = Outbox(config.paths.outbox_dir)
        agent: Agent
        service = build_service(config)

        def report(
            update_id: int,
            status: UpdateStatus,
            message: str | None,
            failure: FailureDetails | None = None,
        ) -> None:
            outbox.enqueue(
                update_id,
                StatusReport.from_device(status, message, clock.wall(), failure),
            )
            outbox.flush(client.report_status)

        installer = Installer.from_config(
            config,
            service,
            client=client,
            reporter=report,
            clock=clock,
            should_stop=lambda: agent.stopping,
            keepalive=notifier.watchdog,
            keepalive_during=notifier.keepalive,
        )
        idle = IdleTracker(config.paths.activity_file, monotonic=clock.monotonic)
        monitor = ApplicationMonitor(
            config.paths.application_file, sample=service.sample, release=installer.current_release
        )
        agent = cls(
            config,
            client=client,
            installer=installer,
            outbox=outbox,
            idle=idle,
            clock=clock,
            notifier=notifier,
            application=monitor.health,
        )
        agent.instance_lock = instance_lock  # held (open) for the agent's lifetime
        if config.wakeup:
            agent.wakeup_channel = WakeupChannel.from_config(config, agent.wake, agent._stop)
        return agent

    # -- control ------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        """Whether a stop was requested (SIGTERM, SIGINT or :meth:`stop`)."""
        return self._stop.is_set()

    def stop(self) -> None:
        """Ask the loop to exit after the current step."""
        self._stop.set()
        self._woken.set()

    def wake(self, after_seconds: float = 0.0) -> None:
        """Heartbeat ``after_seconds`` from now, before the interval ends (the wake-up channel; any thread).

        The earliest of several requests wins; a heartbeat that starts after
        the due time serves it.
        """
        due = self.clock.monotonic() + max(0.0, after_seconds)
        with self._wake_lock:
            if self._wake_at is None or due < self._wake_at:
                self._wake_at = due
        self._woken.set()

    def _take_due_wake(self) -> bool:
        """Whether a wake-up is due now; if so it is taken (the coming heartbeat serves it)."""
        with self._wake_lock:
            if self._wake_at is None or self._wake_at > self.clock.monotonic():
                return False
            self._wake_at = None
            return True

    def server_now(self) -> datetime | None:
        """The server's clock now: last ``server_time`` + monotonic seconds since it arrived."""
        if self._server_time is None or self._server_time_at is None:
            return None
        elapsed = max(0.0, self.clock.monotonic() - self._server_time_at)
        return self._server_time + timedelta(seconds=elapsed)

    def start(self) -> InstallOutcome | None:
        """Recover an interrupted update; in command mode, make sure the application runs.

        Returns:
            The outcome of a recovered update, if there was one.
        """
        outcome = self.installer.recover()
        if outcome is not None:
            logger.info(
                "recovered update %s: %s%s",
                outcome.version,
                outcome.result,
                f" ({outcome.reason})" if outcome.reason else "",
            )
        if self.config.service_mode == "command" and self.installer.current_release() is not None:
            service = self.installer.service
            if not service.is_active():
                logger.info("starting the application (%s)", self.installer.current_release())
                service.start()
        self.outbox.flush(self.client.report_status)
        return outcome

    # -- one cycle ------------------------------------------------------------------

    def _jittered(self, seconds: float) -> float:
        jitter = self.config.heartbeat_jitter
        return seconds * (1.0 + self.rng.uniform(-jitter, jitter))

    def run_once(self, now: datetime | None = None) -> CycleResult:
        """Heartbeat, deliver reports, decide, install if told.

        Args:
            now: the server-clock instant to decide with (tests); default the
                extrapolated server time (:meth:`server_now`).

        Returns:
            What happened and how long to sleep before the next cycle.

        Raises:
            NetworkError, ServerError, AuthenticationError: the heartbeat failed.
            StateError: the state file cannot be read or written.
        """
        state = self.installer.load_state()
        metadata = self._metadata()
        if state.attention:  # a rollback that could not complete (AgentState.attention)
            metadata = {**metadata, "attention": state.attention}
        request = HeartbeatRequest(
            current_version=self.installer.current_release(),
            # Staged ahead of the window, the device still just runs its release.
            status=(
                DeviceStatus.UPDATING
                if state.update is not None and state.update.state != UpdateState.STAGED
                else DeviceStatus.ONLINE
            ),
            metadata=metadata,
            application=self._application(),
        )
        response = self.client.heartbeat(request)
        self._server_time = response.server_time.astimezone(UTC)
        self._server_time_at = self.clock.monotonic()
        if response.heartbeat_interval_seconds and response.heartbeat_interval_seconds > 0:
            self.interval_seconds = float(response.heartbeat_interval_seconds)
        delivered = self.outbox.flush(self.client.report_status)

        server_now = now or self.server_now() or self._server_time
        directive = response.update
        decision: InstallDecision | None = None
        outcome: InstallOutcome | None = None
        sleep = self._jittered(self.interval_seconds)
        if directive is None and held_by_pause(state.update, response.held):
            # Its rollout is paused: keep the staged release (or the download), install nothing.
            logger.info(
                "heartbeat ok: update %s is held (its rollout is paused); keeping it, "
                "installing nothing (next in %.0f s)",
                response.held.version if response.held else "",
                sleep,
            )
            self.notifier.status(
                f"running {request.current_version or 'nothing'}; update held while paused"
            )
        elif directive is None:
            if state.update is not None and state.update.state in PRE_SWITCH_STATES:
                # The server withdrew it (superseded, cancelled, halted): free the disk.
                self.installer.abandon_pending(
                    f"the server no longer offers update {state.update.update_id}"
                )
            logger.info("heartbeat ok: no pending update (next in %.0f s)", sleep)
            self.notifier.status(f"running {request.current_version or 'nothing'}; no update")
        else:
            decision, outcome, sleep, count = self._handle(
                directive, state.failed_versions, request.current_version, server_now, sleep
            )
            delivered += count
        self._write_status(response, decision)
        return CycleResult(response, server_now, decision, outcome, delivered, max(0.0, sleep))

    def _handle(
        self,
        directive: InstallDirective,
        failed_versions: list[str],
        running: str | None,
        server_now: datetime,
        sleep: float,
    ) -> tuple[InstallDecision | None, InstallOutcome | None, float, int]:
        """Decide on a pending directive and install if told; never raises on odd answers.

        Returns:
            (decision or None when none could be made, install outcome, seconds
            to sleep, reports delivered).
        """
        key = (directive.update_id, str(directive.version))
        if self.faults.holds_back(key):
            wait = self.faults.seconds_left()
            logger.info(
                "update %s (%s): waiting %.0f s after a server fault before trying again",
                directive.version,
                directive.update_id,
                wait,
            )
            self.notifier.status(f"update {directive.version}: server fault; retrying later")
            return None, None, min(sleep, max(MIN_SLEEP_SECONDS, wait)), 0
        offered = directive
        known = running is not None and Version.is_valid(running)
        if known and directive.version < Version.parse(running or ""):
            # A downgrade is never installed; offering one is the server's fault.
            # Reported failed (the row can never succeed here) once per backoff;
            # the version is not marked failed on the device.
            count = self._server_fault(
                offered,
                f"it offers {directive.version}, older than the running {running}: "
                "refusing a downgrade",
                status=UpdateStatus.FAILED,
            )
            return None, None, min(sleep, self._fault_wait()), count
        newer = not known or directive.version > Version.parse(running or "")
        if newer and str(directive.version) not in failed_versions:
            problem = check_offered_window(directive)
            if problem is not None:
                count = self._server_fault(offered, f"its maintenance window is not one: {problem}")
                return None, None, min(sleep, self._fault_wait()), count
            try:
                directive = self.offers.bound(
                    directive, server_now, installer=self.installer, client=self.client
                )
            except (AgentError, JaviaError) as error:
                if isinstance(error, AgentError) and not isinstance(error, DownloadTooLargeError):
                    # No (usable) answer: the network or the server is in trouble.
                    logger.warning(
                        "update %s: cannot fetch its signed manifest yet: %s",
                        offered.version,
                        error,
                    )
                    return None, None, min(sleep, self._backoff(1, error.retry_after_seconds)), 0
                count = self._server_fault(offered, f"its signed manifest did not verify: {error}")
                return None, None, min(sleep, self._fault_wait()), count
        idle = self.idle.idle_seconds()
        decision = self._decide(directive, now=server_now, idle_seconds=idle)
        bounded = "" if directive is offered else f", offered as {offered.update_type}"
        logger.info(
            "update %s (%s%s): %s",
            directive.version,
            directive.update_type,
            bounded,
            decision.reason,
        )
        delivered = 0
        outcome: InstallOutcome | None = None
        wake_at = decision.wake_at
        if decision.install_now and not self.stopping:
            self.notifier.status(f"installing {directive.version} (update {directive.update_id})")
            outcome = self.installer.install(directive)
        elif not self.stopping:  # ahead of its install time: staged once its lead begins
            outcome, stage_at = prepare_if_due(
                self.installer,
                directive,
                now=server_now,
                lead_seconds=self.config.staging_lead_seconds,
            )
            wake_at = min(filter(None, (wake_at, stage_at)), default=None)
        if outcome is not None:
            logger.info(
                "update %s: %s%s",
                outcome.version,
                outcome.result,
                f" ({outcome.reason})" if outcome.reason else "",
            )
            delivered += self.outbox.flush(self.client.report_status)
            if outcome.result == InstallResult.SERVER_FAULT:
                self.faults.note(key)
                sleep = min(sleep, self._fault_wait())
            elif outcome.result in (
                InstallResult.COMPLETED,
                InstallResult.FAILED,
                InstallResult.ROLLED_BACK,
                InstallResult.ABANDONED,
            ):
                self.faults.clear()
                sleep = AFTER_INSTALL_SECONDS
            elif outcome.result == InstallResult.RETRY_LATER and outcome.wait_seconds is not None:
                # A transient fault: the next try is due after its backoff.
                sleep = min(sleep, max(MIN_SLEEP_SECONDS, outcome.wait_seconds))
            elif outcome.result == InstallResult.RETRY_LATER:
                sleep = min(sleep, self._backoff(1))
                if outcome.retry_after_seconds is not None:  # the server asked for a pause
                    sleep = max(sleep, min(MAX_SERVER_DELAY_SECONDS, outcome.retry_after_seconds))
        if wake_at is not None and (outcome is None or outcome.result == InstallResult.STAGED):
            until = (wake_at - server_now).total_seconds()
            sleep = min(sleep, max(MIN_SLEEP_SECONDS, until))
        return decision, outcome, sleep, delivered

    def _fault_wait(self) -> float:
        return max(MIN_SLEEP_SECONDS, self.faults.seconds_left())

    def _server_fault(
        self,
        directive: InstallDirective,
        reason: str,
        *,
        status: UpdateStatus = UpdateStatus.DOWNLOADING,
    ) -> int:
        """Report a server fault on ``directive`` and back off (:meth:`ServerFaults.report`)."""
        return self.faults.report(
            directive,
            reason,
            status=status,
            outbox=self.outbox,
            deliver=self.client.report_status,
            notifier=self.notifier,
        )

    def _backoff(self, failures: int, retry_after: float | None = None) -> float:
        """Exponential backoff with jitter, capped at the interval; never below ``retry_after``.

        ``retry_after`` (the server's ask) counts up to :data:`MAX_SERVER_DELAY_SECONDS`.
        """
        ceiling = max(MIN_SLEEP_SECONDS, self.interval_seconds)
        delay = min(ceiling, BACKOFF_BASE_SECONDS * 2 ** max(0, failures - 1))
        wait = self.rng.uniform(delay / 2, delay)
        if retry_after is not None:
            wait = max(wait, min(MAX_SERVER_DELAY_SECONDS, retry_after))
        return wait

    def _write_status(self, response: HeartbeatResponse, decision: InstallDecision | None) -> None:
        """Record the last heartbeat for ``javia agent status`` (informative, not fsynced)."""
        body = {
            "server_time": response.server_time.isoformat(),
            "received_at": self.clock.wall().isoformat(),
            "heartbeat_interval_seconds": self.interval_seconds,
            "update": response.update.model_dump(mode="json") if response.update else None,
            "decision": (
                {
                    "install_now": decision.install_now,
                    "reason": decision.reason,
                    "wake_at": decision.wake_at.isoformat() if decision.wake_at else None,
                }
                if decision
                else None
            ),
        }
        try:
            atomic_write(
                self.config.paths.heartbeat_file,
                json.dumps(body, indent=2).encode("utf-8"),
                durable=False,
            )
        except OSError as error:
            logger.warning("cannot write %s: %s", self.config.paths.heartbeat_file, error)

    # -- the loop -------------------------------------------------------------------

    def _wait(self, seconds: float) -> None:
        """Sleep ``seconds`` (monotonic), polling the activity file, until stopped or woken."""
        deadline = self.clock.monotonic() + seconds
        poll = self.config.activity_poll_seconds
        if self.notifier.ping_interval_seconds is not None:
            poll = min(poll, self.notifier.ping_interval_seconds)
        while not self._stop.is_set():
            self.notifier.watchdog()
            self._woken.clear()  # before reading the due time: a later wake() sets it again
            if self._take_due_wake():
                return
            now = self.clock.monotonic()
            remaining = deadline - now
            if remaining <= 0:
                return
            wake_at = self._wake_at
            if wake_at is not None:
                remaining = min(remaining, max(0.0, wake_at - now))
            self._woken.wait(min(remaining, poll))
            self.idle.poll()

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, frame: object) -> None:
            logger.info(
                "received %s: finishing the current step, then exiting", signal.Signals(signum).name
            )
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def run_forever(self) -> int:
        """Run cycles until stopped; never crashes on network or server errors.

        Returns:
            0, the exit status after SIGTERM/SIGINT or :meth:`stop`.
        """
        self._install_signal_handlers()
        logger.info(
            "javia agent %s starting for device %s", agent_version(), self.config.device_uuid
        )
        # Ready once running: recovering an interrupted update may take a
        # health window, which must not count against systemd's start timeout.
        self.notifier.ready(f"starting; running {self.installer.current_release() or 'nothing'}")
        try:
            self.start()
        except JaviaError as error:
            logger.error("start-up: %s", error)
        # Start-up and the first heartbeat leave garbage (configuration, TLS
        # set-up, pydantic's first validations), and so does an install: collect
        # it after those (a full collection takes ~10 ms). Every cycle then hands
        # the heap's free pages back to the kernel before sleeping (~0.1 ms).
        collect_garbage = True
        if self.wakeup_channel is not None:
            self.wakeup_channel.start()
        while not self._stop.is_set():
            self._take_due_wake()  # this heartbeat serves a wake-up already due
            try:
                result = self.run_once()
            except AuthenticationError as error:
                self._failures += 1
                delay = self._backoff(self._failures, error.retry_after_seconds)
                message = token_refused_message(
                    error, self.config.device_uuid, self.config.token_file
                )
                level = logging.ERROR if self._token_refusals.is_news(message) else logging.DEBUG
                logger.log(level, "%s (retry in %.0f s)", message, delay)
                self.notifier.status("device token refused: revoked or rotated on the server")
            except AgentError as error:
                self._failures += 1
                delay = self._backoff(self._failures, error.retry_after_seconds)
                logger.warning("%s (retry in %.0f s)", error, delay)
                self.notifier.status(f"server unreachable: {str(error)[:200]}")
            except JaviaError as error:
                self._failures += 1
                delay = self._backoff(self._failures)
                logger.error("%s (retry in %.0f s)", error, delay)
            except Exception:  # noqa: BLE001 - a bug must not restart-loop the device
                self._failures += 1
                delay = self._backoff(self._failures)
                logger.exception("unexpected error in the agent's cycle (retry in %.0f s)", delay)
                self.notifier.status("internal error; see the journal")
            else:
                self._failures = 0
                self._token_refusals.reset()
                delay = result.sleep_seconds
                collect_garbage = collect_garbage or result.outcome is not None
            release_memory(collect_garbage=collect_garbage)
            collect_garbage = False
            self._wait(delay)
        self.notifier.stopping()
        logger.info("javia agent stopped")
        return 0
