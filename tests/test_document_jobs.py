"""Documents, web pages and images as jobs, end to end: real NATS, gateway
and nodes, inputs made at test time (tests/document_files.py), an HTML page
served on 127.0.0.1 to a node that may fetch private URLs."""

from __future__ import annotations

import time
import uuid

import pytest

from gateway import url_kinds
from schemas.events import EventType
from tests import busreader
from tests import document_files as files
from tests.harness import TESTDATA, Gateway, start_node, stop_all, submit_file, wait_job, wait_until, words
from tests.media_server import MediaServer
from tests.test_cli import env_for
from tests.test_up_and_cli import cli
from tests.test_web_page import ARTICLE

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def owner() -> str:
    return f"docs-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def nodes(gateway, owner):
    """The owner's CPU node (private URLs allowed: the page is on 127.0.0.1)
    and GPU node (on the CPU: no GPU here, and no docling's weights)."""
    key = gateway.create_key(owner)
    cpu = start_node(gateway, "cpu", key=key, name=f"cpu-{owner}", allow_private_urls="true")
    gpu = start_node(gateway, "gpu", key=key, name=f"gpu-{owner}")
    wait_until(
        lambda: {n["lane"] for n in gateway.live_nodes() if n["owner"] == owner} == {"cpu", "gpu"},
        timeout_s=30,
        what="both heartbeats",
    )
    yield key, cpu, gpu
    stop_all([cpu, gpu])


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    (root / "article.html").write_text(ARTICLE)
    srv = MediaServer(root).start()
    yield srv
    srv.stop()


def _result(c, job_id: str, fmt: str = "json"):
    r = c.get(f"/api/v1/jobs/{job_id}/result", params={"format": fmt})
    assert r.status_code == 200, r.text
    return r.json() if fmt == "json" else r.text


def test_nodes_advertise_the_kinds_by_lane(gateway, owner, nodes):
    kinds = {n["lane"]: set(n["kinds"]) for n in gateway.live_nodes() if n["owner"] == owner}
    # A CPU node serves all three; a GPU node OCRs, but converts documents
    # only with docling's weights (not here) and never fetches web pages
    assert {"document", "web", "image"} <= kinds["cpu"], kinds
    assert "image" in kinds["gpu"] and not {"document", "web"} & kinds["gpu"], kinds


def test_pdf_with_pages_and_a_table_runs_on_cpu_saying_why(gateway, owner, nodes, tmp_path):
    key, _, _ = nodes
    pdf = files.pdf_3_pages(tmp_path / "report.pdf")
    with gateway.client(key) as c:
        # When a PDF is submitted asking for a GPU
        job = submit_file(c, pdf, gpu=True)
        # Then it goes to the owner's CPU node, and the record says why
        assert (job["lane"], job["routed_reason"]) == ("cpu", "no_gpu_document_engine"), job
        final = wait_job(c, job["job_id"])
        assert final["status"] == "succeeded" and final["kind"] == "document", final
        assert final["node_id"].startswith("cpu-") and final["summary"]["pages"] == 3, final
        result = _result(c, job["job_id"])
        assert [p["number"] for p in result["pages"]] == [1, 2, 3]
        for page, known in zip(result["pages"], files.PDF_PAGE_WORDS, strict=True):
            assert set(known) <= words(page["text"]), page
        assert result["title"] == "Quarterly Report" and result["engine"] == "pypdfium2+pdfplumber"
        assert len(result["tables"]) == 1 and "Mango" in result["tables"][0]
        md = _result(c, job["job_id"], "md")
        assert md.startswith("# Quarterly Report") and "| Mango | 12 |" in md, md
        assert {"charlie", "cherry", "kiwi"} <= words(_result(c, job["job_id"], "text"))
        assert c.get(f"/api/v1/jobs/{job['job_id']}/result?format=srt").status_code == 422
    # And its progress was reported in pages, up to 3 of 3
    pages = [
        (e.pages_done, e.pages_total)
        for e in busreader.events(gateway.nats_url, owner)
        if e.job_id == job["job_id"] and e.type == EventType.PROGRESS
    ]
    assert pages and pages[-1] == (3, 3), pages


