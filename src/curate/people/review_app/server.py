"""``curate review --serve``: the review app, a small Starlette app on uvicorn.

Why Starlette: the app is five JSON/HTML routes over one in-memory table; Starlette is the
ASGI toolkit FastAPI is built on, without the validation and ORM layers this needs none of,
and uvicorn is its standard server. Routes:

- ``GET /``: the page (Jinja2, the report environment, autoescaped) and ``GET /app.js``;
- ``GET /api/queue``: one page of the flags (:func:`curate.people.flags.flag_table`), filtered by
  class, group, issue kind and status, each with its standing decision, and the progress;
- ``GET /api/image/{sample_id}``: a PNG from the pixel store, found by sample id in clean's
  table (never a path from the request);
- ``POST /api/decide`` and ``POST /api/undo``: one ledger line each (:mod:`curate.people.review_app.journal`).

With ``--audit N`` the queue is an audit sample instead (:mod:`curate.people.review_app.audit_mode`).

Everything passes :mod:`curate.people.review_app.guard` first. The queue is built once at start; 100,000
flags page
by offset, so the page never holds more than it shows.
"""

from __future__ import annotations

import io
import json
import secrets
import socket
import subprocess
import sys
import webbrowser
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import uvicorn
from PIL import Image
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from curate import dag
from curate.data import ledger
from curate.data.image_rows import image_rows
from curate.errors import CurateError
from curate.people import flags as review_flags
from curate.people.flags import load_clean
from curate.people.review_app.audit_mode import Audit, Plan
from curate.people.review_app.guard import Guard, GuardMiddleware, page_policy
from curate.people.review_app.journal import Conflict, Journal
from curate.report.render import ENV

DEFAULT_PORT = 8642
PAGE_LIMIT = 200  # flags per queue request, at most
MEMBERS_SHOWN = 6  # other members of a near-duplicate set shown beside a card
STATUSES = ("all", "undecided", "decided")


class Queue:
    """The flags of one clean table and the ledger they are decided in; with an audit ``plan``,
    the audit's sample of them."""

    def __init__(self, clean: pd.DataFrame, journal: Journal, plan: Plan | None = None) -> None:
        self.flags = review_flags.flag_table(clean)
        self.audit = Audit(self.flags, plan) if plan else None
        if self.audit:
            self.flags = self.audit.queue
        self.journal = journal
        self.classes = journal.names
        self.groups = sorted(set(self.flags["group"].astype(str)))
        train = clean[clean["split"] == "train"]
        self.train = dict(zip(train["sample_id"].astype(str), train["path"].astype(str), strict=True))
        self.position = {sid: pos for pos, sid in enumerate(clean["sample_id"].astype(str))}
        self.images = image_rows(clean)
        self.members = _duplicate_members(train)

    def select(self, query: dict[str, str]) -> np.ndarray:
        """Positions in ``flags`` that pass the filters ``class``, ``group``, ``kind``, ``status``."""
        flags, chosen = self.flags, np.ones(len(self.flags), dtype=bool)
        if query.get("class"):
            chosen &= (flags["given_name"] == query["class"]).to_numpy()
        if query.get("group"):
            chosen &= (flags["group"].astype(str) == query["group"]).to_numpy()
        if query.get("kind"):
            chosen &= flags["kinds"].str.split().map(lambda kinds: query["kind"] in kinds).to_numpy()
        status = query.get("status", "all")
        if status != "all":
            decided = flags["sample_id"].isin(list(self.journal.standing)).to_numpy()
            chosen &= decided if status == "decided" else ~decided
        return np.flatnonzero(chosen)

    def item(self, row: pd.Series) -> dict:
        duplicate_set = int(row.get("duplicate_set", -1))
        members = [sid for sid in self.members.get(duplicate_set, []) if sid != row["sample_id"]]
        return {
            "sample_id": str(row["sample_id"]),
            "path": str(row["path"]),
            "group": str(row["group"]),
            "given": str(row["given_name"]),
            "suggested": str(row["suggested_name"]),
            "probability": _number(row["probability"]),
            "quality": _number(row["label_quality"]),
            "kinds": str(row["kinds"]).split(),
            "duplicates": members[:MEMBERS_SHOWN],
            "decision": self.journal.standing.get(str(row["sample_id"])),
            "band": self.audit.cell(str(row["sample_id"])) if self.audit else "",
        }

    def progress(self) -> dict:
        """Decided flags / all flags, and the label flags' precision as judged so far; in an audit,
        the audit's estimate too."""
        standing = self.journal.standing
        decided = self.flags[self.flags["sample_id"].isin(list(standing))]
        labelled = decided[decided["is_label"].to_numpy()]
        confirmed = sum(
            review_flags.confirms(standing[sid]["decision"], standing[sid]["label"], given)
            for sid, given in zip(labelled["sample_id"], labelled["given_name"], strict=True)
        )
        return {
            "decided": len(decided),
            "total": len(self.flags),
            "reviewed_label_flags": len(labelled),
            "confirmed": int(confirmed),
        } | ({"audit": self.audit.progress(standing)} if self.audit else {})


def _duplicate_members(train: pd.DataFrame) -> dict[int, list[str]]:
    """duplicate_set -> its members' sample ids, in table order (none when clean wrote no sets)."""
    if "duplicate_set" not in train.columns:
        return {}
    sets = train[train["duplicate_set"] >= 0]
    return sets.groupby("duplicate_set")["sample_id"].apply(list).to_dict()


def _number(value) -> float | None:
    return None if pd.isna(value) else float(value)


