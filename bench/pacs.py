"""Hospital-integration latency: time from the last instance our DICOM node receives to the SR
stored in Orthanc, for a 6-image study (the synthetic cohort's T1+T2 at three discs) and for a
200-slice axial series.

A throw-away Orthanc (tests/orthanc.py) and the node (in this process, model loaded once) run
on 127.0.0.1. Each study is uploaded to Orthanc over REST and sent to the node by Orthanc
(`/modalities/lumbarclip/store`); the node records when its last instance arrived and when
Orthanc acknowledged the SR's C-STORE (the SR is then stored), and the SR is checked in Orthanc.
The figure includes the node's quiet time (--quiet), which is also reported subtracted.

    python bench/pacs.py --model MODEL_DIR [--quiet 3.0] [--repeats 3] [--size 128]
        [--screenshot docs/pacs-sr.png]

--screenshot saves the 6-image study's SR as Orthanc's web UI (Orthanc Explorer) shows it, with
its content tree opened, taken with headless Chromium (/usr/bin/chromium driven by Playwright,
which can click the tree open), cropped and palette-reduced to stay small.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from orthanc import NODE_AET, ORTHANC_AET, OrthancServer, find_orthanc  # noqa: E402

from lumbarclip.pacs.analyse import StudyAnalyser  # noqa: E402
from lumbarclip.pacs.node import Destination, NodeConfig, PacsNode, send_datasets  # noqa: E402
from lumbarclip.synth.cohort import CohortConfig, make_cohort  # noqa: E402


def six_image_study(folder: Path, size: int) -> list[Path]:
    make_cohort(folder, CohortConfig(n_patients=1, size=size, fmt="dicom"), progress=False)
    return sorted((folder / "images").glob("*.dcm"))


def long_series(six: list[Path], folder: Path, n: int = 200, step_mm: float = 1.0) -> list[Path]:
    """An axial T2 stack of `n` slices 1 mm apart through the three discs (cohort pixels,
    geometry of a real acquisition), in a new study."""
    t2 = [pydicom.dcmread(f) for f in six if f.name.startswith("T2_")]
    study, series = generate_uid(), generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        ds = copy.deepcopy(t2[min(i * len(t2) // n, len(t2) - 1)])
        z = -i * step_mm  # superior to inferior
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        ds.ImagePositionPatient = [0.0, 0.0, z]
        ds.SliceLocation = z
        ds.SeriesDescription = "T2 axial lumbar (synthetic 200-slice stack)"
        path = folder / f"slice_{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


#: Opens the SR's ContentSequence in Orthanc Explorer's tag tree (not the UID reference lists).
_OPEN_CONTENT_TREE = """() => {
  const title = li => li.querySelector(':scope > div .title').textContent;
  const top = [...document.querySelectorAll('#dicom-tree > ul > li.folder')]
    .find(li => title(li).includes('(ContentSequence)'));
  const skip = /(ReferencedSOPSequence|CurrentRequested|ContentTemplate)/;
  const open = li => {
    const toggler = li.querySelector(':scope > div > a.toggler');
    if (toggler && toggler.classList.contains('closed')) toggler.click();
    for (const child of li.querySelectorAll(':scope > ul > li.folder'))
      if (!skip.test(title(child))) open(child);
  };
  open(top);
}"""


def screenshot(url: str, path: Path, height: int = 2500, width: int = 1100) -> None:
    """Orthanc Explorer's page of one SR instance, tree opened, top `height` px, < 300 KB."""
    from PIL import Image
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw, tempfile.TemporaryDirectory() as tmp:
        browser = pw.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": width, "height": 1200})
        page.goto(url)
        page.wait_for_selector("#dicom-tree li.folder")
        page.evaluate(_OPEN_CONTENT_TREE)
        page.wait_for_timeout(300)
        page.screenshot(path=f"{tmp}/full.png", full_page=True)
        browser.close()
        image = Image.open(f"{tmp}/full.png").convert("RGB")
        image = image.crop((0, 0, width, min(height, image.height)))
        image = image.resize((width * 3 // 4, image.height * 3 // 4), Image.LANCZOS)
        path.parent.mkdir(parents=True, exist_ok=True)
        image.quantize(colors=48).save(path, optimize=True)
    print(f"screenshot {path} ({path.stat().st_size / 1024:.0f} KB)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model folder with an operating point")
    parser.add_argument("--quiet", type=float, default=3.0, help="node quiet time in seconds (default 3)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=128, help="phantom image size (default 128)")
    parser.add_argument("--screenshot", type=Path, help="save the SR in Orthanc's web UI as this PNG")
    args = parser.parse_args()
    binary, plugin = find_orthanc()
    if not (binary and plugin):
        sys.exit("needs Orthanc and its DICOMweb plugin: apt-get install orthanc orthanc-dicomweb")

    t0 = time.perf_counter()
    analyser = StudyAnalyser.load(args.model)
    print(f"model loaded in {time.perf_counter() - t0:.1f} s")
    server = OrthancServer(binary, plugin)
    with tempfile.TemporaryDirectory() as tmp:
        six = six_image_study(Path(tmp) / "six", args.size)
        studies = {"6-image study": six, "200-slice series": long_series(six, Path(tmp) / "long")}
        dest = Destination("127.0.0.1", server.dicom_port, ORTHANC_AET)
        config = NodeConfig(NODE_AET, "127.0.0.1", server.node_port, args.quiet, Path(tmp) / "work")
        node = PacsNode(config, analyser, lambda ds: send_datasets(ds, dest, NODE_AET)).start()
        try:
            ids = {name: server.upload(files) for name, files in studies.items()}

            def n_reports(name: str) -> int:
                return sum(len(s["Instances"]) for s in server.series_of(ids[name], "SR"))

            def once(name: str) -> float:
                n_before, reports_before = len(node.records), n_reports(name)
                server.send_to_node(ids[name])
                if not node.wait_idle(600, n_records=n_before + 1):
                    sys.exit(f"{name}: no result within 600 s")
                record = node.records[-1]
                if not record.ok:
                    sys.exit(f"{name}: failed: {record.error}")
                if n_reports(name) != reports_before + 1 or record.n_instances != len(studies[name]):
                    sys.exit(f"{name}: {record.n_instances} instances received, SR not stored in Orthanc")
                return record.finished - record.last_received

            cold = once("6-image study")  # pays the one-time costs (e.g. the findings prompts)
            rows = [(name, len(files), [once(name) for _ in range(args.repeats)]) for name, files in studies.items()]
            if args.screenshot:
                sr = server.series_of(ids["6-image study"], "SR")[0]["Instances"][-1]
                screenshot(f"{server.url}/app/explorer.html#instance?uuid={sr}", args.screenshot)
        finally:
            node.stop()
            server.stop()
    print(f"\nfirst study after start (cold): {cold:.2f} s")
    print(f"last instance received -> SR stored in Orthanc (quiet time {args.quiet:.1f} s included; "
          f"{args.repeats} repeats, median [min-max])")
    for name, n, lat in rows:
        med = statistics.median(lat)
        print(f"{name:18s} {n:4d} instances  {med:6.2f} s [{min(lat):.2f}-{max(lat):.2f}]"
              f"   without quiet time {med - args.quiet:6.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