def test_docx_with_headings_and_a_table(gateway, nodes, tmp_path):
    key, _, _ = nodes
    docx = files.docx_with_headings(tmp_path / "guide.docx")
    with gateway.client(key) as c:
        job = submit_file(c, docx)
        final = wait_job(c, job["job_id"])
        assert final["status"] == "succeeded", final
        result = _result(c, job["job_id"])
        assert result["source_format"] == "docx" and result["engine"] == "markitdown"
        assert {"level": 1, "text": "Field Guide"} in result["headings"]
        assert {"level": 2, "text": "Habitat"} in result["headings"]
        assert len(result["tables"]) == 1 and "Kiwi" in result["tables"][0]
        assert {"owls", "herons", "mango"} <= words(result["text"])
        assert "## Habitat" in _result(c, job["job_id"], "md")


def test_web_page_fetched_by_the_node_with_the_owners_cookies(gateway, nodes, site):
    key, _, _ = nodes
    cookie = "127.0.0.1\tFALSE\t/\tFALSE\t0\tsession\tmoth-lover\n"
    with gateway.client(key) as c:
        # Given the owner's cookie file
        r = c.put("/api/v1/auth/cookies", content=f"# Netscape HTTP Cookie File\n{cookie}".encode())
        assert r.status_code == 200, r.text
        # When a page on 127.0.0.1 is submitted as a web job
        r = c.post("/api/v1/jobs", json={"url": site.url("article.html"), "kind": "web", "gpu": True})
        assert r.status_code == 202, r.text
        job = r.json()
        assert (job["lane"], job["routed_reason"]) == ("cpu", "kind_not_gpu_beneficial"), job
        assert wait_job(c, job["job_id"])["status"] == "succeeded"
        # Then its main text and metadata come back, menus and footer gone
        result = _result(c, job["job_id"])
        assert (result["title"], result["author"], result["language"]) == ("Moths at Night", "Ada Lovelace", "en")
        assert result["url"] == site.url("article.html") and result["links_count"] >= 1
        assert "thermal radiation" in result["text"] and "newsletter" not in result["text"]
        md = _result(c, job["job_id"], "md")
        assert "# Moths at Night" in md and "- author: Ada Lovelace" in md, md
    # And the node sent the owner's cookie with its request
    assert site.cookies_for("article.html") == ["session=moth-lover"]


def test_a_bare_page_url_is_read_as_a_web_page(gateway, nodes, site):
    # Given a URL sent without a kind, of a page (no media site, no media file)
    key, _, _ = nodes
    with gateway.client(key) as c:
        r = c.post("/api/v1/jobs", json={"url": site.url("article.html")})
        assert r.status_code == 202, r.text
        # Then it is a web job, and the page's text comes back
        job = c.get(f"/api/v1/jobs/{r.json()['job_id']}").json()
        assert job["kind"] == "web", job
        assert wait_job(c, job["job_id"])["status"] == "succeeded"
        assert "thermal radiation" in _result(c, job["job_id"])["text"]


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("https://www.youtube.com/watch?v=dQw4w9WgXcQ", "url"),
        ("https://vimeo.com/76979871", "url"),
        ("https://example.com/episodes/42.mp3", "url"),
        ("http://127.0.0.1:8000/talk.WAV?sig=1", "url"),
        ("https://en.wikipedia.org/wiki/NATS_Messaging", "web"),
        ("https://example.com/blog/post", "web"),
    ],
)
def test_a_url_without_a_kind_is_media_only_for_media_sites_and_files(url, kind):
    assert url_kinds.kind_of_url(url) == kind


