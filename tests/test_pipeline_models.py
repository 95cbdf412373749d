"""The model tier on two cores: enlarged greyscale face detection, detection from several
threads at once, and faces beside CLIP in one indexing run with the results unchanged."""

from __future__ import annotations

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scanpixd.config import FaceSettings, Settings
from scanpixd.indexer import Indexer
from scanpixd.models.faces import FaceModel, detection_scale
from scanpixd.pipeline import Services
from scanpixd.pipeline.embed import EmbedStage, intra_op_threads, model_worker
from scanpixd.pipeline.faces import FacesStage
from scanpixd.pipeline.media import MediaStage
from scanpixd.pipeline.thumbs import ThumbsStage
from scanpixd.record import decode_vector
from scanpixd.store import Store
from tests.helpers_clip import TinyClip, tiny_clip_fixture  # noqa: F401
from tests.helpers_faces import corpus, services, working_image

GROUPS = ("examples/knn_examples/test/obama_and_biden.jpg", "examples/knn_examples/test/kit_with_rose.jpg",
          "examples/two_people.jpg", "examples/obama-240p.jpg")


def test_detection_scale_enlarges_to_max_size_at_most_twice() -> None:
    assert detection_scale((1024, 768), 1536, 0) == 1.5
    assert detection_scale((640, 480), 1536, 0) == 2.0  # as closely as one doubling
    assert detection_scale((1024, 768), 1024, 1) == 1.0  # the detector doubles it already
    assert detection_scale((640, 480), 1024, 1) == 1.0
    assert detection_scale((2000, 1500), 1536, 0) == 1.0  # shrunk first, never enlarged
    assert detection_scale((640, 480), 0, 0) == 1.0  # no size limit: as it is


def test_enlarged_detection_finds_the_same_faces_as_a_doubling() -> None:
    enlarged = FaceModel(FaceSettings(upsample=0, max_size=1536, idle_unload=0))
    doubled = FaceModel(FaceSettings(upsample=1, max_size=1024, idle_unload=0))
    for rel in GROUPS:
        image = working_image(corpus() / rel)
        found, reference = enlarged.detect(image), doubled.detect(image)
        assert len(found) == len(reference), rel
        for a, b in zip(found, reference, strict=True):
            assert np.linalg.norm(a.encoding - b.encoding) < 0.3, rel  # one person: < 0.5
            assert np.allclose(a.box, b.box, atol=0.03), rel


def test_detection_from_several_threads_matches_one_at_a_time() -> None:
    model = services().faces
    images = [working_image(corpus() / rel) for rel in GROUPS]
    alone = [model.detect(image) for image in images]
    with ThreadPoolExecutor(max_workers=3) as pool:
        together = list(pool.map(model.detect, images * 3))
    for faces, expected in zip(together, alone * 3, strict=True):
        assert [f.box for f in faces] == [f.box for f in expected]
        for a, b in zip(faces, expected, strict=True):
            assert np.array_equal(a.encoding, b.encoding)


def test_batch_threads_are_the_workers_share_and_torch_is_put_back() -> None:
    torch = pytest.importorskip("torch")
    stage = EmbedStage(Services(Settings()))
    seen: dict[str, int] = {}

    def worker() -> None:
        model_worker(64)  # more workers than cores: one thread each
        seen["share"] = stage.threads()
        with intra_op_threads(1):
            seen["inside"] = torch.get_num_threads()
        seen["after"] = torch.get_num_threads()

    default = torch.get_num_threads()
    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == {"share": 1, "inside": 1, "after": default}
    fresh: list[int] = []
    later = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
    later.start()
    later.join()
    assert fresh == [default]  # threads torch meets later start with its own default
    assert torch.get_num_threads() == default


def test_faces_and_clip_side_by_side_write_what_each_alone_writes(
        settings: Settings, tiny_clip: TinyClip, tmp_path: Path) -> None:
    folder = tmp_path / "lib" / "people"
    folder.mkdir(parents=True)
    for rel in GROUPS[:3] + ("examples/biden.jpg",):
        shutil.copy2(corpus() / rel, folder / Path(rel).name)
    tiny_clip.apply(settings)
    settings.faces.enabled = True
    settings.faces.idle_unload = 0.0
    shared = Services(settings)
    stages = [MediaStage(shared), ThumbsStage(shared), FacesStage(shared), EmbedStage(shared)]
    indexer = Indexer(settings, services=shared, stages=stages, jobs=2)
    try:
        summary = indexer.index([folder.parent])
    finally:
        indexer.close()
    assert summary.indexed == 4 and summary.failed == 0 and summary.unavailable == {}
    store = Store(settings).folder(folder)
    for name, record in store.records().items():
        thumb = store.asset_path(record["thumbs"][max(record["thumbs"], key=int)])
        with Image.open(thumb) as im:
            picture = im.convert("RGB")
        alone = shared.faces.detect(picture)
        assert [f["box"] for f in record["faces"]] == [[round(v, 4) for v in f.box] for f in alone]
        for entry, face in zip(record["faces"], alone, strict=True):
            assert np.allclose(decode_vector(entry["encoding"]), face.encoding, atol=2e-3), name
        (vector,) = record["clip"]["vectors"]
        expected = shared.clip.embed_images([picture])[0]
        assert np.allclose(decode_vector(vector["v"]), expected, atol=2e-2), name
    assert len(store.records()["obama_and_biden.jpg"]["faces"]) == 3
