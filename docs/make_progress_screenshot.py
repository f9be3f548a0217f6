"""Make docs/progress.png: the demo's progress page while `manage.py demo` runs, in headless Chromium.

    python docs/make_progress_screenshot.py

It runs the demo (`--keep-open`, bars polling twice a second), opens the progress page the demo prints with
the browser tests' tooling (tests/browser.py), and takes the picture when the import bar is part-way, the
others in their own states; then it stops the demo.
"""

from __future__ import annotations

import os
import pathlib
import re
import signal
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import browser  # noqa: E402

IMPORT_BAR = """
var el = document.querySelector("[data-taskbadger-progress]");
var text = el ? el.querySelector(".taskbadger-progress__percent").textContent : "";
return [el ? el.getAttribute("data-state") : null, parseInt(text, 10)];
"""


def main() -> int:
    reason = browser.unavailable()
    if reason:
        print(f"cannot take the screenshot: {reason}", file=sys.stderr)
        return 1
    env = {**os.environ, "PROGRESS_POLL_INTERVAL": "0.5"}
    demo = subprocess.Popen([sys.executable, "manage.py", "demo", "--keep-open"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert demo.stdout is not None
    driver = browser.start(900, 580)  # ready before the page exists: the import takes two seconds
    taken = False
    try:
        for line in demo.stdout:
            print(line, end="")
            found = re.search(r"progress page: (http://\S+)", line)
            if found and not taken:
                driver.get(found.group(1))
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    state, percent = driver.execute_script(IMPORT_BAR)
                    if state == "running" and 30 <= percent <= 80:
                        time.sleep(0.3)  # the fill's transition
                        driver.save_screenshot(str(ROOT / "docs" / "progress.png"))
                        taken = True
                        print(f"saved docs/progress.png (the import at {percent}%)")
                        break
                    if state == "done":
                        print("the import ended before the picture: run it again", file=sys.stderr)
                        break
                    time.sleep(0.05)
            if "press Ctrl-C to stop" in line:
                demo.send_signal(signal.SIGINT)
        return demo.wait(60) or (0 if taken else 1)
    finally:
        browser.stop(driver)
        if demo.poll() is None:
            demo.kill()


if __name__ == "__main__":
    raise SystemExit(main())