def test_png_ocr_on_the_owners_gpu_node(gateway, nodes, tmp_path):
    key, _, _ = nodes
    png = files.text_png(tmp_path / "note.png")
    with gateway.client(key) as c:
        # When an image is submitted asking for a GPU
        job = submit_file(c, png, gpu=True)
        # Then the owner's GPU node (here on its CPU) reads it
        assert (job["lane"], job["routed_reason"]) == ("gpu", "gpu_requested"), job
        final = wait_job(c, job["job_id"], timeout_s=90)
        assert final["status"] == "succeeded" and final["node_id"].startswith("gpu-"), final
        result = _result(c, job["job_id"])
        expected = {w.lower() for line in files.OCR_LINES for w in line.split()}
        found = words(result["text"])
        assert len(expected & found) >= 0.9 * len(expected), (expected - found, result["text"])
        (page,) = result["pages"]
        assert len(page["lines"]) == 3 and all(len(ln["box"]) == 4 and ln["confidence"] > 0.5 for ln in page["lines"])
        assert page["lines"][0]["text"].lower().startswith("the quick")  # reading order
        assert _result(c, job["job_id"], "md").startswith("# Recognised text")


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda d: files.encrypted_pdf(d / "locked.pdf", files.pdf_3_pages(d / "src.pdf")), "DOCUMENT_ENCRYPTED"),
        (lambda d: files.truncated(d / "cut.pdf", files.pdf_3_pages(d / "src.pdf")), "DECODE_FAILED"),
        (lambda d: files.pixel_bomb_png(d / "bomb.png"), "IMAGE_TOO_LARGE"),
        (
            lambda d: files.zip_bomb_docx(
                d / "bomb.docx", files.docx_with_headings(d / "src.docx"), expanded_bytes=400 * 2**20
            ),
            "ARCHIVE_TOO_LARGE",
        ),
    ],
    ids=["encrypted-pdf", "truncated-pdf", "pixel-bomb", "zip-bomb"],
)
def test_hostile_input_fails_fast_with_its_code_and_the_node_goes_on(gateway, nodes, tmp_path, make, code):
    key, cpu, _ = nodes
    bad = make(tmp_path)
    with gateway.client(key) as c:
        # When a hostile file is submitted
        t0 = time.monotonic()
        job = submit_file(c, bad)
        failed = wait_job(c, job["job_id"], timeout_s=30)
        # Then it fails with its own code within seconds
        assert failed["status"] == "failed" and failed["error"]["code"] == code, failed
        assert time.monotonic() - t0 < 10
        # And the node is up and takes the next job
        nxt = c.post("/api/v1/jobs", json={"kind": "document", "text": "after the storm, calm"})
        assert nxt.status_code == 202, nxt.text
        assert wait_job(c, nxt.json()["job_id"])["status"] == "succeeded"
    assert cpu.alive()


def test_a_kind_no_live_node_serves_is_422(fresh_nats, tmp_path):
    # Given a gateway with no node at all
    gw = Gateway.on(fresh_nats, tmp_path).start()
    try:
        key = gw.create_key("lonely")
        with gw.client(key) as c:
            # When a PDF, an image and a web page are submitted
            pdf = c.post("/api/v1/jobs", files={"file": ("a.pdf", files.pdf_3_pages(tmp_path / "a.pdf").read_bytes())})
            png = c.post("/api/v1/jobs", files={"file": ("a.png", files.text_png(tmp_path / "a.png").read_bytes())})
            web = c.post("/api/v1/jobs", json={"url": "https://example.org/a.html", "kind": "web"})
            # Then each is refused at once, naming what is served (nothing)
            for r in (pdf, png, web):
                assert r.status_code == 422, r.text
                assert r.json()["error"]["code"] == "KIND_NOT_SERVED", r.text
                assert "no live node" in r.json()["error"]["message"]
            # While speech may still wait in its queue for a node
            assert submit_file(c, TESTDATA / "hello.wav")["lane"] == "cpu"
            assert [j["kind"] for j in c.get("/api/v1/jobs").json()["jobs"]] == ["audio"]
    finally:
        gw.stop()


