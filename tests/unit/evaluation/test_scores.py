"""Per-sample scores: cells aggregated from them equal the whole-split evaluation exactly, and a
model scores each distinct test sample once, whatever the versions that hold it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from maskfind_pipeline import synthetic
from maskfind_pipeline.data.cache import ContentCache
from maskfind_pipeline.data.decoded import build_decoded
from maskfind_pipeline.data.loader import make_loaders
from maskfind_pipeline.evaluation.scores import MissingScores, ScoreStore, cell_rows
from maskfind_pipeline.flows.evaluation import SampleScorer
from maskfind_pipeline.ml.segmentation.inference import evaluate_loader
from maskfind_pipeline.ml.segmentation.predict import Predictor
from maskfind_pipeline.storage import LocalObjectStore
from tests.support.manifests import manifest_of
from tests.support.models import TINY, tiny_weights

TYPES = synthetic.DEFAULT_TYPES[:3]


class TinyScorer(SampleScorer):
    """The scorer with registered versions replaced by tiny untrained U-Nets (seed = version)."""

    scored: list[int]

    def _predictor(self, version: str) -> Predictor:
        if version not in self._predictors:
            self._predictors[version] = Predictor.from_weights(
                TINY, tiny_weights(int(version)), version=version
            ).to("cpu")
        return self._predictors[version]

    def score(self, model_version: str, rows: pa.Table) -> pa.Table:
        self.scored.append(rows.num_rows)
        return super().score(model_version, rows)


@pytest.fixture(scope="module")
def versions(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[LocalObjectStore, pa.Table, pa.Table]:
    """Two manifests: v1, and v2 = v1's samples plus new ones (all in test, two types)."""
    store = LocalObjectStore(tmp_path_factory.mktemp("data"))
    keys = synthetic.generate(store, TYPES, 6, size=48)
    split = lambda i: ("test", "test", "train")[i % 3]  # noqa: E731
    failure = lambda i: i % 5 == 0  # noqa: E731
    v2 = manifest_of(store, keys, size=48, split=split, failure=failure)
    v1 = v2.slice(0, 10)
    return store, v1, v2


def scorer(root: Path, store: LocalObjectStore) -> TinyScorer:
    made = TinyScorer(
        registry=None,  # type: ignore[arg-type]
        data_store=store,
        cache=ContentCache(root / "cache"),
        decoded_root=root / "decoded",
        batch_size=4,
        device="cpu",
        chunk=5,
    )
    made.scored = []
    return made


def test_cells_from_scores_equal_the_whole_split_evaluation(versions, tmp_path: Path) -> None:
    store, _, manifest = versions
    run = scorer(tmp_path, store)
    scores = ScoreStore(LocalObjectStore(tmp_path / "work"))
    tests = manifest.filter(pa.array(np.asarray(manifest.column("split")) == "test"))
    got = cell_rows(
        run.ensure("3", tests, scores), manifest, model_version="3", dataset_version="ds-2"
    )
    predictor = run._predictor("3")
    decoded = build_decoded(
        manifest,
        store,
        ContentCache(tmp_path / "cache"),
        tmp_path / "decoded",
        size=TINY.input_size,
    )
    loader = make_loaders(manifest, decoded, batch_size=4, augment=None, seed=0)["test"]
    expected = evaluate_loader(
        predictor.model,
        TINY,
        loader,
        image_types=manifest.column("image_type").to_pylist(),
        sources=manifest.column("source").to_pylist(),
        placement=predictor.placement,
    ).rows()
    assert len(got) == len(expected) == 1 + len(TYPES) + 2
    for mine, theirs in zip(got, expected, strict=True):
        assert {k: mine[k] for k in theirs} == theirs  # the same numbers, bit for bit
        assert mine["threshold"] == TINY.threshold


def test_a_model_scores_each_distinct_test_sample_once(versions, tmp_path: Path) -> None:
    store, v1, v2 = versions
    work = LocalObjectStore(tmp_path / "work")
    run = scorer(tmp_path, store)
    tests = lambda m: m.filter(pa.array(np.asarray(m.column("split")) == "test"))  # noqa: E731
    n1, n2 = tests(v1).num_rows, tests(v2).num_rows
    run.ensure("1", pa.concat_tables([tests(v1), tests(v1)]), ScoreStore(work))
    assert sum(run.scored) == n1  # duplicates across versions count once; chunks of 5
    assert run.scored == [5] * (n1 // 5) + ([n1 % 5] if n1 % 5 else [])
    with pytest.raises(MissingScores, match="no score for"):
        cell_rows(ScoreStore(work).of("1"), v2, model_version="1", dataset_version="ds-2")
    run.scored.clear()
    again = scorer(tmp_path, store)
    scores = again.ensure("1", pa.concat_tables([tests(v2), tests(v1)]), ScoreStore(work))
    assert sum(again.scored) == n2 - n1  # only what v2 added
    assert scores.num_rows == n2
    ScoreStore(work).compact(["1"])
    assert ScoreStore(work).of("1").num_rows == n2 and ScoreStore(work).of("2").num_rows == 0
    one = cell_rows(ScoreStore(work).of("1"), v1, model_version="1", dataset_version="ds-1")
    assert one[0]["n_images"] == n1
