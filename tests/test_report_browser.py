"""The run report opens in a real browser: headless chromium loads and decodes every embedded
image at the PNG's own size.  Checking the HTML text (tests/test_report.py) cannot catch what
only a browser sees, such as a data URI it refuses or a PNG it cannot decode.

Skips when no chromium/chrome binary is on PATH; .ci/run installs Debian's chromium when it can.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shutil
import struct
import subprocess

import pytest
from test_report import make_run

from wm_jax.report import write_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
CHROMIUM = next((path for path in map(shutil.which, BROWSERS) if path), None)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no headless chromium/chrome on PATH (Debian: apt-get install chromium)",
)

# Runs at the page's load event, which fires only once every image has loaded or failed, so
# naturalWidth is final; the result goes into the DOM, where --dump-dom returns it.
PROBE = """<script>
window.addEventListener('load', function () {
  var report = Array.prototype.map.call(document.images, function (img) {
    return {alt: img.alt, complete: img.complete,
            width: img.naturalWidth, height: img.naturalHeight};
  });
  var out = document.createElement('pre');
  out.id = 'image-probe';
  out.textContent = JSON.stringify(report);
  document.body.appendChild(out);
});
</script>"""


def png_sizes(page: str) -> list[tuple[int, int]]:
    """(width, height) from the IHDR chunk of every embedded PNG, in page order."""
    sizes = []
    for data in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page):
        raw = base64.b64decode(data)
        sizes.append(struct.unpack(">II", raw[16:24]))
    return sizes


def images_in_browser(page: str, directory) -> list[dict]:
    """Opens ``page`` (the report plus the probe) in headless chromium; returns the probe's
    per-image record."""
    path = os.path.join(directory, "report_probe.html")
    with open(path, "w") as f:
        f.write(page.replace("</body>", PROBE + "</body>"))
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",  # CI runs as root, where the sandbox refuses to start
        "--disable-gpu",
        "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
        "--disable-quic",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        f"--user-data-dir={os.path.join(directory, 'chromium-profile')}",
        # Virtual time: the dump waits until the page is idle (at most this many virtual ms).
        "--virtual-time-budget=10000",
        "--dump-dom",
        "file://" + os.path.abspath(path),
    ]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{CHROMIUM} did not finish within 120 s")
    match = re.search(r'<pre id="image-probe">(.*?)</pre>', result.stdout, flags=re.S)
    assert match, (
        f"{CHROMIUM} exited {result.returncode} without the probe's result; "
        f"stderr tail:\n{result.stderr[-2000:]}"
    )
    return json.loads(html.unescape(match.group(1)))


@pytest.mark.slow
def test_every_report_image_loads_at_its_png_size_in_headless_chromium(tmp_path):
    run = str(tmp_path / "run")
    make_run(run, nan_at=6)  # every figure, open-loop plots and a finding included
    path = write_report(run)
    with open(path) as f:
        page = f.read()
    expected = png_sizes(page)
    assert len(expected) == 7
    images = images_in_browser(page, os.path.dirname(path))
    assert len(images) == len(expected)
    for img, (width, height) in zip(images, expected, strict=True):
        assert img["complete"] and img["width"] > 0, f"{img['alt']} did not load: {img}"
        assert (img["width"], img["height"]) == (width, height), img


@pytest.mark.slow
def test_browser_check_reports_an_image_that_cannot_be_decoded(tmp_path):
    """The check can fail: a PNG cut short after its header does not load."""
    run = str(tmp_path / "run")
    make_run(run, with_open_loop=False)
    with open(write_report(run)) as f:
        page = f.read()
    first = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page).group(1)
    truncated = base64.b64encode(base64.b64decode(first)[:64]).decode("ascii")
    images = images_in_browser(page.replace(first, truncated, 1), str(tmp_path))
    assert [img["width"] > 0 for img in images] == [False, True, True, True, True]