def test_cli_submits_a_pdf_and_a_web_page_and_prints_markdown(gateway, nodes, site, tmp_path):
    key, _, _ = nodes
    env = env_for(gateway, key, tmp_path)
    pdf = files.pdf_3_pages(tmp_path / "report.pdf")
    # When the CLI submits a PDF and waits for Markdown
    r = cli("submit", str(pdf), "--wait", "--format", "md", env=env)
    # Then the document's Markdown is printed, table included
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("# Quarterly Report") and "| Kiwi | 7 |" in r.stdout, r.stdout
    assert "queued on cpu (no_gpu_document_engine)" in r.stderr, r.stderr
    # And a URL with --kind web is read as a page, not downloaded as media
    r = cli("submit", site.url("article.html"), "--kind", "web", "--wait", "--format", "text", env=env)
    assert r.returncode == 0, r.stderr
    assert "porch lamp" in r.stdout and "newsletter" not in r.stdout, r.stdout


def test_the_openapi_document_names_the_kinds_and_their_formats(gateway):
    with gateway.client(None) as c:
        spec = c.get("/openapi.json").json()
    submit = spec["paths"]["/api/v1/jobs"]["post"]["description"]
    assert all(k in submit for k in ("`document`", "`image`", '"kind": "web"', "KIND_NOT_SERVED")), submit
    [fmt] = [p for p in spec["paths"]["/api/v1/jobs/{job_id}/result"]["get"]["parameters"] if p["name"] == "format"]
    assert "document, web, image: md, text" in fmt["description"], fmt


def test_the_older_api_processes_a_pdf_synchronously(gateway, nodes, tmp_path):
    key, _, _ = nodes
    pdf = files.pdf_3_pages(tmp_path / "report.pdf")
    with gateway.client(key) as c:
        # When the older API's synchronous endpoint gets a PDF, asking for Markdown
        r = c.post("/process/file", files={"file": ("report.pdf", pdf.read_bytes())}, data={"format": "md"})
        # Then it answers with the document's Markdown, as it did for transcripts
        assert r.status_code == 200, r.text
        assert r.text.startswith("# Quarterly Report") and "| Mango | 12 |" in r.text and r.headers["x-gpubus-job-id"]
        r = c.post("/process/file", files={"file": ("report.pdf", pdf.read_bytes())}, data={"format": "json"})
        assert r.status_code == 200 and len(r.json()["result"]["pages"]) == 3, r.text


# The routing rule without processes: the seeds' content rule, seen through the fleet.


@pytest.mark.parametrize(
    ("kind", "gpu_kinds", "gpu", "lane", "reason"),
    [
        ("image", {"audio", "image"}, True, "gpu", "gpu_requested"),
        ("image", {"audio", "image"}, False, "cpu", "gpu_not_requested"),
        ("image", {"audio"}, True, "cpu", "kind_not_served_on_gpu"),  # a GPU node without the OCR engine
        ("document", {"audio", "image"}, True, "cpu", "no_gpu_document_engine"),
        ("document", {"audio", "image", "document"}, True, "gpu", "gpu_requested"),  # docling's weights there
        ("web", {"audio", "image"}, True, "cpu", "kind_not_gpu_beneficial"),
    ],
)
async def test_content_routing(kind, gpu_kinds, gpu, lane, reason):
    from bus.settings import GpuMode
    from gateway.routing import Fleet, choose

    async def backlog() -> int:
        return 0

    every = frozenset({"audio", "video", "url", "document", "web", "image"})
    fleet = Fleet(True, True, backlog, gpu_kinds=frozenset(gpu_kinds), cpu_kinds=every, shared_kinds=every)
    route = await choose("alice", kind, gpu, GpuMode.OPTIONAL, fleet, max_backlog=10)
    assert (route.lane, route.queue_owner, route.reason) == (lane, "alice", reason)
