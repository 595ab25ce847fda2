"""The dashboard's HTTP side: pages, login and logout, JSON endpoints, operator actions.

Mounted at ``/dashboard`` by :func:`install_dashboard` as its own small
application, so its security headers and session checks touch no API route
(and cost the heartbeat path nothing). docs/dashboard.md describes the pages,
the session cookie, CSRF and live updates.

- ``GET /dashboard/`` the page (static; its data comes from the JSON endpoints,
  which send it to ``login`` without a session), ``GET|POST /dashboard/login``,
  ``POST /dashboard/logout``;
- ``GET /dashboard/api/session|overview|updates/{reference}|devices/{uuid}``;
- ``POST /dashboard/api/updates/{reference}/{approve|pause|resume|cancel}``.

The JSON endpoints accept only the session cookie (the API at ``/api/v1``
keeps the admin key); every POST but login must carry the session's CSRF token
in ``X-CSRF-Token`` (403 otherwise), and every POST, login too, must come from
the dashboard's own origin (:func:`same_origin`; 403 otherwise).
"""

from __future__ import annotations

import hashlib
import hmac
import pathlib
import uuid
from collections.abc import Callable, Mapping
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import (
    APIRouter,
    Depends,
    FastAPI,
    HTTPException,
    Path,
    Query,
    Request,
    Response,
    status,
)
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from javia_core.models import DeviceStatus, RolloutCommand, UpdateStatus
from javia_updates.dashboard.sessions import Session, SessionSigner, load_or_create_secret
from javia_updates.dashboard.views import device_detail, fleet_overview, rollout_detail
from javia_updates.service import UpdateService
from javia_updates.settings import SettingsError

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "COOKIE_NAME",
    "CSRF_HEADER",
    "DASHBOARD_PATH",
    "create_dashboard",
    "install_dashboard",
]

#: Where the dashboard is mounted.
DASHBOARD_PATH = "/dashboard"
#: The session cookie (HttpOnly, SameSite=Strict, Secure over https, Path=/dashboard).
COOKIE_NAME = "javia_dashboard_session"
#: The admin key's header on the API (``/api/v1``); the dashboard never takes it.
API_KEY_HEADER = "X-API-Key"
#: The header carrying the session's CSRF token on state-changing requests.
CSRF_HEADER = "X-CSRF-Token"
#: Only the dashboard's own files run or style the page; no inline script or style.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_SECURITY_HEADERS = (
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode("ascii")),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
)
_STATIC = pathlib.Path(__file__).parent / "static"
_LOGIN_MESSAGE_SLOT = "<!--message-->"
_LOGIN_REFUSED = '<p class="error" role="alert">That admin key was not accepted.</p>'
_LOGGED_OUT = '<p class="notice" role="status">Logged out.</p>'
_MAX_KEY_CHARACTERS = 1024

Reference = Annotated[
    str, Path(max_length=80, description="the update's id (e.g. 4) or version (e.g. v1.2.3)")
]


class DashboardCommand(StrEnum):
    """The rollout commands the dashboard posts (docs/rollouts.md, states)."""

    APPROVE = "approve"
    PAUSE = "pause"
    RESUME = "resume"
    CANCEL = "cancel"


class SecurityHeaders:
    """ASGI middleware: the dashboard's security headers on every answer it gives."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _value in message.get("headers", [])}
                extra = [(n, v) for n, v in _SECURITY_HEADERS if n not in present]
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _page(name: str) -> str:
    return (_STATIC / name).read_text(encoding="utf-8")


def _signer(request: Request) -> SessionSigner:
    signer: SessionSigner = request.app.state.signer
    return signer


def _now(request: Request) -> datetime:
    now: datetime = request.app.state.clock()
    return now


def _service(request: Request) -> UpdateService:
    service: UpdateService = request.app.state.service
    return service


def current_session(request: Request) -> Session:
    """The request's valid session, else 401."""
    session = _signer(request).verify(request.cookies.get(COOKIE_NAME), now=_now(request))
    if session is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "log in: no valid dashboard session")
    return session


