"""The dashboard's web server: a Starlette app over one read-only view of the store.

Routes (all GET; JSON errors are {"error": "..."} with a 4xx status):

    /                       the page (traintape/ui/static/index.html)
    /static/plotly.min.js   the charting library (plotly_js: no CDN)
    /static/*               the page's own files
    /api/runs               the runs table                     (traintape.ui.api.runs_table)
    /api/run/{run_id}       one run: config, params, ...       (traintape.ui.api.run_page)
    /api/metrics?runs=a,b   the metric keys of runs            (traintape.ui.api.metric_keys)
    /api/series             one metric of one run, downsampled (traintape.ui.series); x is
                            step, time, relative or metric (&xkey=KEY: another metric)
    /api/system             one system metric of one run
    /api/media?run=ID       the run's images and tables, per key and step (traintape.ui.media)
    /api/object/SHA?run=ID  the bytes of an object an artifact event of the run records
    /api/table?run=ID&sha256=SHA   a table's first rows

The store is opened once (`traintape.connect()` is an in-memory DuckDB over the Parquet files:
no lock the collector ever waits on); each request gets its own cursor of it, in Starlette's
thread pool. With a token (`traintape ui --allow-remote`), every request must carry it: `?token=`
once (a cookie then keeps it), or `Authorization: Bearer TOKEN`. Without one the server is on
loopback, and only answers requests naming a loopback host (a web page elsewhere cannot reach it
by pointing a DNS name of its own at 127.0.0.1).
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import duckdb
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from traintape.errors import (
    ArtifactNotFoundError,
    ArtifactVerifyError,
    QueryError,
    RunLookupError,
    RunNotFoundError,
)
from traintape.read.history import resolve_run
from traintape.ui import api, media, peer, series
from traintape.ui.downsample import MAX_WIDTH, MIN_WIDTH
from traintape.ui.index import MetricIndex
from traintape.ui.stores import Store, objects_of

__all__ = ["STATIC", "TOKEN_COOKIE", "create_app", "plotly_js"]

log = logging.getLogger("traintape.ui.server")

STATIC = Path(__file__).resolve().parent / "static"
TOKEN_COOKIE = "traintape_token"
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


PLOTLY_BASIC = STATIC / "vendor" / "plotly-basic.min.js"
"""plotly.js's scatter-only bundle from npm, which `make install` puts here (Makefile: pinned
version and sha256): 1.2 MB where the plotly package's full bundle is 4.8 MB, which a browser
spends about 1 s more to parse and start before a first chart. The page draws scatter traces
only."""


def plotly_js() -> Path:
    """The bundle the page loads: PLOTLY_BASIC when installed, else the plotly.min.js the
    installed plotly package ships (`pip install traintape[ui]`)."""
    if PLOTLY_BASIC.is_file():
        return PLOTLY_BASIC
    import plotly

    return Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"


class JSON(Response):
    """Strict JSON (no NaN literals: see traintape.ui.api.jsonable), compact."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        try:  # most answers hold no NaN or Inf: encoded as they are, without a copy first
            text = json.dumps(content, separators=(",", ":"), allow_nan=False, default=_plain)
        except (ValueError, TypeError):  # NaN/Inf (kept as text), or a key JSON has no form for
            text = json.dumps(api.jsonable(content), separators=(",", ":"), allow_nan=False)
        return text.encode()


def _plain(value: Any) -> Any:
    """What json.dumps cannot encode itself (times, decimals, bytes), as api.jsonable has it."""
    return api.jsonable(value)


def _error(status: int, message: str) -> JSON:
    return JSON({"error": message}, status_code=status)


