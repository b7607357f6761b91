"""The HTTP service on the tiny model: every route, every error class, auth, metrics and what reaches the logs."""
import json
import logging
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from hengwen.model.labels import LABELS
from hengwen.model.rules import to_simplified
from hengwen.serving.app import SETTINGS_ENV, ServeSettings, create_app
from hengwen.serving.cli import main

from ..conftest import TINY_DATA

PUSHY = "亲别犹豫啦，现在下单吧，我这个月业绩还差一单"
DECLINED = [{"role": "customer", "text": "这件羽绒服有黑色L码吗"},
            {"role": "agent", "text": "有的亲，今天下单明天发顺丰"},
            {"role": "customer", "text": "好的，我先自己看看"}]


def model_with_thresholds(tiny_model, folder, threshold):
    """A copy of the tiny model whose every label fires (threshold 0) or none does (above 1)."""
    shutil.copytree(tiny_model, folder)
    config = json.loads((folder / "config.json").read_text())
    config["hengwen_thresholds"] = {label: threshold for label in LABELS}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def firing_model(tiny_model, tmp_path_factory):
    return model_with_thresholds(tiny_model, tmp_path_factory.mktemp("firing") / "model", 0.0)


@pytest.fixture(scope="module")
def quiet_model(tiny_model, tmp_path_factory):
    return model_with_thresholds(tiny_model, tmp_path_factory.mktemp("quiet") / "model", 1.01)


def client_for(model, **settings):
    return TestClient(create_app(ServeSettings(model=str(model), **settings)))


@pytest.fixture(scope="module")
def client(firing_model):
    with client_for(firing_model) as test_client:
        yield test_client


def test_health_and_info(client):
    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/info").json()
    assert info["labels"] == list(LABELS)
    assert info["thresholds"] == {label: 0.0 for label in LABELS}
    assert info["untimed_calibration"] is None
    assert info["quantization"] == "int8" and info["engine"] == "onnx"
    assert info["encoding"]["max_length"] == 64
    assert {"name", "version", "base_model", "limits"} <= set(info)


def test_fired_labels_get_suggestion_and_evidence_spans_of_the_draft(client):
    response = client.post("/v1/hint", json={"context": DECLINED, "draft": PUSHY})
    assert response.status_code == 200
    body = response.json()
    assert body["fired"] == list(LABELS) and body["script"] == "simplified"
    for label, hint in body["labels"].items():
        assert hint["fired"] and hint["threshold"] == 0.0 and 0 <= hint["score"] <= 1
        assert hint["suggestion"]["advice"] and len(hint["suggestion"]["alternatives"]) >= 2
        for span in hint["evidence"]:
            assert PUSHY[span["start"]:span["end"]] == span["text"] and span["start"] < span["end"]
    overbearing = body["labels"]["overbearing"]
    assert overbearing["suggestion"]["situation"] == "customer-declined"
    rule_spans = [span for span in overbearing["evidence"] if "rules" in span["source"]]
    assert any("现在下单" in span["text"] for span in rule_spans)
    assert any("业绩" in span["text"] for span in rule_spans)


def test_quiet_labels_have_no_suggestion_or_evidence(quiet_model):
    with client_for(quiet_model) as quiet:
        body = quiet.post("/v1/hint", json={"context": DECLINED, "draft": PUSHY}).json()
    assert body["fired"] == []
    assert all(not h["fired"] and h["suggestion"] is None and h["evidence"] == [] for h in body["labels"].values())


def test_traditional_draft_gets_traditional_suggestions(client):
    simplified = client.post("/v1/hint", json={"context": DECLINED, "draft": PUSHY}).json()
    traditional = client.post("/v1/hint", json={"context": DECLINED, "draft": "親別猶豫啦，現在下單吧，我這個月業績還差一單"}).json()
    assert traditional["script"] == "traditional"
    before = simplified["labels"]["overbearing"]["suggestion"]
    after = traditional["labels"]["overbearing"]["suggestion"]
    assert after["situation"] == before["situation"]
    assert after["advice"] != before["advice"] and to_simplified(after["advice"]) == before["advice"]
    assert traditional["labels"]["overbearing"]["title"] != simplified["labels"]["overbearing"]["title"]


def test_very_long_context_is_cut_not_refused(client):
    context = [{"role": "customer" if i % 2 else "agent", "text": f"第{i}条消息，内容比较长，" * 5} for i in range(400)]
    response = client.post("/v1/hint", json={"context": context, "draft": PUSHY})
    assert response.status_code == 200 and response.json()["fired"] == list(LABELS)


def test_score_gives_exactly_the_records_of_the_cli(client, firing_model, tmp_path):
    conversations = [json.loads(line) for line in TINY_DATA.read_text().splitlines()] + [
        {"id": "no-agent", "turns": [{"role": "customer", "text": "在吗"}]},
        {"id": "bad-role", "turns": [{"role": "robot", "text": "x"}, {"role": "agent", "text": "y"}]},
        "just a string",
    ]
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(c, ensure_ascii=False) + "\n" for c in conversations), encoding="utf-8")
    assert main(["score", str(path), "-o", str(tmp_path / "out.jsonl"), "-q", "--model", str(firing_model)]) == 0
    from_cli = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    response = client.post("/v1/score", json={"conversations": conversations})
    assert response.status_code == 200
    assert response.json()["records"] == from_cli
    assert [r.get("error", "")[:15] for r in from_cli[-3:]] == ["no agent turn", "turn 0: unknown", "a conversation "]


