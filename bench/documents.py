"""Benchmark: what a node costs on top of the document and OCR libraries.

The same inputs, made here (a PDF of N pages of prose and a ruled table
each; PNGs of several lines of text), through a real `gpubus cpu-node`
(upload through the gateway, queue, fetch, convert or OCR, store the
result, record succeeded) against the libraries alone in this process:
the document engine (`processors.documents.convert`: pypdfium2 for the text,
pdfplumber for the tables; the node runs exactly this) and bare RapidOCR
(rapidocr-onnxruntime on the image file). Bare and node runs alternate, so
drift on a shared machine hits both alike. Throughput: pages per second for
documents, images per second for OCR, over a batch of jobs submitted at once.

    python -m bench.documents [--pages 40] [--images 6] [--jobs 3] [--rounds 2]
"""

from __future__ import annotations

import time
from pathlib import Path

from bench import common
from processors import documents
from testkit import document_files
from testkit.harness import submit_file, wait_job

PROSE = (
    "Remote workers pull jobs from the queue and acknowledge them when the work is done; "
    "a worker that stops sending progress loses its lease and the job goes to another one."
)
OCR_LINES = [
    "Invoice 4217 for graphics cards",
    "Delivered to the north warehouse",
    "Paid in full on the third of May",
    "Questions: call the front desk",
    "Thank you for your business",
    "Reference GPU-BUS-2026",
]


def make_pdf(path: Path, pages: int) -> Path:
    """`pages` pages of prose and a ruled table each: text and tables both cost."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=10)
    for number in range(1, pages + 1):
        pdf.add_page()
        pdf.multi_cell(w=0, text=f"Page {number}. " + " ".join([PROSE] * 6))
        pdf.ln(5)
        with pdf.table() as table:
            for row in [("Node", "Jobs", "Pages")] + [(f"cpu-{number}-{i}", str(i), str(10 * i)) for i in range(8)]:
                cells = table.row()
                for value in row:
                    cells.cell(value)
    pdf.output(str(path))
    return path


class BareOcr:
    """rapidocr-onnxruntime alone, on the file, as its README shows it."""

    def __init__(self) -> None:
        from rapidocr_onnxruntime import RapidOCR

        self.ocr = RapidOCR()

    def run(self, paths: list[Path]) -> float:
        t0 = time.perf_counter()
        for path in paths:
            found, _ = self.ocr(str(path))
            assert found, f"bare RapidOCR found no text in {path.name}"
        return time.perf_counter() - t0


def bare_documents(paths: list[Path]) -> float:
    t0 = time.perf_counter()
    for path in paths:
        assert documents.convert(path, documents.DocumentLimits()).tables, "the engine found no table"
    return time.perf_counter() - t0


def through_node(c, paths: list[Path]) -> tuple[float, float]:
    """Submit all, wait for all: (wall seconds from the first upload, the
    node's own processing seconds for those jobs)."""
    t0 = time.perf_counter()
    jobs = [submit_file(c, p)["job_id"] for p in paths]
    work_s = 0.0
    for job_id in jobs:
        final = wait_job(c, job_id, timeout_s=1800)
        assert final["status"] == "succeeded", final
        work_s += final["summary"]["processing_s"]
    return time.perf_counter() - t0, work_s


def compare(
    rep: common.Report, c, label: str, unit: str, batch: list[Path], units: int, bare, rounds: int
) -> tuple[float, float]:
    """Alternate bare and node over `batch` (`units` pages or images in all):
    (node / bare throughput, the node's engine seconds / its wall seconds).
    The second is taken inside one process at one time, so it is immune to
    the drift of a shared machine that moves the first."""
    bare_s = node_s = work_s = 0.0
    for _ in range(rounds):
        bare_s += bare(batch)
        wall, work = through_node(c, batch)
        node_s, work_s = node_s + wall, work_s + work
    bare_tp, node_tp = units * rounds / bare_s, units * rounds / node_s
    rep.row(f"bare library, {label}", **{f"{unit}_per_s": bare_tp})
    rep.row(f"gpubus node, {label}", **{f"{unit}_per_s": node_tp, "engine_share_of_wall": work_s / node_s})
    return node_tp / bare_tp, work_s / node_s


def main() -> int:
    p = common.base_parser(__doc__.split("\n\n")[0])
    p.add_argument("--pages", type=int, default=40, help="pages of each PDF")
    p.add_argument("--images", type=int, default=6, help="images per OCR batch")
    p.add_argument("--jobs", type=int, default=3, help="PDFs per batch")
    p.add_argument("--rounds", type=int, default=2, help="bare/node alternations")
    args = p.parse_args()
    rep = common.Report("documents")
    with common.workdir(args.workdir) as root:
        pdf = make_pdf(root / "report.pdf", args.pages)
        pngs = [document_files.text_png(root / f"scan{i}.png", OCR_LINES) for i in range(args.images)]
        print(f"documents: {args.jobs} x {args.pages}-page PDF per batch; {args.images} images per batch", flush=True)
        bare_ocr = BareOcr()
        with (
            common.nats_server(root, sync=args.nats_sync) as server,
            common.gateway(server, root, max_upload_mb=256) as gw,
        ):
            key = gw.create_key("bench")
            with common.nodes(gw, 1, key=key, name="docs") as _, gw.client(key) as c:
                through_node(c, [pdf, pngs[0]])  # warm the node (its OCR engine loads at the first image)
                bare_documents([pdf])
                bare_ocr.run(pngs[:1])
                doc_ratio, doc_share = compare(
                    rep, c, f"{args.pages}-page PDFs", "pages", [pdf] * args.jobs, args.pages * args.jobs,
                    bare_documents, args.rounds,
                )  # fmt: skip
                ocr_ratio, ocr_share = compare(
                    rep, c, "PNG images", "images", pngs, len(pngs), bare_ocr.run, args.rounds
                )
    for what, share in (("documents", doc_share), ("OCR", ocr_share)):
        rep.ratio(
            f"node's engine seconds / its wall seconds, {what}",
            share,
            target="(reported; 1 = no bus overhead)",
            ok=None,
        )
    rep.ratio("node / bare documents throughput (pages/s)", doc_ratio, target=">= 0.95", ok=doc_ratio >= 0.95)
    rep.ratio("node / bare OCR throughput (images/s)", ocr_ratio, target=">= 0.95", ok=ocr_ratio >= 0.95)
    return rep.finish(args.json)


if __name__ == "__main__":
    common.run_main(main)
