"""Label Studio over its REST API: a project per production day's queue, tasks with the model's
mask as a brush prediction, and the finished annotations read back through the export API.

The client speaks HTTP with `requests` (label-studio-sdk pins numpy and OpenCV below what this
project runs; see docs/labeling.md). An API key is a legacy token (`Authorization: Token ...`)
or a personal access token (a JWT refresh token, exchanged for an access token).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import requests
from pydantic import Field

from maskfind_pipeline.core_config import CoreConfig
from maskfind_pipeline.labeling import brush
from maskfind_pipeline.labeling.exports import PRODUCT, REJECT
from maskfind_pipeline.storage.base import ObjectStore
from maskfind_pipeline.storage.local import LocalObjectStore

LABEL_CONFIG = f"""<View>
  <Header value="$reasons (grade $grade, P(grade 3) $p_grade3, novelty $novelty)"/>
  <Image name="image" value="$image" zoom="true" zoomControl="true"/>
  <BrushLabels name="mask" toName="image">
    <Label value="{PRODUCT}" background="#00c853"/>
  </BrushLabels>
  <Choices name="verdict" toName="image" showInline="true">
    <Choice value="{REJECT}" hint="Not a usable image: keep it out of training"/>
  </Choices>
</View>"""
"""One brush label over the image, and a choice to reject an unusable image."""


class LabelStudioOptions(CoreConfig):
    """How queues become Label Studio projects and tasks."""

    project_prefix: str = Field(default="maskfind review", min_length=1, max_length=39)
    """Projects are titled `<prefix> <YYYY-MM-DD>`, one per production day (Label Studio
    allows 50 characters)."""
    presign_expiry_s: int = 7 * 24 * 3600
    """Lifetime of the presigned URL of an image in an S3 data store (S3 allows 7 days at
    most: a task opened later shows no image until the day is sent again)."""
    local_files_root: str | None = None
    """The server's LOCAL_FILES_DOCUMENT_ROOT, for a local data store: the store's folder or a
    folder above it (default: the folder above it; Label Studio refuses to connect the root
    itself). The server must run with LOCAL_FILES_SERVING_ENABLED=true."""


class LabelStudioError(RuntimeError):
    """The server refused a request or could not be reached."""


class LabelStudio:
    """The few calls of Label Studio's API the pipeline needs."""

    def __init__(self, url: str, api_key: str, *, timeout_s: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.session = requests.Session()
        self.session.trust_env = False  # a loopback or in-house server, never through a proxy
        self.session.headers["Authorization"] = self._authorization(api_key)

    def personal_access_token(self) -> str:
        """A new personal access token of the current user (a JWT refresh token)."""
        return str(self._call("POST", "/api/token/")["token"])

    def project(self, title: str, *, description: str = "") -> dict[str, Any]:
        """The project titled `title`, created (with `LABEL_CONFIG`) when there is none."""
        found = [p for p in self.projects() if p["title"] == title]
        if found:
            return found[0]
        body = {
            "title": title,
            "description": description,
            "label_config": LABEL_CONFIG,
            "sampling": "Uncertainty sampling",  # lowest prediction score (least trusted) first
            "show_skip_button": True,
        }
        return self._call("POST", "/api/projects", json=body)

    def projects(self) -> list[dict[str, Any]]:
        return list(self._pages("/api/projects", "results"))

    def tasks(self, project_id: int, *, full: bool = False) -> list[dict[str, Any]]:
        """Every task's id and data (`full`: and its predictions and annotations)."""
        wanted = {"fields": "all"} if full else {"include": "id,data"}
        params = {"project": project_id, **wanted}
        return list(self._pages("/api/tasks", "tasks", params))

    def import_tasks(self, project_id: int, tasks: Sequence[Mapping[str, Any]]) -> int:
        if not tasks:
            return 0
        reply = self._call("POST", f"/api/projects/{project_id}/import", json=list(tasks))
        return int(reply.get("task_count", len(tasks)))

    def local_storage(self, project_id: int, path: str) -> None:
        """Connect a local-files storage at `path` to the project (once), which lets the
        server serve `/data/local-files/?d=...` below it to the project's people."""
        params = {"project": project_id}
        existing = self._call("GET", "/api/storages/localfiles", params=params)
        if any(s.get("path") == path for s in existing):
            return
        body = {"project": project_id, "path": path, "use_blob_urls": False, "title": "maskfind"}
        self._call("POST", "/api/storages/localfiles", json=body)

    def export(self, project_id: int, *, all_tasks: bool = False) -> list[dict[str, Any]]:
        """The project's annotated tasks (skipped ones included), or all of them, as its JSON
        export."""
        params = {"exportType": "JSON", "download_all_tasks": str(all_tasks).lower()}
        return self._call("GET", f"/api/projects/{project_id}/export", params=params)

    def emails(self) -> dict[int, str]:
        """User id -> email."""
        return {int(u["id"]): str(u["email"]) for u in self._call("GET", "/api/users")}

    def annotate(self, task_id: int, result: list[dict[str, Any]], **fields: Any) -> dict:
        """Submit an annotation (what a person does in the editor; used by the demo)."""
        body = {"result": result, **fields}
        return self._call("POST", f"/api/tasks/{task_id}/annotations", json=body)

    def update_annotation(self, annotation_id: int, result: list[dict[str, Any]]) -> dict:
        return self._call("PATCH", f"/api/annotations/{annotation_id}", json={"result": result})

    def _pages(
        self, path: str, items: str, params: Mapping[str, Any] | None = None
    ) -> Iterator[dict[str, Any]]:
        page = 1
        while True:
            reply = self._call(
                "GET", path, params={**(params or {}), "page": page, "page_size": 100}
            )
            rows = reply[items] if isinstance(reply, dict) else reply
            yield from rows
            total = reply.get("total", reply.get("count")) if isinstance(reply, dict) else None
            if not rows or total is None or page * 100 >= int(total):
                return
            page += 1

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            reply = self.session.request(method, self.url + path, timeout=self.timeout_s, **kwargs)
        except requests.RequestException as exc:
            raise LabelStudioError(f"Label Studio at {self.url} unreachable: {exc}") from exc
        if reply.status_code >= 400:
            raise LabelStudioError(
                f"Label Studio {method} {path}: HTTP {reply.status_code}: {reply.text[:300]}"
            )
        return reply.json() if reply.content else None

    def _authorization(self, api_key: str) -> str:
        if api_key.count(".") != 2:
            return f"Token {api_key}"
        try:
            reply = self.session.post(
                f"{self.url}/api/token/refresh/", json={"refresh": api_key}, timeout=self.timeout_s
            )
            reply.raise_for_status()
        except requests.RequestException as exc:
            raise LabelStudioError(
                f"Label Studio refused the personal access token: {exc}"
            ) from exc
        return f"Bearer {reply.json()['access']}"


def brush_result(mask: np.ndarray) -> dict[str, Any]:
    """A mask as one brush region of the `mask` control over the `image`."""
    height, width = mask.shape
    return {
        "from_name": "mask",
        "to_name": "image",
        "type": "brushlabels",
        "original_width": int(width),
        "original_height": int(height),
        "image_rotation": 0,
        "value": {"format": "rle", "rle": brush.encode(mask), "brushlabels": [PRODUCT]},
    }


def task(entry: Mapping[str, Any], mask: np.ndarray, image_url: str, day: str) -> dict[str, Any]:
    """A task for one queued image: the image, what the queue knows (to sort and filter by in
    the data manager), and the model's mask as a prediction scored 1 - P(grade 3)."""
    p3 = entry.get("p_grade3")
    data = {
        "image": image_url,
        "image_key": str(entry["image_key"]),
        "image_id": str(entry["image_id"]),
        "image_type": entry.get("image_type"),
        "reasons": ", ".join(entry.get("reasons") or []),
        "grade": _number(entry.get("grade")),
        "p_grade3": _number(p3),
        "novelty": _number(entry.get("novelty")),
        "priority": _number(entry.get("priority")),
        "model_version": entry.get("model_version"),
        "day": day,
    }
    prediction = {
        "model_version": str(entry.get("model_version") or "unknown"),
        "result": [brush_result(mask)],
    }
    if p3 is not None:
        prediction["score"] = round(1.0 - float(p3), 6)
    return {"data": data, "predictions": [prediction]}


def image_url(store: ObjectStore, key: str, options: LabelStudioOptions) -> str:
    """Where the browser of a person using Label Studio finds a data-store image: a presigned
    URL for S3, the server's local-files route for a local folder."""
    if isinstance(store, LocalObjectStore):
        root = Path(options.local_files_root or store.root.parent).resolve()
        path = (store.root / key).resolve()
        if not path.is_relative_to(root):
            raise ValueError(f"{path} is outside Label Studio's local files root {root}")
        return "/data/local-files/?d=" + quote(path.relative_to(root).as_posix())
    client = getattr(store, "client", None)
    if client is None:
        raise ValueError(f"{store.uri}: no way to give Label Studio an image URL")
    return client.generate_presigned_url(
        "get_object",
        Params={"Bucket": store.bucket, "Key": store.prefix + key},  # type: ignore[attr-defined]
        ExpiresIn=options.presign_expiry_s,
    )


def storage_path(store: ObjectStore) -> str | None:
    """The folder to connect as local-files storage (None for S3)."""
    return os.fspath(store.root) if isinstance(store, LocalObjectStore) else None


def _number(value: object) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, np.generic):
        value = value.item()
    return round(value, 4) if isinstance(value, float) else value  # type: ignore[return-value]
