"""The OpenAPI document names every upload's multipart body, and /docs
(Swagger UI from this machine, never a CDN) uploads a file with it, in a
real browser under the page's CSP."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
import pytest

from tests.harness import TESTDATA

pytestmark = pytest.mark.timeout(180)

UPLOADS = {
    "/api/v1/jobs": ("file", {"kind", "gpu", "options"}),
    "/process/file": ("file", {"format", "timeout", "language", "vad_filter"}),
    "/api/v1/ingest/file": ("file", {"options", "model"}),
    "/v1/audio/transcriptions": ("file", {"model", "response_format", "timestamp_granularities[]", "vad_filter"}),
    "/v1/audio/translations": ("file", {"model", "response_format", "prompt"}),
    "/asr": ("audio_file", set()),
    "/detect-language": ("audio_file", set()),
}


def test_every_upload_endpoint_documents_its_form(gateway):
    doc = httpx.get(f"{gateway.url}/openapi.json").json()
    for path, (file_field, fields) in UPLOADS.items():
        body = doc["paths"][path]["post"]["requestBody"]
        form = body["content"]["multipart/form-data"]["schema"]
        assert form["properties"][file_field]["format"] == "binary" and file_field in form["required"], path
        assert fields <= set(form["properties"]), (path, sorted(form["properties"]))
    asr = {p["name"] for p in doc["paths"]["/asr"]["post"]["parameters"]}
    assert {"task", "language", "output", "encode", "word_timestamps", "vad_filter", "initial_prompt"} <= asr
    assert "api_key" in asr and doc["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"


def test_docs_uploads_a_file_from_this_origin_only(gateway, shared_cpu_node, user, browser):
    key = gateway.create_key(user)
    page = browser.new_page()
    origins, problems = set(), []
    page.on("request", lambda r: origins.add(urlsplit(r.url).netloc))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    r = page.goto(f"{gateway.url}/docs")
    assert r is not None and "script-src 'self'" in r.headers["content-security-policy"]
    # Given the key entered under Authorize
    page.get_by_role("button", name="Authorize").first.click()
    page.locator("#auth-bearer-value").fill(key)
    page.get_by_role("button", name="Apply credentials").click()
    page.locator(".modal-ux button.btn-done").click()
    # When a file is uploaded through the OpenAI-compatible operation
    op = page.locator("#operations-openai-transcriptions_v1_audio_transcriptions_post")
    op.locator(".opblock-summary").click()
    op.get_by_role("button", name="Try it out").click()
    op.locator("input[type=file]").first.set_input_files(str(TESTDATA / "hello.wav"))
    assert op.locator("tr[data-property-name=model] input").input_value() == "whisper-1"
    op.get_by_role("button", name="Execute").click()
    # Then the transcript comes back, and nothing was loaded from elsewhere
    answer = op.locator(".live-responses-table .response-col_description")
    answer.filter(has_text="weather").first.wait_for(timeout=120_000)
    assert origins == {urlsplit(gateway.url).netloc}, origins
    assert not [p for p in problems if "Content Security Policy" in p], problems
    page.close()