def same_origin(headers: Mapping[str, str]) -> bool:
    """Whether a state-changing request comes from the dashboard's own pages (docs/dashboard.md).

    ``headers`` are the request's (names lower-case). A present
    ``Sec-Fetch-Site`` must be ``same-origin`` or ``none`` (typed or
    bookmarked). A present ``Origin`` must name the request's own ``Host``
    (host and port; the scheme is left out so a TLS-terminating proxy that
    passes ``Host`` on still matches), except ``null``: the page's
    ``Referrer-Policy: no-referrer`` makes a browser send ``Origin: null``
    with its own login form, so ``null`` (like no ``Origin``: curl, scripts)
    leaves the decision to ``Sec-Fetch-Site``, the cookie and the token.
    """
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return False
    origin = headers.get("origin")
    if origin is None or origin == "null":
        return True
    parts = urlsplit(origin)
    host = headers.get("host", "").lower()
    return parts.scheme in ("http", "https") and bool(host) and parts.netloc.lower() == host


def _refuse_cross_site(request: Request) -> None:
    if not same_origin(request.headers):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "refused: this request comes from another site (its Origin or Sec-Fetch-Site "
            "is not this dashboard's); use the dashboard's own page",
        )


def checked_session(request: Request) -> Session:
    """The request's valid session carrying its CSRF token in ``X-CSRF-Token``, else 401/403.

    Also 403 for a request from another site (:func:`same_origin`), token or not.
    """
    _refuse_cross_site(request)
    session = current_session(request)
    if not _signer(request).csrf_matches(session, request.headers.get(CSRF_HEADER)):
        hint = (
            " (the admin key opens /api/v1, not the dashboard)"
            if API_KEY_HEADER in request.headers
            else ""
        )
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"missing or wrong {CSRF_HEADER}: reload the dashboard and try again{hint}",
        )
    return session


Current = Annotated[Session, Depends(current_session)]
Checked = Annotated[Session, Depends(checked_session)]
Service = Annotated[UpdateService, Depends(_service)]
Now = Annotated[datetime, Depends(_now)]

router = APIRouter()


def _login_answer(request: Request, message: str, status_code: int) -> HTMLResponse:
    page: str = request.app.state.login_page
    return HTMLResponse(page.replace(_LOGIN_MESSAGE_SLOT, message), status_code=status_code)


def _cookie_options(request: Request) -> dict[str, Any]:
    return {
        "path": DASHBOARD_PATH,
        "secure": request.url.scheme == "https",
        "httponly": True,
        "samesite": "strict",
    }


@router.get("/", response_class=HTMLResponse)
def index(request: Request) -> HTMLResponse:
    """The page; without a session its first request sends it to ``login``."""
    return HTMLResponse(request.app.state.index_page)


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, now: Now) -> Response:
    """The login form (to the page if the session is still valid)."""
    if _signer(request).verify(request.cookies.get(COOKIE_NAME), now=now) is not None:
        return RedirectResponse("./", status_code=status.HTTP_303_SEE_OTHER)
    logged_out = request.query_params.get("logged-out") is not None
    return _login_answer(request, _LOGGED_OUT if logged_out else "", status.HTTP_200_OK)


@router.post("/login")
async def login(request: Request, now: Now) -> Response:
    """Exchange the admin key (form field ``api_key``) for a session cookie; 401 if wrong.

    403 when posted from another site (:func:`same_origin`): no login CSRF.
    """
    _refuse_cross_site(request)
    form = await request.form(max_files=0, max_fields=4)
    presented = form.get("api_key")
    api_key: str = request.app.state.api_key
    if (
        not isinstance(presented, str)
        or len(presented) > _MAX_KEY_CHARACTERS
        or not hmac.compare_digest(presented.encode("utf-8"), api_key.encode("utf-8"))
    ):
        return _login_answer(request, _LOGIN_REFUSED, status.HTTP_401_UNAUTHORIZED)
    signer = _signer(request)
    cookie, _session = signer.issue(now=now)
    answer = RedirectResponse("./", status_code=status.HTTP_303_SEE_OTHER)
    answer.set_cookie(
        COOKIE_NAME, cookie, max_age=signer.lifetime_seconds, **_cookie_options(request)
    )
    return answer


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
def logout(request: Request, _: Checked) -> Response:
    """End the session in this browser (the cookie is deleted)."""
    answer = Response(status_code=status.HTTP_204_NO_CONTENT)
    answer.delete_cookie(COOKIE_NAME, **_cookie_options(request))
    return answer


@router.get("/api/session")
def session_info(request: Request, session: Current) -> dict[str, Any]:
    """The session's end (UTC) and the CSRF token to send with every POST."""
    return {
        "expires_at": session.expires_at.isoformat(),
        "csrf_token": _signer(request).csrf_token(session),
    }


