"""Screenshot of the demo page with real images, for the README.

    python scripts/demo_screenshot.py --model savedmodels/classifier/classifier.keras \
        --images IMAGE [IMAGE ...] --out docs/demo.png [--segmenter PATH]

Starts the demo app on a free port, uploads the images through headless Chromium (Debian's
chromium and chromium-driver), waits for the results and saves the page. Prints the seconds each
image took on the server.
"""

from __future__ import annotations

import argparse
import os
import shutil
import threading


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--segmenter", default=None)
    parser.add_argument("--images", nargs="+", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from werkzeug.serving import make_server

    from braintumor_tf.api import load
    from braintumor_tf.demo.app import create_app

    threads = os.cpu_count() or 1  # as braintumor-tf demo loads them
    app = create_app(load(args.model, num_threads=threads),
                     load(args.segmenter, num_threads=threads) if args.segmenter else None)
    server = make_server("127.0.0.1", 0, app)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1100,1500"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options,
                               service=webdriver.ChromeService(shutil.which("chromedriver")))
    try:
        browser.get(f"http://127.0.0.1:{server.server_port}/")
        browser.find_element(By.ID, "files").send_keys("\n".join(os.path.abspath(p) for p in args.images))
        WebDriverWait(browser, 300).until(lambda b: b.find_element(By.ID, "status")
                                          .get_attribute("data-done") == str(len(args.images)))
        for box in browser.find_elements(By.CSS_SELECTOR, "#results .result"):
            print(box.text.splitlines()[0], "|", box.text.splitlines()[-1])
        height = browser.execute_script("return document.body.scrollHeight")
        browser.set_window_size(1100, min(int(height) + 40, 4000))
        browser.save_screenshot(args.out)
    finally:
        browser.quit()
        server.shutdown()
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
