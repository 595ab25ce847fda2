"""When an offered update may install: its signed type, urgency evidence, the pinned window.

The agent's loop (:mod:`javia_agent.agent`) asks :class:`OfferTiming` what an
offered install directive really allows before it asks
:func:`javia_core.scheduling.decide_install` whether to install now
(DESIGN.md section 4):

- a scheduled offer installs in the server's maintenance window, or in the
  device's own when it pins one (:func:`javia_core.scheduling.plan_in_own_window`);
- an urgent or instant offer installs no sooner than its *signed* update type
  allows (:func:`javia_core.scheduling.bound_by_signed_type`), unless a
  superseded update the server names (``urgency_from``) proves, by its own
  verified signature, that the operator wanted it that soon
  (:func:`javia_core.scheduling.check_urgency_evidence`).

The rules are javia_core's and pure; this module fetches and verifies what they
need, once per update, and remembers the verdicts between heartbeats.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from javia_agent.config import AgentConfig
from javia_agent.errors import AgentError, DownloadCancelledError, NetworkError, ServerError
from javia_core.errors import JaviaError
from javia_core.models import InstallDirective, UpdateType
from javia_core.scheduling import (
    DEFAULT_WINDOW_SECONDS,
    DEFAULT_WINDOW_START,
    bound_by_signed_type,
    check_urgency_evidence,
    most_urgent,
    plan_in_own_window,
)

if TYPE_CHECKING:
    from javia_agent.client import DeviceClient
    from javia_agent.installer import Installer

__all__ = ["OfferTiming"]

logger = logging.getLogger(__name__)


def _no_answer_yet(error: AgentError) -> bool:
    """Whether a failed fetch had no definite answer (worth asking again later).

    A connection failure, a stop, or an HTTP 5xx/408/429; a 4xx such as 404
    or an oversized body is an answer.
    """
    if isinstance(error, (NetworkError, DownloadCancelledError)):
        return True
    if isinstance(error, ServerError):
        return (
            error.status_code is None
            or error.status_code >= 500
            or error.status_code
            in (
                408,
                429,
            )
        )
    return False


class OfferTiming:
    """The install directive an offer stands for, bounded by what signatures prove.

    Keeps, between heartbeats, the verified signed type of the offered update
    (one fetch per update), the last bounded directive (so the device keeps
    its own plan) and the verdict on the last urgency evidence.

    Args:
        config: the agent configuration (``pinned_window``, ``timezone``,
            ``device_uuid``).
    """

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        # (update id, version) -> its signed update type, verified (one fetch per update).
        self._signed: tuple[tuple[int, str], UpdateType] | None = None
        # The last directive bounded by its signed type (keeps the device's own plan).
        self._bounded: InstallDirective | None = None
        # The verdict on the last urgency evidence (a superseded update named by
        # the server): its key -> the signed type it proves, or None (refused).
        self._evidence: tuple[tuple[object, ...], UpdateType | None] | None = None

    def bound(
        self,
        directive: InstallDirective,
        now: datetime,
        *,
        installer: Installer,
        client: DeviceClient,
    ) -> InstallDirective:
        """``directive``, installed no sooner than a signature proves the operator wanted.

        A scheduled offer needs no check (nothing is less urgent). For an
        urgent or instant offer the manifest and signature are fetched and
        verified first (once per update). If the offer is more urgent than
        that signed type, it stands only if the superseded update the server
        names in ``urgency_from`` proves it (:meth:`_proven_urgency`, DESIGN.md
        section 4); then :func:`javia_core.scheduling.bound_by_signed_type`
        decides.

        Args:
            directive: the server's offer.
            now: the server-clock instant (aware UTC).
            installer: verifies the offered package's signed metadata and
                knows the running version and the keyring.
            client: fetches a superseded update's manifest and signature.

        Raises:
            AgentError: fetching the offered package's metadata failed.
            JaviaError: it did not verify (SignatureError, ManifestError, PackageError).
        """
        if directive.update_type is UpdateType.SCHEDULED:
            return self._within_own_window(directive, now)
        key = (directive.update_id, str(directive.version))
        if self._signed is None or self._signed[0] != key:
            self._signed = (key, installer.signed_update_type(directive))
            self._bounded = None
        signed = self._signed[1]
        proven: UpdateType | None = None
        why = "the server names no superseded update that was signed so"
        if most_urgent((directive.update_type, signed)) is not signed:
            proven, why = self._proven_urgency(directive, installer, client)
        window = self.config.pinned_window
        start, length = (
            window if window is not None else (DEFAULT_WINDOW_START, DEFAULT_WINDOW_SECONDS)
        )
        bounded = bound_by_signed_type(
            directive,
            signed,
            now=now,
            timezone=self.config.timezone,
            device_uuid=self.config.device_uuid or "",
            previous=self._bounded,
            proven_type=proven,
            window_start=start,
            window_seconds=length,
        )
        if bounded is not directive:
            if self._bounded is None:
                logger.warning(
                    "update %s is signed %s but offered as %s and %s: installing it no "
                    "sooner than its signed type allows",
                    directive.version,
                    bounded.update_type,
                    directive.update_type,
                    why,
                )
            self._bounded = bounded
        return bounded

    def _within_own_window(self, directive: InstallDirective, now: datetime) -> InstallDirective:
        """A scheduled ``directive``, in the device's own window if it pins one.

        Without a pin (agent settings ``window_start``, ``window_seconds``) the
        server's window is followed (:func:`javia_core.scheduling.check_offered_window`
        has checked that it is one). With a pin the device plans the update in
        its own window (:func:`javia_core.scheduling.plan_in_own_window`),
        whatever the server's ``install_at`` and ``window_end`` say.
        """
        window = self.config.pinned_window
        if window is None:
            return directive
        previous = self._bounded  # used only if it is this update's (plan_in_own_window)
        pinned = plan_in_own_window(
            directive,
            now=now,
            timezone=self.config.timezone,
            device_uuid=self.config.device_uuid or "",
            window_start=window[0],
            window_seconds=window[1],
            previous=previous,
        )
        if previous is None or pinned.install_at != previous.install_at:
            logger.info(
                "update %s (scheduled): in this device's own maintenance window (%s, %d s, "
                "%s), not the server's: installs at %s UTC",
                directive.version,
                window[0].strftime("%H:%M"),
                window[1],
                self.config.timezone,
                f"{pinned.install_at.astimezone(UTC):%Y-%m-%d %H:%M:%S}",
            )
        self._bounded = pinned
        return pinned

    def _proven_urgency(
        self, directive: InstallDirective, installer: Installer, client: DeviceClient
    ) -> tuple[UpdateType | None, str]:
        """The signed type of the superseded update that ``directive.urgency_from`` names.

        Its manifest and signature are fetched and verified with the device's
        keyring by the same code as a package's own
        (:func:`javia_agent.verification.verify_metadata`), then
        :func:`javia_core.scheduling.check_urgency_evidence` checks that its
        signed version lies between the running and the offered one and that
        it was signed at least as urgent as the offer. The verdict is kept for
        that evidence (one fetch, not one per heartbeat); a fetch that failed
        for lack of an answer is tried again at the next heartbeat.

        Returns:
            (the proven type, "") or (None, why the timing is not proven).
        """
        evidence = directive.urgency_from
        if evidence is None:
            return None, "the server names no superseded update that was signed so"
        running = installer.running_version()
        key: tuple[object, ...] = (
            directive.update_id,
            str(directive.version),
            str(directive.update_type),
            str(running),
            evidence.update_id,
            str(evidence.version),
            evidence.manifest_url,
            evidence.signature_url,
        )
        if self._evidence is not None and self._evidence[0] == key:
            proven = self._evidence[1]
            return proven, "" if proven is not None else (
                f"the superseded {evidence.version} it names does not prove it"
            )
        # Imported here: verification loads cryptography, which an idle agent never needs.
        from javia_agent import verification

        named = f"the superseded {evidence.version} (update {evidence.update_id}) it names"
        try:
            manifest_bytes = client.download_manifest(
                evidence.manifest_url, should_stop=installer.should_stop
            )
            signature_bytes = client.download_signature(
                evidence.signature_url, should_stop=installer.should_stop
            )
            verified = verification.verify_metadata(
                manifest_bytes, signature_bytes, installer.keyring(), current_version=None
            )
        except AgentError as error:
            if _no_answer_yet(error):
                # Not a verdict (network, 5xx, 408/429, a stop): asked again next heartbeat.
                return None, f"{named} could not be fetched yet ({error})"
            reason: str | None = f"{named} could not be fetched ({error})"
        except JaviaError as error:
            reason = f"{named} did not verify ({error})"
        else:
            reason = check_urgency_evidence(
                directive.update_type,
                offered=directive.version,
                running=running,
                evidence=evidence,
                signed_version=verified.manifest.parsed_version,
                signed_type=verified.manifest.update_type,
            )
            if reason is not None:
                reason = f"{named} does not prove it: {reason}"
        if reason is None:
            proven = verified.manifest.update_type
            logger.info(
                "update %s is offered as %s: proven by the signed %s of the superseded %s "
                "(DESIGN.md section 4)",
                directive.version,
                directive.update_type,
                proven,
                evidence.version,
            )
            self._evidence = (key, proven)
            return proven, ""
        self._evidence = (key, None)
        return None, reason