class Handlers:
    """The API's endpoints over one store (each runs in Starlette's thread pool)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.base = api.open_store(store)
        # The background last/best work reads every metric row of a big store: on a database of
        # its own with one thread, so that it leaves the other cores to the page's requests.
        self.summaries = api.SummaryCache(store, lambda: api.open_store(store, threads=1))
        self.runs_cache = api.RunsCache(store)
        self.index = MetricIndex()
        threading.Thread(target=self._warm, name="traintape-ui-warm", daemon=True).start()

    def _warm(self) -> None:
        """Reads the runs table as the first page asks for it (a request meanwhile waits for
        this read rather than doing it again) and starts computing every run's last/best,
        newest first, so the first page of a big store waits for neither."""
        con = api.cursor(self.base, self.store)
        try:
            api.runs_table(con, self.summaries, runs_cache=self.runs_cache)
        except duckdb.Error as exc:
            log.warning("traintape ui: could not list the runs: %s", exc)
        finally:
            con.close()

    def _answer(self, fn: Callable[[duckdb.DuckDBPyConnection], Any]) -> Response:
        return self._respond(lambda con: JSON(fn(con)))

    def _respond(self, fn: Callable[[duckdb.DuckDBPyConnection], Response]) -> Response:
        """fn's response over a cursor of the store, or the JSON error its exception means."""
        con = api.cursor(self.base, self.store)
        try:
            return fn(con)
        except (RunNotFoundError, ArtifactNotFoundError) as exc:
            return _error(404, str(exc))
        except ArtifactVerifyError as exc:
            return _error(409, str(exc))
        except (QueryError, RunLookupError) as exc:
            return _error(400, str(exc))
        except duckdb.Error as exc:
            log.warning("traintape ui: query failed: %s", exc)
            return _error(400, f"the store could not answer: {exc}")
        finally:
            con.close()

    def runs(self, request: Request) -> Response:
        p = request.query_params
        return self._answer(
            lambda con: api.runs_table(
                con,
                self.summaries,
                runs_cache=self.runs_cache,
                **{
                    k: p.get(k) or None for k in ("project", "tag", "status", "q", "where", "group")
                },
            )
        )

    def run(self, request: Request) -> Response:
        ref = request.path_params["run_id"]
        return self._answer(lambda con: api.run_page(con, resolve_run(con, ref)))

    def metrics(self, request: Request) -> Response:
        ids = [r for r in request.query_params.get("runs", "").split(",") if r]
        if not ids:
            return _error(400, "runs: name one or more run ids, e.g. ?runs=ID1,ID2")
        return self._answer(lambda con: api.metric_keys(con, ids))

    def series(self, request: Request) -> Response:
        p = request.query_params
        try:
            run_id, key = _required(p, "run"), _required(p, "key")
            kw: dict[str, Any] = {
                "x_kind": p.get("x", "step"),
                "x_key": p.get("xkey") or None,
                "ranks": p.get("ranks", "mean"),
                "width": _width(p),
                "x0": _number(p, "x0"),
                "x1": _number(p, "x1"),
                "after": _number(p, "after"),
            }
        except QueryError as exc:
            return _error(400, str(exc))
        kw["index"] = self.index
        return self._answer(lambda con: series.metric_series(con, run_id, key, **kw))

    def system(self, request: Request) -> Response:
        p = request.query_params
        try:
            run_id, key, width = _required(p, "run"), _required(p, "key"), _width(p)
        except QueryError as exc:
            return _error(400, str(exc))
        return self._answer(lambda con: series.system_series(con, run_id, key, width=width))

    def media(self, request: Request) -> Response:
        try:
            run_id = _required(request.query_params, "run")
        except QueryError as exc:
            return _error(400, str(exc))
        return self._answer(lambda con: media.media_list(con, run_id))

    def table(self, request: Request) -> Response:
        p = request.query_params
        try:
            run_id, sha256 = _required(p, "run"), _required(p, "sha256")
        except QueryError as exc:
            return _error(400, str(exc))
        return self._answer(
            lambda con: media.table_rows(con, objects_of(self.store), run_id, sha256)
        )

    def object(self, request: Request) -> Response:
        """An object's bytes, only when an artifact event of `run` records its sha256."""
        sha256 = request.path_params["sha256"]
        try:
            run_id = _required(request.query_params, "run")
        except QueryError as exc:
            return _error(400, str(exc))
        return self._respond(
            lambda con: _object(*media.object_bytes(con, objects_of(self.store), run_id, sha256))
        )

    def close(self) -> None:
        self.summaries.stop()
        deadline = time.monotonic() + 5
        while not self.summaries.idle() and time.monotonic() < deadline:
            time.sleep(0.01)  # its thread closes its own database once interrupted
        try:
            self.base.close()
        except duckdb.Error:
            pass  # still busy: the process is exiting, and the store was only read


def _object(row: dict[str, Any], path: Path, data: bytes | None) -> Response:
    """An object's response: a PNG image as itself, anything else as a download (a browser
    never renders it as a page of this origin)."""
    headers = {"Cache-Control": "private, max-age=86400", "X-Content-Type-Options": "nosniff"}
    meta = media.metadata_of(row["metadata"])
    if row["kind"] == "image" and meta.get("media") == "image" and meta.get("format") == "png":
        kind = "image/png"
    else:
        kind = "application/octet-stream"
        name = str(row["name"] or "object").rsplit("/", 1)[-1]
        # ASCII only: a header is latin-1, and a key such as "表" would fail the response
        safe = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in name)
        headers["Content-Disposition"] = f'attachment; filename="{safe}"'
    if data is None:  # too big to hold: checked a chunk at a time, sent the same way
        return StreamingResponse(media.stream(path), media_type=kind, headers=headers)
    return Response(data, media_type=kind, headers=headers)


