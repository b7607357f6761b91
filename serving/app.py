"""The HTTP service of `hengwen serve`: hints while an agent types, batch scoring, the console page, metrics.

One process holds one scorer (serving.runtime.Scorer, or the rule baseline) and runs its inferences in worker
threads behind a bounded gate: a request that would wait beyond the queue bound is refused with 429 at once.
Request bodies never reach the logs unless `debug` is set.
"""
import json
import logging
import os
import secrets
import time
from dataclasses import asdict, dataclass
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import anyio
from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_fastapi_instrumentator import Instrumentator, metrics
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.requests import HTTPConnection

from ..data.readers import ReadItem
from ..data.schema import parse_ts, unwritable_content
from ..model.labels import LABELS
from ..model.rules import RuleScorer
from .batch import ScorerSpec, build_scorer, score_stream
from .hints import DEFAULT_EVIDENCE_WORDS, Hinter

SETTINGS_ENV = "HENGWEN_SERVE_SETTINGS"
TOKEN_COOKIE = "hengwen_token"
STATIC_DIR = Path(__file__).with_name("static")
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30)
log = logging.getLogger("hengwen.serving")


@dataclass
class ServeSettings:
    model: Optional[str] = None
    """Model folder (default: $HENGWEN_MODEL or the shipped model)."""
    engine: str = "onnx"
    quantization: str = "auto"
    threads: int = 0
    """Intra-op threads of onnxruntime (or torch); 0: all cores."""
    token: Optional[str] = None
    """When set, every route but /health needs `Authorization: Bearer <token>` (or the console's cookie)."""
    max_body_bytes: int = 1 << 20
    max_batch: int = 64
    """Most conversations in one /v1/score request."""
    max_queue: int = 16
    """Requests that may wait for an inference slot; one more gets 429."""
    inference_slots: int = 1
    """Inferences run at the same time (each uses `threads` threads)."""
    evidence_words: int = DEFAULT_EVIDENCE_WORDS
    """Most occluded variants of a draft, all scored in one batch."""
    debug: bool = False
    """Log transcript text (drafts and fired labels): never in production."""

    def to_json(self):
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text):
        return cls(**json.loads(text))


class Overloaded(Exception):
    """The inference queue is full."""


class InferenceGate:
    """At most `slots` inferences at once in worker threads and `queue` more waiting; the rest are refused at
    once, so that overload shows as fast 429s rather than latency that grows without bound."""

    def __init__(self, slots, queue, gauge):
        self.limiter = anyio.CapacityLimiter(slots)
        self.capacity = slots + queue
        self.admitted = 0
        self.gauge = gauge

    async def run(self, function, *args):
        # One event loop per process: the check and the increment cannot interleave.
        if self.admitted >= self.capacity:
            raise Overloaded
        self.admitted += 1
        self.gauge.set(self.admitted)
        try:
            return await anyio.to_thread.run_sync(function, *args, limiter=self.limiter)
        finally:
            self.admitted -= 1
            self.gauge.set(self.admitted)


def _usable_text(text):
    if not text.strip():
        raise ValueError("empty text")
    unwritable = unwritable_content(text)
    if unwritable:
        raise ValueError(f"text holds {unwritable}")
    return text


def _iso_ts(stamp):
    if stamp is not None:
        parse_ts(stamp)
    return stamp


Text = Annotated[str, AfterValidator(_usable_text)]
Timestamp = Annotated[Optional[str], AfterValidator(_iso_ts)]


class Turn(BaseModel):
    role: Literal["agent", "customer", "system"]
    text: Text
    ts: Timestamp = Field(None, description="ISO 8601 with UTC offset; gaps between turns are part of the input")


EXAMPLE_CONTEXT = [{"role": "customer", "text": "这件羽绒服有黑色L码吗"},
                   {"role": "agent", "text": "有的亲，今天下单明天发顺丰"},
                   {"role": "customer", "text": "好的，我先自己看看"}]


class HintRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"context": EXAMPLE_CONTEXT, "draft": "亲别犹豫啦，现在下单吧，我这个月业绩还差一单"}]})
    context: list[Turn] = Field(default_factory=list, description="the conversation so far, oldest first; "
                                "long contexts are cut from the left, never refused")
    draft: Text = Field(description="the reply the agent is about to send")
    draft_ts: Timestamp = Field(None, description="when the draft would be sent (ISO 8601 with offset)")


class Span(BaseModel):
    start: int = Field(description="character offset in the draft, inclusive")
    end: int = Field(description="character offset in the draft, exclusive")
    text: str
    source: list[Literal["model", "rules"]] = Field(
        description="model: dropping these words lowers the score; rules: a lexicon phrase of the label")


class Suggestion(BaseModel):
    situation: str
    advice: str = Field(description="what to do instead, in the draft's script")
    alternatives: list[str] = Field(description="concrete replies the agent could send instead")


