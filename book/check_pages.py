"""Open every page of the built book in headless Chromium, as a reader would, and fail on what a reader
would notice: a JavaScript error in the console, an image that does not load or is blank, TeX left
unrendered in the visible text, or an absolute path of the building machine. A screenshot of each
page goes to ``_build/screenshots/`` for a reviewer.

The book is served from ``_build/html`` on the loopback interface (images read back through a canvas
must come from an http origin); Chromium runs with networking to the outside switched off, so a
page that needs the network (a CDN script) fails too.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import re
import shutil
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"

# Text a reader should never see: TeX delimiters or commands MathJax did not typeset, and paths of
# the machine that built the book.
RAW_TEX = re.compile(r"\\\(|\\\)|\\\[|\\\]|\$\$|\\(frac|mathrm|mathcal|varepsilon|operatorname|sum|left|right)\b")
LOCAL_PATH = re.compile(r"(?<![\w.])/(?:work|root|home|tmp|usr/share)/[\w.-]+")

# Console messages of the book's theme that a reader never notices, each with why it is harmless.
# Anything else in the console fails the page.
KNOWN_THEME_MESSAGES = {
    # sphinx-thebe's inline settings are emitted twice per page; the first copy defines them, and
    # thebe (live code in the page) is switched off in this book
    "Identifier 'THEBE_JS_URL' has already been declared",
    # pydata-sphinx-theme before the reader has picked light or dark: it falls back to "auto"
    "Got invalid theme mode: . Resetting to auto.",
    # the browser asks for /favicon.ico on its own; the book declares no icon
    "/favicon.ico - Failed to load resource",
}

# For each image: loaded, its natural size, and whether its pixels vary (a blank image is one colour).
IMAGE_REPORT = """
const report = [];
for (const image of document.images) {
  const entry = {src: image.currentSrc || image.src, complete: image.complete, width: image.naturalWidth,
                 height: image.naturalHeight, varied: null};
  if (image.complete && image.naturalWidth > 0 && !entry.src.endsWith('.svg')) {
    try {
      const canvas = document.createElement('canvas');
      canvas.width = Math.min(image.naturalWidth, 256);
      canvas.height = Math.min(image.naturalHeight, 256);
      const context = canvas.getContext('2d');
      context.drawImage(image, 0, 0, canvas.width, canvas.height);
      const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
      let varied = false;
      for (let i = 4; i < pixels.length && !varied; i += 4) {
        for (let c = 0; c < 3; c++) { if (pixels[i + c] !== pixels[c]) { varied = true; } }
      }
      entry.varied = varied;
    } catch (error) { entry.varied = 'unreadable: ' + error; }
  }
  report.push(entry);
}
return report;
"""


def serve(folder: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1600",
                 # the book must not need the network: anything but loopback is unreachable
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"),
                            options=options)


def check_page(driver, base: str, page: Path) -> list[str]:
    """The problems a reader would see on ``page`` (empty when it is fine); saves its screenshot."""
    from selenium.webdriver.support.ui import WebDriverWait

    relative = page.relative_to(HTML).as_posix()
    driver.get(f"{base}/{relative}")
    WebDriverWait(driver, 30).until(lambda d: d.execute_script("return document.readyState") == "complete")
    # MathJax typesets asynchronously: wait until it says it is done (pages without math have none)
    driver.execute_script("return window.MathJax && MathJax.startup && MathJax.startup.promise")
    WebDriverWait(driver, 30).until(lambda d: d.execute_script(
        "return !window.MathJax || !MathJax.startup || MathJax.startup.document.state() >= 10000"
        " || document.querySelectorAll('mjx-container').length > 0 || !document.querySelector('.math')"))
    problems = []
    for entry in driver.get_log("browser"):
        if entry["level"] == "SEVERE" and not any(known in entry["message"] for known in KNOWN_THEME_MESSAGES):
            problems.append(f"console error: {entry['message'][:300]}")
    for image in driver.execute_script(IMAGE_REPORT):
        if not image["complete"] or image["width"] == 0:
            problems.append(f"image does not load: {image['src']}")
        elif image["varied"] is False:
            problems.append(f"image is blank (one colour): {image['src']}")
        elif isinstance(image["varied"], str):
            problems.append(f"image cannot be read back: {image['src']} ({image['varied']})")
    text = driver.execute_script("return document.body.innerText")
    # code a reader reads as code may hold TeX in strings; everything else must be typeset
    prose = driver.execute_script("const body = document.body.cloneNode(true);"
                                  "body.querySelectorAll('.cell_input, .highlight').forEach(e => e.remove());"
                                  "return body.innerText")
    for match in sorted({m.group(0) for m in RAW_TEX.finditer(prose)}):
        problems.append(f"raw TeX in the visible text: {match!r}")
    for match in sorted({m.group(0) for m in LOCAL_PATH.finditer(text)}):
        problems.append(f"absolute local path in the visible text: {match!r}")
    SHOTS.mkdir(parents=True, exist_ok=True)
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1280, min(max(height, 800), 16000))
    driver.save_screenshot(str(SHOTS / (relative.replace("/", "__").removesuffix(".html") + ".png")))
    driver.set_window_size(1280, 1600)
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args()
    pages = sorted(p for p in HTML.rglob("*.html") if not p.relative_to(HTML).parts[0].startswith("_")
                   and p.name not in ("search.html", "genindex.html"))
    if not pages:
        raise SystemExit(f"no pages under {HTML.relative_to(ROOT)}: run make book first")
    server, base = serve(HTML)
    driver = browser()
    failures = {}
    try:
        for page in pages:
            problems = check_page(driver, base, page)
            name = page.relative_to(HTML).as_posix()
            print(f"{'ok  ' if not problems else 'FAIL'} {name}", flush=True)
            for problem in problems:
                print(f"     {problem}")
            if problems:
                failures[name] = problems
    finally:
        driver.quit()
        server.shutdown()
    print(f"{len(pages)} pages, {len(failures)} with problems; screenshots in {SHOTS.relative_to(ROOT)}/")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
