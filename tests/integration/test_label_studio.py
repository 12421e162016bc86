"""The queue out to a real Label Studio and the people's answers back (one server for the
session, `make label-studio`'s environment): tasks with the model's mask as a brush prediction
and the queue's scores as data; an annotation submitted through the API comes back through
`returned_labels` as a failure sample in the next dataset version, with its tags and annotator;
a skip and a rejection are recorded, not imported; an edit revises it; nothing twice. The RLE
is checked byte for byte against label-studio-sdk's own encoder, in the server's environment."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import uuid
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
import requests
from PIL import Image

from maskfind_pipeline.data.production import encode_mask
from maskfind_pipeline.defs.resources import ObjectStoreResource
from maskfind_pipeline.defs.review_queue.labeling import (
    LabelStudioResource,
    label_studio_tasks,
    returned_labels,
)
from maskfind_pipeline.flows.labeling import send_to_label_studio
from maskfind_pipeline.labeling import brush
from maskfind_pipeline.labeling.label_studio import LabelStudio, LabelStudioOptions, brush_result
from maskfind_pipeline.labeling.returns import Ledger
from maskfind_pipeline.labeling.server import RunningLabelStudio, venv_path
from maskfind_pipeline.storage import LocalObjectStore
from tests.conftest import s3_store
from tests.support.labeling import DAY, TAGS, next_dataset_version, production_day_with_queue
from tests.support.s3server import S3Server

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SDK_CHECK = """
import json, sys
import numpy as np
from label_studio_sdk.converter.brush import decode_rle, mask2rle
out = []
for case in json.load(sys.stdin):
    mask = np.array(case["mask"], dtype=np.uint8).reshape(case["shape"]) * 255
    h, w = case["shape"]
    ours = decode_rle(case["ours"]).reshape(h, w, 4)[:, :, 3] > 0
    out.append({"sdk": mask2rle(mask), "decoded": ours.astype(int).ravel().tolist()})