class LabelHint(BaseModel):
    score: float
    threshold: float
    fired: bool
    title: str
    suggestion: Optional[Suggestion] = Field(description="only for a fired label")
    evidence: list[Span] = Field(description="only for a fired label: the spans of the draft behind the score")


class HintResponse(BaseModel):
    labels: dict[str, LabelHint]
    fired: list[str]
    script: Literal["simplified", "traditional"]


class ScoreRequest(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"conversations": [{"id": "c-1", "turns": EXAMPLE_CONTEXT + [
            {"role": "agent", "text": "亲这款今天特价，真的很适合您，现在下单吧"}]}]}]})
    conversations: list[Any] = Field(description="conversations as in the labels guide (id, turns, optional "
                                     "meta); one that cannot be scored gets an error record, like the CLI")


class TurnScores(BaseModel):
    model_config = ConfigDict(extra="allow")
    index: int
    labels: list[str]
    scores: dict[str, float]


class ConversationScores(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    labels: list[str]
    scores: dict[str, float]
    turns: list[TurnScores]


class ScoreError(BaseModel):
    id: Optional[str]
    error: str
    line: int = Field(description="1-based position of the conversation in the request")


class ScoreResponse(BaseModel):
    records: list[ConversationScores | ScoreError] = Field(
        description="one per conversation, in order: exactly the records `hengwen score` writes")


def _field(location):
    parts = [str(part) for part in location]
    return ".".join(parts[1:] if parts[:1] == ["body"] and len(parts) > 1 else parts)


def _problem(error):
    if error["type"] == "json_invalid":
        return {"field": "body", "message": f"invalid JSON at character {error['loc'][-1]}: "
                                            f"{error.get('ctx', {}).get('error', error['msg'])}"}
    return {"field": _field(error["loc"]), "message": error["msg"]}


async def _validation_failed(request, error):
    problems = [_problem(e) for e in error.errors()]
    summary = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
    return JSONResponse({"detail": summary, "problems": problems}, status_code=422)


async def _overloaded(request, error):
    return JSONResponse({"detail": "too many requests waiting for inference; retry shortly"}, status_code=429,
                        headers={"Retry-After": "1"})


class TokenAuth:
    """Every route but /health needs the bearer token; `GET /?token=...` also sets it as an HttpOnly cookie
    so that the console page, /docs and the console's own requests work in a browser."""

    def __init__(self, app, token):
        self.app, self.token = app, token

    def _given(self, connection):
        """(token the request carries, whether it came in the console's address)."""
        scheme, _, credentials = connection.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and credentials:
            return credentials, False
        if TOKEN_COOKIE in connection.cookies:
            return connection.cookies[TOKEN_COOKIE], False
        if connection.url.path == "/" and "token" in connection.query_params:
            return connection.query_params["token"], True
        return "", False

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] == "/health":
            return await self.app(scope, receive, send)
        given, from_address = self._given(HTTPConnection(scope))
        if not secrets.compare_digest(given.encode(), self.token.encode()):
            response = JSONResponse({"detail": "missing or wrong bearer token"}, status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
            return await response(scope, receive, send)
        if not from_address:
            return await self.app(scope, receive, send)

        async def send_with_cookie(message):
            if message["type"] == "http.response.start":
                cookie = f"{TOKEN_COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
                message["headers"] = list(message.get("headers", [])) + [(b"set-cookie", cookie.encode())]
            await send(message)

        await self.app(scope, receive, send_with_cookie)


class BodyLimit:
    """Reads the request body before the app does and answers a JSON 413 that names the limit once the body is over
    it, whether its Content-Length says so or it arrives in chunks (Starlette's own limit answers in plain text)."""

    def __init__(self, app, max_bytes):
        self.app, self.max_bytes = app, max_bytes

    def _too_large(self):
        return JSONResponse({"detail": f"request body over the limit of {self.max_bytes} bytes (--max-body-bytes): "
                                       "split the request or raise the limit"}, status_code=413)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = HTTPConnection(scope).headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large()(scope, receive, send)
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await self._too_large()(scope, receive, send)
            if not message.get("more_body"):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


class AccessLog:
    """One log line per request (method, path without query, status, time) and a 500 instead of any crash;
    an error is logged by its type only, since its message may quote transcript text."""

    def __init__(self, app, debug):
        self.app, self.debug = app, debug

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), None

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except Exception as error:
            # an error after a response below 500 went out (a client gone mid-stream) left nothing unanswered
            if status is None or status >= 500:
                log.error("%s %s failed: %s", scope["method"], scope["path"], type(error).__name__,
                          exc_info=error if self.debug else None)
            if status is None:
                await JSONResponse({"detail": "internal error"}, status_code=500)(scope, receive, send_and_note)
        log.info("%s %s %s %.1f ms", scope["method"], scope["path"], status,
                 (time.perf_counter() - started) * 1000)