def build_app(queue: Queue, guard: Guard, ledger_name: str) -> Starlette:
    """The app over ``queue``, guarded by ``guard``; ``ledger_name`` is what the page calls the ledger."""
    script = resources.files("curate.people.review_app").joinpath("static/app.js").read_bytes()

    async def page(request: Request) -> Response:
        nonce = secrets.token_urlsafe(16)
        html = ENV.get_template("review_app.html").render(
            nonce=nonce,
            csrf=guard.csrf,
            classes=queue.classes,
            groups=queue.groups,
            kinds=review_flags.KINDS,
            statuses=STATUSES,
            ledger=ledger_name,
            audit=queue.audit.plan if queue.audit else None,
            reviewer=queue.journal.reviewer,
            rerun=list(dag.after("clean")),  # what dvc repro re-runs after a ledger change
        )
        response = HTMLResponse(html, headers={"Content-Security-Policy": page_policy(nonce)})
        guard.remember(request, response)
        return response

    async def queue_page(request: Request) -> Response:
        query = dict(request.query_params)
        offset, limit = _bounded(query.get("offset"), 0, 0), _bounded(query.get("limit"), 50, 1, PAGE_LIMIT)
        try:
            queue.journal.refresh()  # decisions other servers appended since
        except CurateError as error:  # someone broke the ledger by hand: say where, as clean would
            return JSONResponse({"error": str(error)}, 500)
        chosen = queue.select({} if queue.audit else query)  # an audit asks about its whole sample
        rows = queue.flags.iloc[chosen[offset : offset + limit]]
        items = [queue.item(row) | {"index": offset + i} for i, (_, row) in enumerate(rows.iterrows())]
        return JSONResponse(
            {"total": len(chosen), "offset": offset, "items": items, "progress": queue.progress()}
        )

    async def image(request: Request) -> Response:
        position = queue.position.get(request.path_params["sample_id"])
        if position is None:
            return JSONResponse({"error": "no such sample"}, status_code=404)
        pixels = queue.images[position]
        buffer = io.BytesIO()
        Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buffer, format="PNG")
        return Response(buffer.getvalue(), media_type="image/png", headers={"Cache-Control": "private"})

    async def decide(request: Request) -> Response:
        return await _write(request, queue)

    routes = [
        Route("/", page),
        Route("/app.js", lambda request: Response(script, media_type="text/javascript")),
        Route("/favicon.ico", lambda request: Response(status_code=204)),  # browsers ask; none
        Route("/api/queue", queue_page),
        Route("/api/image/{sample_id}", image),
        Route("/api/decide", decide, methods=["POST"]),
        Route("/api/undo", decide, methods=["POST"]),
    ]
    return Starlette(routes=routes, middleware=[Middleware(GuardMiddleware, guard=guard)])


async def _write(request: Request, queue: Queue) -> Response:
    """One decision (or, at /api/undo, one undo) from a JSON body, appended to the ledger."""
    try:
        body = json.loads(await request.body())
        sample_id = str(body["sample_id"])
        decision = ledger.UNDO if request.url.path.endswith("/undo") else str(body["decision"])
        label, note = str(body.get("label") or ""), str(body.get("note") or "")
    except (ValueError, KeyError, TypeError):
        return JSONResponse({"error": "expected a JSON object with sample_id and decision"}, 400)
    if sample_id not in queue.train:
        return JSONResponse({"error": f"sample {sample_id} is not a train sample of clean's table"}, 404)
    band = queue.audit.cell(sample_id) if queue.audit and decision != ledger.UNDO else ""
    try:
        record = queue.journal.decide(sample_id, queue.train[sample_id], decision, label, note, band)
    except Conflict as conflict:
        return JSONResponse(
            {"error": str(conflict), "first": conflict.first, "progress": queue.progress()}, 409
        )
    except CurateError as error:
        return JSONResponse({"error": str(error)}, 400)
    return JSONResponse(
        {"decision": None if decision == ledger.UNDO else record, "progress": queue.progress()}
    )


def _bounded(text: str | None, default: int, low: int, high: int | None = None) -> int:
    try:
        value = int(text) if text is not None else default
    except ValueError:
        value = default
    return max(low, value if high is None else min(value, high))


def serve(settings: Settings) -> int:
    """Load clean's table and the ledger, bind, print the URL with its token, serve until ^C."""
    clean = load_clean()
    names = [name for _, name in sorted(review_flags.class_names(clean).items())]
    journal = Journal(settings.ledger, names, settings.reviewer or _git_user())
    listener = _bind(settings.host, settings.port)
    port = listener.getsockname()[1]
    guard = Guard(settings.host, port)
    app = build_app(Queue(clean, journal, settings.audit), guard, str(settings.ledger))
    shown = f"[{settings.host}]" if ":" in settings.host else settings.host
    url = f"http://{shown}:{port}/?token={guard.token}"
    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"curate review: warning: listening on {settings.host}, not only this machine", file=sys.stderr)
    doing = f"auditing {settings.audit.size} flags" if settings.audit else "reviewing"
    print(f"curate review: {doing} as {journal.reviewer} into {settings.ledger}; open {url}", flush=True)
    if settings.open_browser:
        webbrowser.open(url)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[listener])
    return 0


@dataclass(frozen=True)
class Settings:
    ledger: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    reviewer: str = ""
    open_browser: bool = False
    audit: Plan | None = None  # --audit N: the queue is the audit's sample


def _git_user() -> str:
    try:
        name = subprocess.run(
            ["git", "config", "user.name"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:  # no git at all
        name = ""
    if not name:
        raise CurateError("no reviewer: pass --reviewer NAME (or set git config user.name)")
    return name


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets that say so, and without it a
    # response's body waits for the ACK of its headers (40 ms of delayed ACK on a kept-alive link).
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        raise CurateError(f"--host {host} --port {port}: cannot listen ({exc.strerror})") from None
    listener.listen(128)
    return listener
