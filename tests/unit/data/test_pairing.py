"""`pair_listing` (Arrow columns and a join) pairs a listing exactly as the dict-of-objects pairing
it replaced did: the same candidates and refusals in the same order, on generated listings."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from hypothesis import given, settings
from hypothesis import strategies as st

from maskfind_pipeline.data.pairing import (
    Candidate,
    Refusal,
    _classify,
    _Columns,
    pair_listing,
    pair_objects,
)
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

IDS = ["a", "b", "é", "A", "a.b", "a-b", "z9"]
ENDINGS = [".png", ".jpg", ".jpeg", ".PNG", ".mask.png", ".txt", "/x.png"]


def reference(listing: Iterable[ObjectInfo]) -> tuple[list[Candidate], list[Refusal]]:
    """The pairing before `pair_listing`: a dict of every listed image and mask."""
    images: dict[tuple[Source, str], list[tuple[SampleKeys, ObjectInfo]]] = defaultdict(list)
    masks: dict[tuple[Source, str], ObjectInfo] = {}
    refusals: list[Refusal] = []

    def refuse(info: ObjectInfo, stage: str, reason: str, retryable: bool = False) -> Refusal:
        return Refusal(printable_key(info.key), info.etag, "", stage, reason, retryable)

    for info in listing:
        try:
            validate_key(info.key)
        except InvalidKey as exc:
            refusals.append(refuse(info, "key", str(exc)))
            continue
        if info.size == 0:
            refusals.append(refuse(info, "key", "object is empty (0 bytes)"))
            continue
        parsed = parse_image_key(info.key)
        if parsed is not None:
            images[(parsed.source, parsed.image_id)].append((parsed, info))
            continue
        image_id = mask_image_id(info.key)
        source = info.key.partition("/")[0]
        if image_id is not None and "/" not in info.key[len(source) + 1 :]:
            masks[(Source(source), image_id)] = info
            continue
        refusals.append(
            refuse(
                info,
                "key",
                "unexpected key: expected <id>.png|jpg|jpeg or <id>.mask.png directly "
                "under labeled/ or failures/",
            )
        )
    candidates: list[Candidate] = []
    for ident, found in sorted(images.items()):
        mask = masks.pop(ident, None)
        if len(found) > 1:
            keys = ", ".join(info.key for _, info in found)
            refusals += [
                refuse(i, "pair", f"several images share one id: {keys}") for _, i in found
            ]
        elif mask is None:
            keys_, info = found[0]
            refusals.append(refuse(info, "pair", f"image has no mask {keys_.mask_key}", True))
        else:
            candidates.append(Candidate(found[0][0], found[0][1], mask))
    refusals += [refuse(m, "pair", "mask has no image", True) for m in masks.values()]
    return candidates, refusals


@settings(max_examples=300, deadline=None)
@given(
    keys=st.lists(
        st.tuples(
            st.sampled_from(["labeled", "failures"]), st.sampled_from(IDS), st.sampled_from(ENDINGS)
        ).map(lambda t: f"{t[0]}/{t[1]}{t[2]}"),
        max_size=30,
        unique=True,
    ),
    empty=st.sets(st.integers(0, 29), max_size=3),
)
def test_pairing_in_arrow_equals_the_dict_pairing(keys: list[str], empty: set[int]) -> None:
    listing = [ObjectInfo(k, 0 if i in empty else 10 + i, f"e{i}") for i, k in enumerate(keys)]
    assert pair_objects(listing) == reference(listing)


def test_pages_of_the_listing_are_gathered_into_one_table() -> None:
    listing = [
        ObjectInfo(f"labeled/{i:03d}{end}", 5, f"e{i}")
        for i in range(10)
        for end in (".png", ".mask.png")
    ]
    small = pair_listing(listing, page=3)
    assert small.table.num_rows == 10 and not small.refusals
    assert small.table.equals(pair_listing(listing).table)
    assert [c.keys.image_id for c in small.candidates([9, 0])] == ["009", "000"]
    columns = _Columns(2)
    assert _classify(listing[0], 0, columns, columns) is None
