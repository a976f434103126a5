"""The web page in a real browser: Playwright drives Debian's chromium (headless, nothing
downloaded) against the service on 127.0.0.1."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from servers import running

from pixelwise.data.synthetic import SyntheticShapes
from pixelwise.inference.loading import load_predictor
from pixelwise.serve import create_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# As the machine notes say: without the background-networking flags chromium keeps trying to
# reach Google's hosts, which this closed network refuses.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]

sync_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason="Debian's chromium is not installed (make test installs it: apt-get install "
                                       "chromium)")


def _overlay_pixels(page, card: str) -> list[int]:
    return page.evaluate(f"""() => {{
        const canvas = document.querySelector('{card} canvas.overlay');
        const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        let alpha = 0, coloured = 0;
        for (let i = 3; i < data.length; i += 4) {{ alpha += data[i]; coloured += data[i] > 0; }}
        return [alpha, coloured];
    }}""")


# The page forbids eval, so waits go through locators: a string given to page.wait_for_function is
# evaluated by eval once its first check fails, and the policy refuses it.

# Records what the Content-Security-Policy blocked, before any script of the page runs.
WATCH_POLICY = """window.__violations = [];
document.addEventListener('securitypolicyviolation', e => window.__violations.push(e.violatedDirective));"""


def test_upload_overlay_slider_legend_hiding_and_a_click(tiny_checkpoint: Path, tmp_path: Path) -> None:
    loaded = load_predictor(tiny_checkpoint)
    paths = []
    for index in range(2):
        image, _ = SyntheticShapes("test", size=(72, 96), length=index + 1).load(index)
        paths.append(tmp_path / f"scene{index}.png")
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(paths[-1])
    with running(create_app(loaded, source=str(tiny_checkpoint))) as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page()
            page.add_init_script(WATCH_POLICY)
            failed = []
            page.on("requestfailed", lambda request: failed.append(request.url))
            response = page.goto(url)
            assert "default-src 'self'" in response.headers["content-security-policy"]
            sync_api.expect(page.locator("#model-info")).to_contain_text("classes")
            assert "best.pt" in page.text_content("#model-info") and str(tiny_checkpoint.parent) not in \
                page.content()
            page.set_input_files("#files", [str(path) for path in paths])
            page.wait_for_selector(".card:nth-of-type(2) canvas.overlay[data-ready='1']", timeout=60_000)
            card = ".card:nth-of-type(1)"
            assert page.text_content(f"{card} .name") == "scene0.png"

            # The overlay is drawn, and the slider changes it.
            alpha_before, coloured = _overlay_pixels(page, card)
            assert coloured == 72 * 96
            page.fill(f"{card} .opacity", "90")
            alpha_after, _ = _overlay_pixels(page, card)
            assert alpha_after > alpha_before * 1.5

            # The legend lists every class with its share, and the shares add up to 100%.
            names = page.eval_on_selector_all(f"{card} .legend .class-name", "nodes => nodes.map(n => n.textContent)")
            shares = page.eval_on_selector_all(f"{card} .legend .share",
                                               "nodes => nodes.map(n => parseFloat(n.textContent))")
            assert names == list(loaded.classes.names) and abs(sum(shares) - 100) < 1
            labels = np.asarray(Image.open(paths[0]).convert("RGB"))  # the model's own shares, for comparison
            from pixelwise.inference.logits import InferenceOptions
            from pixelwise.inference.predict import predict_whole
            expected = np.bincount(predict_whole(loaded, labels, InferenceOptions.create())[0].ravel(),
                                   minlength=len(names)) / labels[..., 0].size
            assert np.allclose(shares, 100 * expected, atol=0.051)

            # Hiding the most frequent class clears its pixels from the overlay.
            biggest = int(np.argmax(shares))
            page.uncheck(f"{card} .legend li[data-index='{biggest}'] input")
            _, still_coloured = _overlay_pixels(page, card)
            assert still_coloured == round(72 * 96 * (1 - expected[biggest]))

            # The mask can be downloaded.
            assert page.get_attribute(f"{card} .download", "download") == "scene0_mask.png"

            # A click: the top classes with probabilities, and the receptive field drawn.
            page.click(f"{card} canvas.field", position={"x": 40, "y": 30})
            page.wait_for_selector(f"{card} .explain table.top tr", timeout=60_000)
            rows = page.eval_on_selector_all(f"{card} .explain table.top tr", "rows => rows.map(r => r.innerText)")
            assert len(rows) == 3 and all("%" in row for row in rows)
            assert "receptive field" in page.text_content(f"{card} .explain .field-note")
            left, top, right, bottom = map(int, page.get_attribute(f"{card} canvas.field", "data-box").split(","))
            assert 0 <= left < right <= 96 and 0 <= top < bottom <= 72
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            assert (tmp_path / "page.png").stat().st_size > 10_000
            assert not [u for u in failed if not u.startswith(url)], "the page reached outside the service"
            assert page.evaluate("window.__violations") == [], "the page needs what its own policy forbids"
        finally:
            browser.close()


HOSTILE = '<img src=x onerror="document.title=\'PWNED\'">'


def test_a_model_file_with_markup_in_its_class_names_runs_no_script(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from pixelwise.io.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(tiny_checkpoint)
    names = state["classes"]["names"]
    state["classes"]["names"] = [f"{HOSTILE}{index}" for index in range(len(names))]
    hostile = tmp_path / "shared_model.pt"
    save_checkpoint(state, hostile)  # a well-formed file, as someone could share it
    image = tmp_path / "scene.png"
    Image.fromarray(SyntheticShapes("test", size=(72, 96), length=1).load(0)[0].permute(1, 2, 0).numpy()).save(image)
    with running(create_app(load_predictor(hostile), source=str(hostile))) as url, \
            sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page()
            page.add_init_script(WATCH_POLICY)
            page.goto(url)
            sync_api.expect(page.locator("#model-info")).to_contain_text("classes")
            page.set_input_files("#files", [str(image)])
            page.wait_for_selector(".card canvas.overlay[data-ready='1']", timeout=60_000)
            page.click(".card canvas.field", position={"x": 40, "y": 30})
            page.wait_for_selector(".card .explain table.top tr", timeout=60_000)
            page.wait_for_timeout(300)  # an injected image would have failed to load and fired by now
            assert page.title() == "pixelwise"
            assert page.query_selector_all(".card img") == []  # no element was made from a name
            shown = page.eval_on_selector_all(".card .explain table.top td:first-child", "cells => cells.map(c => "
                                              "c.textContent)")
            assert len(shown) == 3 and all(cell.startswith(HOSTILE) for cell in shown)
            legend = page.eval_on_selector_all(".card .legend .class-name", "nodes => nodes.map(n => n.textContent)")
            assert legend == state["classes"]["names"]
            assert page.evaluate("window.__violations") == []
        finally:
            browser.close()