@pytest.mark.parametrize("body, field", [
    ({"context": [{"role": "robot", "text": "你好"}], "draft": "好的"}, "context.0.role"),
    ({"context": [{"role": "customer", "text": "  "}], "draft": "好的"}, "context.0.text"),
    ({"context": [{"role": "customer", "text": "在吗", "ts": "昨天"}], "draft": "好的"}, "context.0.ts"),
    ({"context": []}, "draft"),
    ({"context": "not a list", "draft": "好的"}, "context"),
    ({"draft": "好的", "draft_ts": "2026-03-01T10:00:00"}, "draft_ts"),
])
def test_wrong_shapes_get_422_naming_the_field(client, body, field):
    response = client.post("/v1/hint", json=body)
    assert response.status_code == 422
    assert field in [problem["field"] for problem in response.json()["problems"]]
    assert response.json()["detail"].startswith(field) or f"; {field}:" in response.json()["detail"]


def test_malformed_json_gets_422_naming_the_body(client):
    for route in ("/v1/hint", "/v1/score"):
        response = client.post(route, content=b'{"draft": ', headers={"Content-Type": "application/json"})
        assert response.status_code == 422 and response.json()["problems"][0]["field"] == "body"
    response = client.post("/v1/score", json={"records": []})
    assert response.status_code == 422 and response.json()["problems"][0]["field"] == "conversations"