@router.get("/api/overview")
def overview(
    _: Current,
    service: Service,
    now: Now,
    status_filter: Annotated[DeviceStatus | None, Query(alias="status")] = None,
    tag: Annotated[str | None, Query(max_length=64)] = None,
) -> JSONResponse:
    """The fleet page's data (:func:`~javia_updates.dashboard.views.fleet_overview`)."""
    return JSONResponse(fleet_overview(service, now=now, status=status_filter, tag=tag))


@router.get("/api/updates/{reference}")
def rollout(
    reference: Reference,
    _: Current,
    service: Service,
    now: Now,
    status_filter: Annotated[UpdateStatus | None, Query(alias="status")] = None,
) -> JSONResponse:
    """A rollout page's data (:func:`~javia_updates.dashboard.views.rollout_detail`)."""
    return JSONResponse(rollout_detail(service, reference, now=now, status=status_filter))


@router.get("/api/devices/{device_uuid}")
def device(device_uuid: uuid.UUID, _: Current, service: Service, now: Now) -> JSONResponse:
    """A device page's data (:func:`~javia_updates.dashboard.views.device_detail`)."""
    return JSONResponse(device_detail(service, device_uuid, now=now))


@router.post("/api/updates/{reference}/{command}")
def rollout_command(
    reference: Reference,
    command: DashboardCommand,
    _: Checked,
    service: Service,
    now: Now,
    body: RolloutCommand | None = None,
) -> JSONResponse:
    """Approve, pause, resume or cancel a rollout (audited as the actor ``dashboard``);
    answers the rollout page's data. 409 with one line when the move is refused."""
    reason = None if body is None else body.reason
    service.rollout_command(reference, command.value, reason=reason, now=now, actor="dashboard")
    return JSONResponse(rollout_detail(service, reference, now=now))


def create_dashboard(
    service: UpdateService,
    *,
    api_key: str,
    secret: bytes,
    clock: Callable[[], datetime],
) -> FastAPI:
    """The dashboard application (mount it at :data:`DASHBOARD_PATH`).

    Args:
        service: the server's service (reads and rollout commands).
        api_key: the admin key the login form checks (constant time).
        secret: the server secret signing sessions (:func:`load_or_create_secret`).
        clock: the server's clock (aware UTC).
    """
    # Imported here: javia_updates.server imports this module while it initializes.
    from javia_updates.server.errors import install_error_handlers

    dashboard = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    dashboard.state.service = service
    dashboard.state.api_key = api_key
    dashboard.state.signer = SessionSigner(secret, api_key)
    dashboard.state.clock = clock
    dashboard.state.index_page = _page("index.html")
    dashboard.state.login_page = _page("login.html")
    install_error_handlers(dashboard)
    dashboard.add_middleware(SecurityHeaders)
    dashboard.include_router(router)
    dashboard.mount("/static", StaticFiles(directory=_STATIC), name="static")
    return dashboard


def install_dashboard(
    app: FastAPI,
    service: UpdateService,
    *,
    api_key: str,
    data_dir: pathlib.Path,
    clock: Callable[[], datetime],
    configured_secret: str | None = None,
    keep_on_disk: bool = True,
) -> None:
    """Mount the dashboard at :data:`DASHBOARD_PATH` on the server ``app``.

    The session secret: ``configured_secret`` (the ``dashboard_secret``
    setting, the same on every replica) if given; else, with ``keep_on_disk``
    (the ``local`` backend), read from (or created in) ``data_dir``
    (:func:`~javia_updates.dashboard.sessions.load_or_create_secret`); else
    (replicas without a disk of their own, ``supabase``) derived from the
    admin key alone, so every replica agrees (docs/dashboard.md).

    Raises:
        SettingsError: the data directory cannot hold the secret, or its file is damaged.
    """
    if configured_secret:
        secret = hashlib.sha256(b"javia dashboard secret\0" + configured_secret.encode()).digest()
    elif keep_on_disk:
        try:
            secret = load_or_create_secret(data_dir.expanduser())
        except (OSError, ValueError) as error:
            raise SettingsError(f"dashboard sessions: {error}") from None
    else:
        secret = hashlib.sha256(b"javia dashboard secret\0").digest()
    app.mount(
        DASHBOARD_PATH,
        create_dashboard(service, api_key=api_key, secret=secret, clock=clock),
        name="dashboard",
    )