def _model_info(scorer, settings):
    if isinstance(scorer, RuleScorer):
        return {"name": "rule-baseline", "version": package_version("hengwen"), "base_model": None,
                "engine": "rules", "quantization": None, "labels": list(LABELS),
                "thresholds": scorer.thresholds, "untimed_calibration": None, "encoding": None}
    model = scorer.settings
    return {"name": model.model_dir.name, "version": model.version, "base_model": model.base_model,
            "engine": settings.engine, "quantization": scorer.backend.quantization, "labels": list(LABELS),
            "thresholds": scorer.thresholds, "untimed_calibration": scorer.untimed,
            "encoding": model.encoding.to_dict()}


def _build_scorer(settings):
    return build_scorer(ScorerSpec(engine=settings.engine, model=settings.model, quantization=settings.quantization,
                                   threads=settings.threads, batch_size=max(32, settings.evidence_words)))


def create_app(settings: ServeSettings):
    """The FastAPI app with its scorer loaded and warmed up."""
    scorer = _build_scorer(settings)
    hinter = Hinter(scorer, evidence_words=settings.evidence_words)
    hinter.warm_up()
    registry = CollectorRegistry()
    fired_total = Counter("hengwen_hint_fired_total", "Drafts that fired a label", ["label"], registry=registry)
    conversations_total = Counter("hengwen_score_conversations_total", "Conversations sent to /v1/score",
                                  ["outcome"], registry=registry)
    gate = InferenceGate(settings.inference_slots, settings.max_queue,
                         Gauge("hengwen_inference_admitted", "Requests running or waiting for inference",
                               registry=registry))
    info = _model_info(scorer, settings) | {
        "hengwen_version": package_version("hengwen"),
        "limits": {"max_body_bytes": settings.max_body_bytes, "max_batch": settings.max_batch,
                   "max_queue": settings.max_queue, "inference_slots": settings.inference_slots,
                   "threads": settings.threads, "evidence_words": settings.evidence_words}}

    app = FastAPIOffline(title="hengwen", version=package_version("hengwen"), redoc_url=None,
                         description="Hints for a draft agent reply and per-turn scores for overbearing, "
                                     "perfunctory, vague-expertise and cold-follow-up.")
    app.state.hinter = hinter
    app.add_exception_handler(RequestValidationError, _validation_failed)
    app.add_exception_handler(Overloaded, _overloaded)

    @app.get("/health", tags=["service"])
    async def health():
        return {"status": "ok"}

    @app.get("/info", tags=["service"])
    async def model_info():
        """Model name and version, base model, labels, thresholds, encoding settings, quantization, limits."""
        return info

    @app.post("/v1/hint", response_model=HintResponse, tags=["hints"])
    async def hint(request: HintRequest):
        """Scores of the draft per label; for each fired label a suggestion and the draft's evidence spans."""
        context = [turn.model_dump(exclude_none=True) for turn in request.context]
        result = await gate.run(hinter.hint, context, request.draft, request.draft_ts)
        for label in result["fired"]:
            fired_total.labels(label).inc()
        if settings.debug:
            log.debug("hint draft=%r fired=%s", request.draft, result["fired"])
        return result

    @app.post("/v1/score", response_model=ScoreResponse, tags=["scores"])
    async def score(request: ScoreRequest):
        """One or many conversations; one record per conversation, exactly as `hengwen score` writes them."""
        if len(request.conversations) > settings.max_batch:
            raise HTTPException(413, f"{len(request.conversations)} conversations, more than the batch limit "
                                     f"of {settings.max_batch}: split the request")
        items = [ReadItem(line, record=record) for line, record in enumerate(request.conversations, 1)]
        records = await gate.run(lambda: [record for _, record in score_stream(items, scorer)])
        errors = sum("error" in record for record in records)
        conversations_total.labels("error").inc(errors)
        conversations_total.labels("scored").inc(len(records) - errors)
        return JSONResponse({"records": records})

    @app.get("/", include_in_schema=False)
    async def console():
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    instrumentator = Instrumentator(should_group_status_codes=False, excluded_handlers=["^/metrics$"],
                                    registry=registry)
    instrumentator.add(metrics.requests(registry=registry),
                       metrics.latency(buckets=LATENCY_BUCKETS, should_include_status=False, registry=registry))
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    if settings.token:
        app.add_middleware(TokenAuth, token=settings.token)
    app.add_middleware(AccessLog, debug=settings.debug)
    instrumentator.instrument(app).expose(app, tags=["service"])
    return app


def create_app_from_environment():
    """Factory for uvicorn (one call per worker process): settings come from $HENGWEN_SERVE_SETTINGS."""
    return create_app(ServeSettings.from_json(os.environ.get(SETTINGS_ENV, "{}")))
