"""Make docs/dashboard.png: the stand-in API's dashboard while `manage.py demo` runs, in headless Chromium.

    python docs/make_screenshot.py

It runs the demo (`--keep-open`), opens the dashboard URL the demo prints with the browser tests'
tooling (tests/browser.py), takes the picture while the tasks run, and stops the demo.
"""

from __future__ import annotations

import pathlib
import re
import signal
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import browser  # noqa: E402


def main() -> int:
    reason = browser.unavailable()
    if reason:
        print(f"cannot take the screenshot: {reason}", file=sys.stderr)
        return 1
    demo = subprocess.Popen([sys.executable, "manage.py", "demo", "--keep-open"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert demo.stdout is not None
    driver = None
    taken = False
    try:
        for line in demo.stdout:
            print(line, end="")
            found = re.search(r"dashboard: (http://\S+)", line)
            if found and driver is None:
                driver = browser.start(1280, 640)
                driver.get(found.group(1))
            # the picture: import_contacts half-way, the others in every state
            progress = re.search(r"import_contacts\s+\[[#.]+\] (\d+)%", line)
            if driver is not None and not taken and progress and int(progress.group(1)) >= 40:
                time.sleep(0.6)  # let the page's next poll (every 0.5 s) show the same moment
                driver.save_screenshot(str(ROOT / "docs" / "dashboard.png"))
                taken = True
                print("saved docs/dashboard.png")
            if "press Ctrl-C to stop" in line:
                demo.send_signal(signal.SIGINT)
        return demo.wait(60)
    finally:
        if driver is not None:
            browser.stop(driver)
        if demo.poll() is None:
            demo.kill()


if __name__ == "__main__":
    raise SystemExit(main())