def test_text_json_cannot_carry_gets_a_4xx_or_an_error_record_never_a_500(client):
    cut_emoji = b'{"draft": "\\ud83d", "context": []}'
    hint = client.post("/v1/hint", content=cut_emoji, headers={"Content-Type": "application/json"})
    assert hint.status_code == 422 and "surrogate" in hint.json()["detail"]
    body = (b'{"conversations": [{"id": "cut", "turns": [{"role": "agent", "text": "\\ud83d"}]},'
            b' {"id": "nan", "meta": {"x": NaN}, "turns": [{"role": "agent", "text": "ok"}]},'
            b' {"id": "fine", "turns": [{"role": "agent", "text": "ok"}]}]}')
    response = client.post("/v1/score", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    cut, nan, fine = response.json()["records"]
    assert "surrogate" in cut["error"] and "NaN" in nan["error"] and "error" not in fine


def test_size_and_batch_limits_give_413(firing_model):
    with client_for(firing_model, max_body_bytes=2000, max_batch=2) as limited:
        big = limited.post("/v1/hint", json={"draft": "好" * 3000})
        assert big.status_code == 413 and "limit of 2000 bytes" in big.json()["detail"]
        streamed = limited.post("/v1/hint", content=iter([b'{"draft": "', b"x" * 1500, b"x" * 1500, b'"}']),
                                headers={"Content-Type": "application/json"})
        assert streamed.status_code == 413 and "--max-body-bytes" in streamed.json()["detail"]
        small_chunks = limited.post("/v1/hint", content=iter([b'{"draft": ', '"好的"}'.encode()]),
                                    headers={"Content-Type": "application/json"})
        assert small_chunks.status_code == 200
        conversation = {"id": "c", "turns": [{"role": "agent", "text": "好的"}]}
        assert limited.post("/v1/score", json={"conversations": [conversation] * 2}).status_code == 200
        too_many = limited.post("/v1/score", json={"conversations": [conversation] * 3})
        assert too_many.status_code == 413 and "batch limit of 2" in too_many.json()["detail"]


def test_a_full_queue_answers_429_at_once(firing_model):
    app = create_app(ServeSettings(model=str(firing_model), max_queue=0, inference_slots=1))
    hinter = app.state.hinter
    original, entered, release = hinter.hint, threading.Event(), threading.Event()

    def held(*args):
        entered.set()
        release.wait(30)
        return original(*args)

    hinter.hint = held
    with TestClient(app) as busy, ThreadPoolExecutor(1) as pool:
        first = pool.submit(busy.post, "/v1/hint", json={"draft": "好的"})
        assert entered.wait(30)
        refused = busy.post("/v1/hint", json={"draft": "好的"})
        release.set()
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
        assert first.result().status_code == 200
        assert busy.post("/v1/hint", json={"draft": "好的"}).status_code == 200


def test_a_failing_request_gets_500_and_the_server_goes_on_without_logging_text(firing_model, caplog):
    app = create_app(ServeSettings(model=str(firing_model)))

    def broken(context, draft, draft_ts=None):
        raise RuntimeError(f"could not handle {draft}")

    real, app.state.hinter.hint = app.state.hinter.hint, broken
    caplog.set_level(logging.DEBUG)
    with TestClient(app) as failing:
        response = failing.post("/v1/hint", json={"draft": "机密的草稿内容"})
        assert response.status_code == 500 and response.json() == {"detail": "internal error"}
        app.state.hinter.hint = real
        assert failing.post("/v1/hint", json={"draft": "好的"}).status_code == 200
    assert "RuntimeError" in caplog.text
    assert "机密的草稿内容" not in caplog.text


@pytest.mark.parametrize("debug", [False, True])
def test_transcript_text_reaches_the_logs_only_with_debug(firing_model, caplog, debug):
    caplog.set_level(logging.DEBUG)
    with client_for(firing_model, debug=debug) as logged:
        assert logged.post("/v1/hint", json={"context": [{"role": "customer", "text": "客户的原话甲乙丙"}],
                                             "draft": "草稿的原话丁戊己"}).status_code == 200
    assert "POST /v1/hint 200" in caplog.text
    assert "客户的原话甲乙丙" not in caplog.text
    assert ("草稿的原话丁戊己" in caplog.text) == debug


def test_bearer_token_guards_every_route_but_health(firing_model):
    with client_for(firing_model, token="s3cret") as guarded:
        assert guarded.get("/health").status_code == 200
        for method, route in [("get", "/info"), ("get", "/metrics"), ("get", "/"), ("get", "/docs"),
                              ("get", "/openapi.json"), ("get", "/static/console.js"), ("post", "/v1/hint"),
                              ("post", "/v1/score")]:
            refused = getattr(guarded, method)(route)
            assert refused.status_code == 401, route
            assert refused.headers["WWW-Authenticate"] == "Bearer"
        assert guarded.get("/info", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert guarded.get("/info", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert guarded.get("/info?token=s3cret").status_code == 401
        # The console page takes the token once in its address and keeps it in an HttpOnly cookie.
        page = guarded.get("/?token=s3cret")
        assert page.status_code == 200 and "HttpOnly" in page.headers["set-cookie"]
        assert guarded.post("/v1/hint", json={"draft": "好的"}).status_code == 200


def test_metrics_count_requests_errors_and_latency_per_route(firing_model):
    with client_for(firing_model) as measured:
        measured.post("/v1/hint", json={"draft": "好的"})
        measured.post("/v1/hint", json={"context": "bad"})
        measured.post("/v1/score", json={"conversations": ["not an object"]})
        response = measured.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'http_requests_total{handler="/v1/hint",method="POST",status="200"} 1.0' in text
    assert 'http_requests_total{handler="/v1/hint",method="POST",status="422"} 1.0' in text
    assert 'http_request_duration_seconds_bucket{handler="/v1/hint",le="0.05",method="POST"}' in text
    assert 'hengwen_score_conversations_total{outcome="error"} 1.0' in text
    assert "hengwen_hint_fired_total" in text and "hengwen_inference_admitted 0.0" in text


def test_docs_are_served_without_a_cdn_and_describe_the_models(client):
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger-ui-bundle.js" in docs.text and "cdn." not in docs.text
    schema = client.get("/openapi.json").json()
    assert {"/v1/hint", "/v1/score", "/health", "/info", "/metrics"} <= set(schema["paths"])
    models = set(schema["components"]["schemas"])
    assert {"HintRequest", "HintResponse", "Span", "ScoreRequest", "ScoreResponse"} <= models


def test_console_page_and_assets_are_local(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset in ("/static/console.js", "/static/console.css"):
        assert asset in page.text
        text = client.get(asset).text
        assert "http://" not in text and "https://" not in text
    assert "/v1/hint" in client.get("/static/console.js").text


def test_rule_engine_serves_the_same_interface():
    with TestClient(create_app(ServeSettings(engine="rules"))) as rules:
        assert rules.get("/info").json()["engine"] == "rules"
        body = rules.post("/v1/hint", json={"context": DECLINED, "draft": PUSHY}).json()
        assert body["fired"] == ["overbearing"]
        assert {"现在下单", "业绩"} <= {span["text"] for span in body["labels"]["overbearing"]["evidence"]}
        clean = rules.post("/v1/hint", json={"context": DECLINED, "draft": "好的，您慢慢看，有问题随时找我"}).json()
        assert clean["fired"] == []


def test_serve_command_hands_its_settings_to_uvicorn(monkeypatch):
    import uvicorn
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: calls.append((app, options)))
    monkeypatch.setenv("HENGWEN_TOKEN", "from-env")
    monkeypatch.delenv(SETTINGS_ENV, raising=False)
    assert main(["serve", "--engine", "rules", "--max-batch", "5", "--threads", "2"]) == 0
    (app, options), = calls
    assert app == "hengwen.serving.app:create_app_from_environment" and options["factory"]
    assert options["host"] == "127.0.0.1" and options["port"] == 8000 and options["access_log"] is False
    settings = ServeSettings.from_json(os.environ[SETTINGS_ENV])
    assert (settings.engine, settings.max_batch, settings.threads, settings.token) == ("rules", 5, 2, "from-env")
