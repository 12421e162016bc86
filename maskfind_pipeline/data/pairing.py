"""Turn a listing of the labeled and failure prefixes into image/mask pairs and refusals."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from maskfind_pipeline.storage.base import ObjectInfo
from maskfind_pipeline.storage.keys import (
    InvalidKey,
    SampleKeys,
    Source,
    mask_image_id,
    parse_image_key,
    printable_key,
    validate_key,
)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A listed image and its mask, with the ETags seen at listing time."""

    keys: SampleKeys
    image: ObjectInfo
    mask: ObjectInfo

    @property
    def identity(self) -> tuple[str, str, str]:
        return (self.image.key, self.image.etag, self.mask.etag)


@dataclass(frozen=True, slots=True)
class Refusal:
    """An object that cannot become a sample, with why and whether a later run may retry it."""

    key: str
    etag: str
    mask_etag: str
    stage: str
    reason: str
    retryable: bool


def pair_objects(listing: Iterable[ObjectInfo]) -> tuple[list[Candidate], list[Refusal]]:
    """Match `<id>.<png|jpg>` with `<id>.mask.png` per source; refuse everything else."""
    images: dict[tuple[Source, str], list[tuple[SampleKeys, ObjectInfo]]] = defaultdict(list)
    masks: dict[tuple[Source, str], ObjectInfo] = {}
    refusals: list[Refusal] = []
    for info in listing:
        refusal = _classify(info, images, masks)
        if refusal:
            refusals.append(refusal)
    candidates: list[Candidate] = []
    for ident, found in sorted(images.items()):
        mask = masks.pop(ident, None)
        if len(found) > 1:
            keys = ", ".join(info.key for _, info in found)
            refusals += [
                _refuse(i, "pair", f"several images share one id: {keys}") for _, i in found
            ]
        elif mask is None:
            keys, info = found[0]
            refusals.append(_refuse(info, "pair", f"image has no mask {keys.mask_key}", True))
        else:
            candidates.append(Candidate(found[0][0], found[0][1], mask))
    refusals += [_refuse(m, "pair", "mask has no image", True) for m in masks.values()]
    return candidates, refusals


def _classify(
    info: ObjectInfo,
    images: dict[tuple[Source, str], list[tuple[SampleKeys, ObjectInfo]]],
    masks: dict[tuple[Source, str], ObjectInfo],
) -> Refusal | None:
    try:
        validate_key(info.key)
    except InvalidKey as exc:
        return _refuse(info, "key", str(exc))
    if info.size == 0:
        return _refuse(info, "key", "object is empty (0 bytes)")
    parsed = parse_image_key(info.key)
    if parsed is not None:
        images[(parsed.source, parsed.image_id)].append((parsed, info))
        return None
    image_id = mask_image_id(info.key)
    source = info.key.partition("/")[0]
    if image_id is not None and "/" not in info.key[len(source) + 1 :]:
        masks[(Source(source), image_id)] = info
        return None
    return _refuse(
        info,
        "key",
        "unexpected key: expected <id>.png|jpg|jpeg or <id>.mask.png directly "
        "under labeled/ or failures/",
    )


def _refuse(info: ObjectInfo, stage: str, reason: str, retryable: bool = False) -> Refusal:
    # A key refused as invalid may not be UTF-8; the quarantine must still be able to hold it.
    return Refusal(printable_key(info.key), info.etag, "", stage, reason, retryable)
