"""A person accepts the model's mask in Label Studio's editor (headless Chromium, the session's
Label Studio): the task shows the image from the local data store, the queue's reasons and
scores and the prediction as a brush region; "Submit" is clicked with the mouse; the answer
comes back as a failure sample whose mask is the predicted mask, pixel for pixel.

With MASKFIND_UI_SCREENSHOTS=FOLDER the editor's screenshot is copied there
(`label_studio_task.png` is docs/label_studio_task.png)."""

from __future__ import annotations

import io
import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskfind_pipeline.flows.labeling import collect_from_label_studio, send_to_label_studio
from maskfind_pipeline.labeling.label_studio import LabelStudio, LabelStudioOptions
from maskfind_pipeline.labeling.server import RunningLabelStudio
from maskfind_pipeline.storage import LocalObjectStore
from tests.support.labeling import DAY, production_day_with_queue
from tests.support.webserver import chromium_page

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian chromium not installed"),
    pytest.mark.timeout(240),
]


def test_a_mask_accepted_in_the_editor_comes_back_as_a_failure(
    label_studio: RunningLabelStudio, tmp_path: Path
) -> None:
    data, work = LocalObjectStore(tmp_path / "data"), LocalObjectStore(tmp_path / "work")
    (image,) = production_day_with_queue(data, work, sizes=((37, 53),))
    client = LabelStudio(label_studio.url, label_studio.credentials.api_key)
    options = LabelStudioOptions(
        project_prefix=f"ui {uuid.uuid4().hex[:8]}", local_files_root=str(label_studio.files_root)
    )
    sent = send_to_label_studio(DAY, client, options, data_store=data, work_store=work)
    (task,) = client.tasks(sent.project_id)

    with chromium_page(width=1400, height=900, log_path=tmp_path / "chromium.log") as page:
        page.goto(f"{label_studio.url}/user/login")
        page.wait_for("document.querySelectorAll('input[name=password]').length", what="login")
        email, password = label_studio.credentials.email, label_studio.credentials.password
        page.evaluate(
            f"(() => {{ document.querySelector('input[name=email]').value = {email!r}; "
            f"document.querySelector('input[name=password]').value = {password!r}; "
            "document.querySelector('form').submit(); return true; })()"
        )
        page.wait_for("!location.pathname.startsWith('/user/login')", what="the home page")
        page.goto(f"{label_studio.url}/projects/{sent.project_id}/data?task={task['id']}")
        page.wait_for(
            "document.body.innerText.includes('grade_3 (grade 3, P(grade 3) 0.9, novelty 1.5)')",
            what="the queue's reasons and scores above the image",
        )
        page.wait_for(  # the data manager's thumbnail and the editor's image
            "[...document.images].filter(i => i.complete && i.naturalWidth === 53).length >= 2",
            what="the production image, served from the local data store",
        )
        page.wait_for(
            "[...document.querySelectorAll('button')].some(b => b.innerText.trim() === 'Submit'"
            " && !b.disabled) && !document.querySelector('[class*=\"loading\"]')",
            what="the editor, loaded",
        )
        shot = page.screenshot(tmp_path / "label_studio_task.png")
        page.click(
            "[...document.querySelectorAll('button')].find(b => b.innerText.trim() === 'Submit')",
            what='the "Submit" button',
        )
        deadline = time.monotonic() + 30
        while not client.export(sent.project_id) and time.monotonic() < deadline:
            time.sleep(0.5)
    if folder := os.environ.get("MASKFIND_UI_SCREENSHOTS"):
        shutil.copy(shot, Path(folder) / shot.name)

    report = collect_from_label_studio(
        client, options, data_store=data, work_store=work, run_id="browser"
    )
    assert report.counts() == {"imported": 1}
    mask = data.get(f"failures/{image.image_id}.mask.png")
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(mask))) != 0, image.predicted)
    assert (
        data.tags(f"failures/{image.image_id}.png")["annotator"] == label_studio.credentials.email
    )
