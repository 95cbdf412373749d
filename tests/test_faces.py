"""Face detection, encodings, best-shot cues and the faces stage, on real photos and a clip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from scanpixd.config import FaceSettings, Settings
from scanpixd.errors import ModelUnavailable
from scanpixd.models.faces import (
    EYES_CLOSED_BELOW,
    SMILE_ABOVE,
    FaceModel,
    eye_aspect_ratio,
    face_quality,
)
from scanpixd.pipeline.base import Job, run_stage
from scanpixd.pipeline.faces import FacesStage
from scanpixd.pipeline.services import Services
from scanpixd.record import decode_vector, new_record
from scanpixd.store import FolderStore
from tests.helpers_faces import CLIP, CORPORA, corpus, faces_record, services, working_image


def detect(rel: str) -> list:
    return services().faces.detect(working_image(corpus() / rel))


def test_one_face_with_box_encoding_and_cues() -> None:
    (face,) = detect("examples/obama.jpg")
    top, right, bottom, left = face.box
    assert 0 <= top < bottom <= 1 and 0 <= left < right <= 1
    assert 0.3 < left < right < 0.8 and top < 0.5  # the face is up in the middle
    assert face.encoding.shape == (128,) and face.encoding.dtype == np.float32
    assert face.score > 0.5
    assert face.eyes_open > EYES_CLOSED_BELOW
    assert face.sharpness > 10
    assert face.size == pytest.approx((bottom - top) * (right - left), rel=0.01)


def test_boxes_are_fractions_that_hold_at_any_size() -> None:
    (small,) = detect("examples/obama-240p.jpg")
    (large,) = detect("examples/obama-1080p.jpg")
    assert np.allclose(small.box, large.box, atol=0.03)
    assert np.linalg.norm(small.encoding - large.encoding) < 0.3


def test_group_shots_list_faces_left_to_right() -> None:
    two = detect("examples/two_people.jpg")
    assert len(two) == 2 and two[0].box[3] < two[1].box[3]
    three = detect("examples/knn_examples/test/obama_and_biden.jpg")
    assert len(three) == 3  # Biden, Obama and a child


def test_same_person_is_near_and_others_far() -> None:
    (obama,) = detect("examples/obama.jpg")
    (obama2,) = detect("examples/obama2.jpg")
    (biden,) = detect("examples/biden.jpg")
    same = np.linalg.norm(obama.encoding - obama2.encoding)
    other = np.linalg.norm(obama.encoding - biden.encoding)
    assert same < 0.5 < other


def test_photo_without_people_and_non_face_picture_have_no_faces() -> None:
    landscape = CORPORA / "exif-samples" / "jpg" / "gps" / "DSCN0010.jpg"
    if not landscape.exists():
        pytest.skip("the shared corpora are not beside the project")
    assert services().faces.detect(working_image(landscape)) == []
    ramp = np.tile(np.linspace(0, 255, 640, dtype=np.uint8), (480, 1))
    noise = np.random.default_rng(7).integers(0, 255, (480, 640), dtype=np.uint8)
    picture = Image.fromarray(np.stack([ramp, noise, ramp[::-1]], axis=2), "RGB")
    assert services().faces.detect(picture) == []
    assert services().faces.detect(Image.new("L", (1, 1))) == []


def test_a_blurred_copy_is_less_sharp() -> None:
    image = working_image(corpus() / "examples/obama.jpg")
    (sharp,) = services().faces.detect(image)
    (soft,) = services().faces.detect(image.filter(ImageFilter.GaussianBlur(2)))
    assert soft.sharpness < sharp.sharpness / 2
    assert soft.quality() < sharp.quality()


def test_smile_and_open_eyes_cues() -> None:
    (laughing,) = detect("examples/knn_examples/train/biden/biden2.jpg")
    (closed_mouth,) = detect("examples/biden.jpg")
    assert laughing.smile > SMILE_ABOVE > closed_mouth.smile
    eye = np.zeros((68, 2))
    eye[36:42] = [(0, 0), (1, -0.3), (2, -0.3), (3, 0), (2, 0.3), (1, 0.3)]
    eye[42:48] = eye[36:42] + (10, 0)
    assert eye_aspect_ratio(eye) == pytest.approx(0.2)
    eye[[37, 38, 43, 44], 1] = -0.05
    eye[[40, 41, 46, 47], 1] = 0.05
    assert eye_aspect_ratio(eye) < EYES_CLOSED_BELOW
    assert face_quality(0.1, 0.4, 200, 0.05) < face_quality(0.3, 0.4, 200, 0.05)


def test_input_larger_than_max_size_is_scaled_first() -> None:
    settings = FaceSettings(max_size=400, idle_unload=0)
    model = FaceModel(settings)
    with Image.open(corpus() / "examples/obama-1080p.jpg") as im:
        faces = model.detect(im)
    assert len(faces) == 1
    (reference,) = detect("examples/obama-1080p.jpg")
    assert np.allclose(_centre(faces[0].box), _centre(reference.box), atol=0.03)


def _centre(box: list[float]) -> tuple[float, float]:
    top, right, bottom, left = box
    return (top + bottom) / 2, (left + right) / 2


def test_cnn_detector_finds_the_face() -> None:
    model = FaceModel(FaceSettings(detector="cnn", upsample=0, idle_unload=0))
    with Image.open(corpus() / "examples/obama_small.jpg") as im:
        (face,) = model.detect(im)
    (hog,) = detect("examples/obama_small.jpg")
    assert model.model_id == "dlib-resnet-v1/cnn"
    assert np.linalg.norm(face.encoding - hog.encoding) < 0.3
    model.unload()
    assert model.state == "unloaded"


def test_missing_model_files_make_the_model_unavailable(tmp_path: Path) -> None:
    model = FaceModel(FaceSettings(model_dir=str(tmp_path), idle_unload=0))
    with pytest.raises(ModelUnavailable, match="shape_predictor_68_face_landmarks.dat"):
        model.detect(Image.new("RGB", (64, 64)))
    assert model.state == "unavailable" and "missing" in (model.error or "")
    settings = Settings()
    settings.faces.model_dir = str(tmp_path)
    stage = FacesStage(Services(settings))
    assert stage.is_ready() is False


def test_unloaded_model_loads_again() -> None:
    model = FaceModel(FaceSettings(idle_unload=0))
    image = working_image(corpus() / "examples/obama_small.jpg")
    assert len(model.detect(image)) == 1
    model.unload()
    assert model.state == "unloaded"
    assert len(model.detect(image)) == 1 and model.state == "ready"


# -- the stage ---------------------------------------------------------------------------
def test_stage_writes_faces_into_the_record() -> None:
    record = faces_record("examples/two_people.jpg")
    assert record["stages"]["faces"] == f"{FacesStage.version}:dlib-resnet-v1/hog"
    assert record["errors"] == {}
    first, second = record["faces"]
    assert set(first) == {"box", "score", "encoding", "eyes_open", "smile", "sharpness",
                          "size", "time"}
    assert first["time"] is None and first["box"][3] < second["box"][3]
    assert decode_vector(first["encoding"]).shape == (128,)
    (direct_first, _) = detect("examples/two_people.jpg")
    assert np.allclose(decode_vector(first["encoding"]), direct_first.encoding, atol=2e-3)


def test_stage_on_a_clip_keeps_each_person_once_with_a_time() -> None:
    record = faces_record(CLIP)
    assert record["errors"] == {}
    (face,) = record["faces"]  # one performer, seen in several frames
    assert face["time"] is not None and 0 < face["time"] < 10.5
    (lin,) = faces_record("examples/lin-manuel-miranda.png")["faces"]
    distance = np.linalg.norm(decode_vector(face["encoding"]) - decode_vector(lin["encoding"]))
    assert distance < 0.5


def _job(path: Path, kind: str) -> Job:
    record = new_record(path.name, 1, 1, "b2:" + "0" * 32)
    record["media"] = {"kind": kind}
    return Job(path, FolderStore(path.parent, path.parent / ".scanpix", [path.parent / ".scanpix"]),
               record)


def test_stage_records_why_it_failed(tmp_path: Path) -> None:
    stage = FacesStage(services())
    no_picture = _job(tmp_path / "gone.jpg", "image")
    assert run_stage(stage, no_picture) is False
    assert "no decoded picture" in no_picture.record["errors"]["faces"]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    clip = _job(broken, "video")
    assert run_stage(stage, clip) is False
    assert clip.record["errors"]["faces"]
    assert "faces" not in clip.record


def test_stage_applies_to_pictures_and_videos_only() -> None:
    stage = FacesStage(services())
    assert stage.applies({"media": {"kind": "image"}})
    assert stage.applies({"media": {"kind": "video"}})
    assert not stage.applies({"media": {"kind": "audio"}})
    assert not stage.applies({})