def _required(params: Any, name: str) -> str:
    value = params.get(name)
    if not value:
        msg = f"{name}: required"
        raise QueryError(msg)
    return str(value)


def _number(params: Any, name: str) -> float | None:
    text = params.get(name)
    if text in (None, ""):
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if value != value or value in (float("inf"), float("-inf")):
        msg = f"{name}: a finite number, got {text!r}"
        raise QueryError(msg)
    return value


def _width(params: Any) -> int:
    text = params.get("width", "800")
    try:
        width = int(text)
    except ValueError:
        width = 0
    if not MIN_WIDTH <= width <= MAX_WIDTH:
        msg = f"width: pixels, {MIN_WIDTH} to {MAX_WIDTH}, got {text!r}"
        raise QueryError(msg)
    return width


def _index(request: Request) -> Response:
    page = STATIC / "index.html"
    if not page.is_file():
        return _error(404, f"the dashboard's page is missing ({page}): reinstall traintape")
    return FileResponse(page, headers={"Cache-Control": "no-cache"})


def _plotly(request: Request) -> Response:
    # 1.2 or 4.8 MB that changes only with an install: a browser keeps it for a day, so a page
    # opened again paints without fetching it again.
    return FileResponse(
        plotly_js(), media_type="text/javascript", headers={"Cache-Control": "max-age=86400"}
    )


def _host_name(header: str) -> str:
    """The host of a Host header (`name:port`, `[v6]:port`), without the port."""
    if header.startswith("["):
        return header.split("]", 1)[0] + "]"
    return header.rsplit(":", 1)[0] if ":" in header else header


def _no_route(request: Request) -> Response:
    return _error(404, f"no such API: {request.url.path}")


Endpoint = Callable[[Request], Awaitable[Response]]


def _loopback_host(host: str, names: frozenset[str]) -> bool:
    """`host` (of a Host header) names this machine: localhost, a loopback address, or one of
    `names` (the --bind the server was started with, already checked to be loopback)."""
    if host in LOOPBACK_HOSTS or host in names:
        return True
    try:
        return ipaddress.ip_address(host.removeprefix("[").removesuffix("]")).is_loopback
    except ValueError:
        return False


def _guard(
    token: str | None, names: frozenset[str]
) -> Callable[[Request, Endpoint], Awaitable[Response]]:
    """The check every request passes: the token when there is one, else a loopback Host."""

    async def check(request: Request, call_next: Endpoint) -> Response:
        if token is None:
            host = _host_name(request.headers.get("host", ""))
            if not _loopback_host(host, names):
                return _error(403, f"Host {host!r}: this dashboard answers on loopback only")
            uid = peer.foreign_user(request.scope.get("client"), request.scope.get("server"))
            if uid is not None:  # another local user: the store is private to its owner
                return _error(403, f"uid {uid}: this dashboard answers its own user only")
            return await call_next(request)
        given = request.query_params.get("token")
        offered = [
            given,
            request.cookies.get(TOKEN_COOKIE),
            request.headers.get("authorization", "").removeprefix("Bearer ").strip() or None,
        ]
        if not any(t is not None and hmac.compare_digest(t, token) for t in offered):
            return _error(401, "a token is required: open the URL `traintape ui` printed")
        response = await call_next(request)
        if given is not None:
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        return response

    return check


def create_app(store: Store, token: str | None = None, bind: str | None = None) -> Starlette:
    """The dashboard app over `store` (a resolved store folder, or an s3:// store's tables:
    RemoteTables); with `token`, every request must carry it; without, only requests naming a
    loopback host (or `bind`) are answered."""
    from starlette.middleware import Middleware
    from starlette.middleware.base import BaseHTTPMiddleware

    handlers = Handlers(store)
    routes = [
        Route("/", _index),
        Route("/api/runs", handlers.runs),
        Route("/api/run/{run_id:path}", handlers.run),
        Route("/api/metrics", handlers.metrics),
        Route("/api/series", handlers.series),
        Route("/api/system", handlers.system),
        Route("/api/media", handlers.media),
        Route("/api/table", handlers.table),
        Route("/api/object/{sha256}", handlers.object),
        Route("/api/{rest:path}", _no_route),
        Route("/static/plotly.min.js", _plotly),
        Mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static"),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        handlers.close()

    return Starlette(
        routes=routes,
        middleware=[
            Middleware(
                BaseHTTPMiddleware, dispatch=_guard(token, frozenset({bind} if bind else ()))
            )
        ],
        lifespan=lifespan,
    )