json.dump(out, sys.stdout)
"""


def test_our_rle_is_byte_identical_to_the_sdk_and_each_decodes_the_other() -> None:
    rng = np.random.default_rng(3)
    masks = [rng.random(shape) < 0.4 for shape in [(1, 1), (37, 53), (41, 30), (129, 257)]]
    masks.append(np.pad(np.ones((200, 300), bool), ((100, 1), (7, 400))))  # runs > 65,536
    cases = [
        {"shape": list(m.shape), "mask": m.astype(int).ravel().tolist(), "ours": brush.encode(m)}
        for m in masks
    ]
    python = venv_path() / "bin" / "python"
    reply = subprocess.run(
        [str(python), "-c", SDK_CHECK],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    for mask, case, sdk in zip(masks, cases, json.loads(reply.stdout), strict=True):
        assert case["ours"] == sdk["sdk"], f"{mask.shape}: our bytes differ from the SDK's"
        np.testing.assert_array_equal(np.reshape(sdk["decoded"], mask.shape), mask)
        np.testing.assert_array_equal(brush.decode(sdk["sdk"], *mask.shape), mask)


def _resources(server: RunningLabelStudio, data: LocalObjectStore, work: LocalObjectStore):
    return {
        "label_studio": LabelStudioResource(url=server.url, api_key=server.credentials.api_key),
        "data_store": ObjectStoreResource(uri=str(data.root)),
        "work_store": ObjectStoreResource(uri=str(work.root)),
    }


def _materialize(asset: dg.AssetsDefinition, resources: dict, **kwargs) -> dict:
    result = dg.materialize([asset], resources=resources, **kwargs)
    assert result.success
    return {
        k: v.value
        for k, v in result.asset_materializations_for_node(asset.key.path[-1])[0].metadata.items()
    }


def _mask_of(store: LocalObjectStore, key: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(store.get(key)))) != 0


def test_a_queue_goes_out_to_label_studio_and_comes_back_as_failures(
    label_studio: RunningLabelStudio, tmp_path: Path
) -> None:
    data, work = LocalObjectStore(tmp_path / "data"), LocalObjectStore(tmp_path / "work")
    images = production_day_with_queue(data, work)
    resources = _resources(label_studio, data, work)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("production_days", [DAY])
    prefix = f"review {uuid.uuid4().hex[:8]}"  # a project of its own in the shared server
    options = {"project_prefix": prefix, "local_files_root": str(label_studio.files_root)}
    config = {"ops": {"label_studio_tasks": {"config": options}}}
    out = _materialize(
        label_studio_tasks, resources, partition_key=DAY, instance=instance, run_config=config
    )
    assert (out["queued"], out["tasks_added"], out["already_there"]) == (3, 3, 0)
    again = _materialize(
        label_studio_tasks, resources, partition_key=DAY, instance=instance, run_config=config
    )
    assert (again["tasks_added"], again["already_there"]) == (0, 3), "idempotent per image"

    legacy = LabelStudio(label_studio.url, label_studio.credentials.api_key)
    client = LabelStudio(label_studio.url, legacy.personal_access_token())  # a JWT this time
    assert str(client.session.headers["Authorization"]).startswith("Bearer ")
    project = next(p for p in client.projects() if p["title"] == f"{prefix} {DAY}")
    tasks = {t["data"]["image_id"]: t for t in client.tasks(int(project["id"]), full=True)}
    assert set(tasks) == {i.image_id for i in images}
    for image in images:
        task = tasks[image.image_id]
        assert task["data"]["reasons"] == "grade_3" and task["data"]["grade"] == 3
        assert task["data"]["model_version"] == "4" and task["data"]["novelty"] == 1.5
        (prediction,) = task["predictions"]
        assert prediction["model_version"] == "4"
        assert prediction["score"] == pytest.approx(1 - task["data"]["p_grade3"])
        (result,) = prediction["result"]
        shown = brush.decode(result["value"]["rle"], *image.predicted.shape)
        np.testing.assert_array_equal(shown, image.predicted)
        served = client.session.get(label_studio.url + task["data"]["image"], timeout=30)
        assert served.status_code == 200 and served.content == data.get(image.image_key)

    labeled, skipped, rejected = images
    answer = client.annotate(tasks[labeled.image_id]["id"], [brush_result(labeled.truth)])
    client.annotate(tasks[skipped.image_id]["id"], [], was_cancelled=True)
    verdict = {"from_name": "verdict", "to_name": "image", "type": "choices"}
    client.annotate(tasks[rejected.image_id]["id"], [{**verdict, "value": {"choices": ["reject"]}}])

    back_config = {"ops": {"returned_labels": {"config": {"project_prefix": prefix}}}}
    back = _materialize(returned_labels, resources, run_config=back_config)
    assert back["failures_written"] == 1 and back["new_answers"] == 3
    statuses = {r["image_id"]: r["status"] for r in Ledger(work).table().to_pylist()}
    assert statuses == {
        labeled.image_id: "imported",
        skipped.image_id: "skipped",
        rejected.image_id: "rejected",
    }
    failure = f"failures/{labeled.image_id}.png"
    np.testing.assert_array_equal(
        _mask_of(data, f"failures/{labeled.image_id}.mask.png"), labeled.truth
    )
    assert not data.exists(f"failures/{skipped.image_id}.png")
    tags = data.tags(failure)
    assert tags["annotator"] == label_studio.credentials.email
    assert tags["annotation_id"] == f"label-studio:{answer['id']}"
    assert tags["failed_model_version"] == "4" and tags["camera"] == TAGS["camera"]

    nothing = _materialize(returned_labels, resources, run_config=back_config)
    assert nothing["new_answers"] == 0 and nothing["already_recorded"] == 3

    night = next_dataset_version(data, work, tmp_path / "cache")
    assert set(night) == {labeled.image_id}
    row = night[labeled.image_id]
    assert row["source"] == "failure" and row["failed_model_version"] == "4"
    assert row["image_type"] == TAGS["image_type"] and row["station"] == TAGS["station"]
    assert row["tags"]["annotator"] == label_studio.credentials.email
    first_sha = row["mask_sha256"]

    edited = labeled.truth.copy()
    edited[-3:, :] = True
    client.update_annotation(answer["id"], [brush_result(edited)])
    revised = _materialize(returned_labels, resources, run_config=back_config)
    assert revised["failures_written"] == 1
    second = next_dataset_version(data, work, tmp_path / "cache")
    sha = second[labeled.image_id]["mask_sha256"]
    assert sha != first_sha, "the edited annotation is a new failure sample"
    assert second[labeled.image_id]["version"].version_id != row["version"].version_id
    ledger = [r for r in Ledger(work).table().to_pylist() if r["status"] == "revised"]
    assert [r["mask_sha256"] for r in ledger] == [sha], "the ledger says which revision it is"
    np.testing.assert_array_equal(_mask_of(data, f"failures/{labeled.image_id}.mask.png"), edited)


def test_an_s3_data_store_gives_label_studio_presigned_urls(
    label_studio: RunningLabelStudio, s3: S3Server, tmp_path: Path
) -> None:
    data, work = s3_store(s3), LocalObjectStore(tmp_path / "work")
    images = production_day_with_queue(data, work, sizes=((23, 31),))
    client = LabelStudio(label_studio.url, label_studio.credentials.api_key)
    options = LabelStudioOptions(project_prefix=f"s3 {uuid.uuid4().hex[:8]}")
    sent = send_to_label_studio(DAY, client, options, data_store=data, work_store=work)
    assert sent.sent == 1
    (task,) = client.tasks(sent.project_id)
    url = task["data"]["image"]
    assert url.startswith(s3.endpoint_url) and ("X-Amz-Signature=" in url or "Signature=" in url)
    fetched = requests.get(url, timeout=30)
    assert fetched.status_code == 200 and fetched.content == data.get(images[0].image_key)
    digest = hashlib.sha256(fetched.content).hexdigest()
    assert digest == hashlib.sha256(data.get(images[0].image_key)).hexdigest()


def test_the_demo_people_answer_in_label_studio_through_the_projects_jobs(
    label_studio: RunningLabelStudio, tmp_path: Path
) -> None:
    """`maskfind demo --labeling label-studio`'s step 3 on a tiny queue: the definitions'
    `label_studio_out` and `label_studio_back` jobs around annotations with the true masks."""
    import datetime as dt

    from maskfind_pipeline import synthetic
    from maskfind_pipeline.data.production import PredictionLog
    from maskfind_pipeline.data.review_queue import ReviewQueueOptions
    from maskfind_pipeline.definitions import defs
    from maskfind_pipeline.demo import _people_in_label_studio
    from maskfind_pipeline.flows.review_queue import queue_production_day
    from tests.support.labeling import _log_row

    data = LocalObjectStore(label_studio.files_root / f"demo-{uuid.uuid4().hex[:6]}")
    work = LocalObjectStore(tmp_path / "work")
    day = dt.date(2026, 12, 3)
    keys = synthetic.generate_production(data, synthetic.DEFAULT_TYPES[:2], 2, day=day, size=40)
    rows = []
    for key in keys:
        image_id = key.rpartition("/")[2].rsplit(".", 1)[0]
        data.put(f"predictions/{day}/{image_id}.mask.png", encode_mask(np.ones((40, 40), bool)))
        mask_key = f"predictions/{day}/{image_id}.mask.png"
        rows.append({**_log_row(str(day), image_id, key, mask_key, p3=0.9), "image_type": "t"})
    PredictionLog(work, str(day)).append(rows, run_id="r", part=0)
    queue_production_day(str(day), ReviewQueueOptions(), data_store=data, work_store=work)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("production_days", [str(day)])
    resources = {
        **_resources(label_studio, data, work),
        "label_studio": LabelStudioResource(
            url=label_studio.url, api_key=label_studio.credentials.api_key
        ),
    }
    options: dict = {}  # the default root: the folder above the data store

    def run_job(name: str, config: dict, *, partition_key: str | None = None):  # type: ignore[no-untyped-def]
        asset = {"label_studio_out": "label_studio_tasks", "label_studio_back": "returned_labels"}
        config = {"ops": {asset[name]: {"config": options}}}
        return (
            defs()
            .resolve_job_def(name)
            .execute_in_process(
                run_config=config,
                instance=instance,
                resources=resources,
                partition_key=partition_key,
            )
        )

    printed: list[str] = []
    written = _people_in_label_studio(
        str(day),
        keys,
        data,
        LabelStudio(label_studio.url, label_studio.credentials.api_key),
        run_job,
        printed.append,
    )
    assert written is not None and len(written) == 4, printed
    for key in keys:
        image_id = key.rpartition("/")[2].rsplit(".", 1)[0]
        np.testing.assert_array_equal(
            _mask_of(data, f"failures/{image_id}.mask.png"), synthetic.production_truth(key, 40)
        )
    assert "4 failure samples written" in printed[-1]
