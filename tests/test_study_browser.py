"""The study web app in a real browser: two participants do the whole study in headless Chromium
with real clicks and mouse moves; the admin export then evaluates to exactly what they did.

Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install -y chromium chromium-driver``).
Without them the test is skipped with that message, except under CI (env ``CI`` set), where it
fails: CI must run it. Set ``LDVCE_SCREENSHOTS=docs`` to write the README's screenshots.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from study import compute_hrh, participant_mask, read_export
from study.hrh import hrh_from_masks
from tests.study_server import ADMIN_TOKEN, REPO, StudyServer, admin

DISPLAY = 512
INSTALL = "apt-get install -y chromium chromium-driver (and pip install -e '.[test]' for selenium)"

pytestmark = pytest.mark.integration  # Selenium + Chromium, end to end


def _missing(msg: str):
    if os.environ.get("CI"):
        pytest.fail(f"{msg}; CI must run the browser test: {INSTALL}")
    pytest.skip(f"{msg}: {INSTALL}")


@pytest.fixture(scope="module")
def driver():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium is not installed")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    chromedriver = shutil.which("chromedriver")
    if not (chromium and chromedriver):
        _missing("headless Chromium or its driver is not installed")
    profile = tempfile.mkdtemp(prefix="ldvce-chromium-")
    opts = Options()
    opts.binary_location = chromium  # given explicitly: Selenium must never try to download one
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1280,1000"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(options=opts, service=Service(executable_path=chromedriver))
    d.set_page_load_timeout(30)
    yield d
    d.quit()
    shutil.rmtree(profile, ignore_errors=True)


class Participant:
    """Drives one participant through the study page and remembers what they answered."""

    def __init__(self, d, shots: Path | None = None):
        from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait
        self.d, self.shots = d, shots
        # The page re-renders (and navigates) under the wait: a vanished element just means "not yet".
        self.wait = WebDriverWait(d, 20, poll_frequency=0.05,
                                  ignored_exceptions=(NoSuchElementException, StaleElementReferenceException))
        self.selections: dict[str, int] = {}
        self.polygons: dict[str, list] = {}

    # -- page helpers
    def by(self, css):
        from selenium.webdriver.common.by import By
        return self.d.find_element(By.CSS_SELECTOR, css)

    def all(self, css):
        from selenium.webdriver.common.by import By
        return self.d.find_elements(By.CSS_SELECTOR, css)

    def task_number(self) -> int | None:
        m = re.match(r"Task (\d+) of (\d+)", self.by("#progress").text)
        return int(m.group(1)) if m else None

    def wait_task(self, k: int):
        """Wait until task ``k`` is on screen (or the thank-you page when k is past the end)."""
        self.wait.until(lambda d: self.task_number() == k or self.all("#thanks"))
        self.wait.until(lambda d: self.all("#thanks") or self.all("#frames img") or self.all("#canvas"))

    def start(self, url):
        self.d.get(url + "/")
        self.wait.until(lambda d: self.all("#start"))
        self.by("#consent").click()
        self.by("#start").click()
        self.wait_task(1)

    def submit(self):
        k = self.task_number()
        self.by("#submit").click()
        self.wait_task(k + 1)

    # -- the two tasks
    def select(self, position: int | None, screenshot: str | None = None):
        """Click frame ``position`` (0-based) of the sequence, or 'None of them' when None."""
        img = re.search(r"/img/([^/]+)/frame/", self.by("#frames img").get_attribute("src")).group(1)
        btn = self.by("#none") if position is None else self.all("#frames .frame")[position]
        btn.click()
        assert btn.get_attribute("aria-pressed") == "true"
        self.selections[img] = int(btn.get_attribute("data-value"))
        if screenshot and self.shots:
            self.d.save_screenshot(str(self.shots / screenshot))
        self.submit()
        return img

    def click_at(self, dx, dy):
        """A real mouse move and click at offset (dx, dy) from the canvas centre."""
        from selenium.webdriver.common.action_chains import ActionChains
        ActionChains(self.d).move_to_element_with_offset(self.by("#canvas"), dx, dy).click().perform()

    def tap_at(self, dx, dy):
        """A touch tap (pointer type 'touch') at offset (dx, dy) from the canvas centre."""
        from selenium.webdriver.common.actions import interaction
        from selenium.webdriver.common.actions.action_builder import ActionBuilder
        from selenium.webdriver.common.actions.pointer_input import PointerInput
        ab = ActionBuilder(self.d, mouse=PointerInput(interaction.POINTER_TOUCH, "finger"))
        ab.pointer_action.move_to(self.by("#canvas"), dx, dy).pointer_down().pointer_up()
        ab.perform()

    def draw(self, corners, close="first"):
        """Click the corners (offsets from the centre); close by clicking the first corner or the button."""
        for dx, dy in corners:
            self.click_at(dx, dy)
        if close == "first":
            self.click_at(*corners[0])
        else:
            self.by("#close").click()
        return [[DISPLAY // 2 + dx, DISPLAY // 2 + dy] for dx, dy in corners]

    def annotation_image(self) -> str:
        src = self.by("#stage img").get_attribute("src")
        return re.search(r"/img/([^/]+)/original", src).group(1)

    def check_canvas(self):
        r = self.d.execute_script("return document.getElementById('canvas').getBoundingClientRect().toJSON()")
        # Whole-pixel position and 512 px wide: a click at offset (dx, dy) from the centre is
        # display pixel (256 + dx, 256 + dy).
        assert r["width"] == r["height"] == DISPLAY and r["left"] == int(r["left"]) and r["top"] == int(r["top"]), r


def test_two_participants_complete_the_study_in_a_browser(driver, study_run, tmp_path):
    shots = Path(os.environ["LDVCE_SCREENSHOTS"]) if os.environ.get("LDVCE_SCREENSHOTS") else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    cfg = tmp_path / "study.yaml"
    cfg.write_text("title: Smile study\nquestion: Is this person smiling?\nframes: 5\nseed: 1\n"
                   "consent: I agree that my answers are stored for research.\n")
    with StudyServer(study_run, tmp_path / "study.sqlite", "--config", cfg) as srv:
        # ---- participant 1: selections, then polygons with an undo and a second polygon
        p1 = Participant(driver, shots)
        p1.start(srv.url)
        for k, pos in enumerate([1, 3, None]):
            p1.select(pos, screenshot="study_selection.png" if k == 0 else None)
        img = p1.annotation_image()
        p1.check_canvas()
        # polygon 1 (the mouth): three corners, a misplaced fourth that is undone, the right
        # fourth, closed by clicking its first corner
        for dx, dy in [(-90, 40), (90, 40), (100, 110), (0, 230)]:
            p1.click_at(dx, dy)
        p1.by("#undo").click()
        p1.click_at(-100, 110)
        p1.click_at(-90, 40)
        poly1 = [[166, 296], [346, 296], [356, 366], [156, 366]]
        # polygon 2 (the eyes): a triangle closed with the button
        poly2 = p1.draw([(-90, -60), (90, -60), (0, 10)], close="button")
        assert len(p1.all("#shapes li")) == 2
        p1.click_at(150, 200)  # start a third shape to show an open outline…
        p1.click_at(200, 150)
        if p1.shots:
            driver.save_screenshot(str(p1.shots / "study_annotation.png"))
        p1.by("#undo").click()
        p1.by("#undo").click()  # …and take it back
        p1.polygons[img] = [poly1, poly2]
        p1.submit()
        for _ in range(2):
            img = p1.annotation_image()
            p1.polygons[img] = [p1.draw([(-100, 40), (100, 40), (0, 150)])]
            p1.submit()
        assert p1.all("#thanks")
        pid1 = p1.by("#pid").text

        # ---- participant 2: leaves after two tasks and continues from the start page's link
        driver.execute_script("localStorage.clear()")
        p2 = Participant(driver)
        p2.start(srv.url)
        p2.select(0)
        p2.select(None)
        driver.get("about:blank")  # the tab is closed
        driver.get(srv.url + "/")
        p2.wait.until(lambda d: p2.all("#continue"))
        p2.by("#continue").click()
        p2.wait_task(3)
        p2.select(4)
        img = p2.annotation_image()
        p2.draw([(-50, -50), (50, -50), (50, 50), (-50, 50)])
        kept = p2.draw([(-200, 100), (-100, 100), (-150, 200)], close="button")
        p2.all("#shapes .delete")[0].click()  # delete the first polygon
        assert len(p2.all("#shapes li")) == 1
        p2.polygons[img] = [kept]
        p2.submit()
        img = p2.annotation_image()
        p2.polygons[img] = [p2.draw([(-30, -200), (230, -200), (230, 20), (-30, 20)], close="button")]
        p2.submit()
        img = p2.annotation_image()  # the last one on a touch screen: taps, not clicks
        corners = [(-120, 30), (120, 30), (60, 140), (-60, 140)]
        for dx, dy in corners + corners[:1]:
            p2.tap_at(dx, dy)
        p2.polygons[img] = [[[DISPLAY // 2 + dx, DISPLAY // 2 + dy] for dx, dy in corners]]
        p2.submit()
        assert p2.all("#thanks")
        pid2 = p2.by("#pid").text
        assert pid1 != pid2

        # ---- the admin page sees both
        driver.get(srv.url + "/admin")
        p2.wait.until(lambda d: p2.all("#token"))
        p2.by("#token").send_keys(ADMIN_TOKEN)
        p2.by("#login button").click()
        p2.wait.until(lambda d: "2 participant(s), 2 finished" in p2.by("#summary").text)
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == [], errors

        status, text = admin(srv.url, "/admin/export.csv")
        assert status == 200
    export = tmp_path / "studyentries.csv"
    export.write_text(text)

    # ---- the export holds exactly what the two did…
    ex = read_export(export)
    assert ex.issues == [] and ex.participant_ids == [pid1, pid2]
    for p, pid in ((p1, pid1), (p2, pid2)):
        assert {img: ex.selections[img][pid] for img in p.selections} == p.selections
        assert {img: [[list(v) for v in q.points] for q in ex.polygons[img][pid]] for img in p.polygons} == p.polygons
    # frames are indices into the full sequence although only 5 of 9 were shown
    shown = {v for p in (p1, p2) for v in p.selections.values()}
    assert max(shown) >= 5

    # ---- …and `ldvce study eval` on it gives their selections and HRHs of exactly their polygons
    out = tmp_path / "eval"
    r = subprocess.run([sys.executable, "-m", "ldvce.cli", "study", "eval", "--export", str(export),
                        "--runs", str(study_run), "--out", str(out), "--no-figures", "--bootstrap", "0"],
                       cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "study_summary.json").read_text())
    assert summary["participants"] == 2 and summary["n_issues"] == 0
    for img in ex.selection_images:
        want = [p.selections[img] for p in (p1, p2)]
        counts = {k: v for k, v in summary["selection"][img]["counts"].items() if v}
        assert counts == {str(c): want.count(c) for c in set(want)}
    for img in ex.annotation_images:
        masks = np.stack([participant_mask(p.polygons[img], DISPLAY, 256) for p in (p1, p2)])
        hrh = np.load(out / "hrh" / f"{img}.npy")
        assert np.array_equal(hrh, hrh_from_masks(masks))
        assert np.array_equal(hrh, compute_hrh(ex, img))
        assert summary["hrh"][img]["n_annotators"] == 2 and hrh.max() >= 1
