"""The numpy face encoder: dlib's descriptors from dlib's model file, or dlib's own encoder."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest

from scanpixd.config import FaceSettings
from scanpixd.errors import ModelUnavailable
from scanpixd.models import face_resnet
from scanpixd.models.face_resnet import ChipEncoder, FaceResNet, ModelFormatError
from scanpixd.models.faces import FaceModel, model_directory
from tests.helpers_faces import corpus, working_image

ENCODER_FILE = "dlib_face_recognition_resnet_model_v1.dat"
LANDMARKS_FILE = "shape_predictor_68_face_landmarks.dat"
#: Photos with seven faces in all: one, two and three to a picture, large and small.
PHOTOS = ("examples/obama.jpg", "examples/two_people.jpg", "examples/obama-240p.jpg",
          "examples/knn_examples/test/obama_and_biden.jpg")
#: dlib's float32 arithmetic in another order: ~1e-6 apart; records keep float16 (~1e-3).
ABS_TOLERANCE = 1e-4
DISTANCE_TOLERANCE = 1e-3


def _model_dir() -> Path:
    try:
        directory = model_directory()
    except ModelUnavailable:
        pytest.skip("face_recognition_models is not installed")
    return directory


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    return (_model_dir() / ENCODER_FILE).read_bytes()


@pytest.fixture(scope="module")
def net(model_bytes: bytes) -> FaceResNet:
    return face_resnet.parse(model_bytes)


@pytest.fixture(scope="module")
def dlib_faces() -> tuple[object, list[tuple[np.ndarray, object]]]:
    """dlib's own encoder, and (pixels, 68-point shapes) of every face in :data:`PHOTOS`."""
    dlib = pytest.importorskip("dlib")
    directory = _model_dir()
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(directory / LANDMARKS_FILE))
    found = []
    for rel in PHOTOS:
        pixels = np.asarray(working_image(corpus() / rel))
        shapes = dlib.full_object_detections()
        for rect in detector(pixels, 1):
            shapes.append(predictor(pixels, rect))
        found.append((pixels, shapes))
    return dlib.face_recognition_model_v1(str(directory / ENCODER_FILE)), found


def _encode(encoder: object, faces: list[tuple[np.ndarray, object]]) -> np.ndarray:
    return np.concatenate([np.array(encoder.compute_face_descriptor(pixels, shapes, 1),  # type: ignore[attr-defined]
                                    dtype=np.float32).reshape(-1, 128)
                           for pixels, shapes in faces])


def _assert_same(found: np.ndarray, expected: np.ndarray) -> None:
    assert found.shape == expected.shape
    assert np.abs(found - expected).max() <= ABS_TOLERANCE
    assert np.linalg.norm(found - expected, axis=1).max() <= DISTANCE_TOLERANCE


# -- the descriptors ------------------------------------------------------------------------
def test_descriptors_are_dlibs_on_real_faces(net: FaceResNet, dlib_faces: tuple) -> None:
    dlib_encoder, faces = dlib_faces
    import dlib

    expected = _encode(dlib_encoder, faces)
    assert len(expected) == 7
    _assert_same(_encode(ChipEncoder(net, dlib.get_face_chips), faces), expected)


def test_many_faces_at_once_match_one_at_a_time(net: FaceResNet, dlib_faces: tuple) -> None:
    import dlib

    chips = np.stack([chip for pixels, shapes in dlib_faces[1]
                      for chip in dlib.get_face_chips(pixels, shapes, size=150, padding=0.25)])
    chips = np.concatenate([chips, chips[::-1]])  # more than one batch
    assert len(chips) > face_resnet.BATCH
    together = net.descriptors(chips)
    alone = np.concatenate([net.descriptors(chip[None]) for chip in chips])
    assert together.dtype == np.float32 and together.shape == (len(chips), 128)
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_threads_encode_at_once(net: FaceResNet, dlib_faces: tuple) -> None:
    import dlib

    encoder = ChipEncoder(net, dlib.get_face_chips)
    assert encoder.thread_safe
    faces = dlib_faces[1]
    expected = _encode(encoder, faces)
    results: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: results.append(_encode(encoder, faces)))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 3
    for found in results:
        np.testing.assert_allclose(found, expected, atol=1e-6)


def test_no_faces_and_wrong_chips(net: FaceResNet) -> None:
    encoder = ChipEncoder(net, lambda *args, **kwargs: [])
    assert encoder.compute_face_descriptor(np.zeros((10, 10, 3), np.uint8), [], 1) == []
    with pytest.raises(ValueError):
        encoder.compute_face_descriptor(np.zeros((10, 10, 3), np.uint8), [object()], 2)
    with pytest.raises(ValueError):
        net.descriptors(np.zeros((1, 100, 100, 3), np.uint8))
    assert net.descriptors(np.zeros((0, 150, 150, 3), np.uint8)).shape == (0, 128)


# -- reading the model file -----------------------------------------------------------------
def test_file_holds_the_expected_network(net: FaceResNet) -> None:
    assert len(net.blocks) == 14 and sum(block.down for block in net.blocks) == 4
    np.testing.assert_allclose(net.means, [122.782, 117.001, 104.298], atol=1e-3)
    assert net.stem.weights.shape == (7 * 7 * 3, 32) and net.fc.shape == (256, 128)
    assert all(array.flags.c_contiguous and array.dtype == np.float32
               for array in (net.stem.weights, net.stem.bias, net.fc))


def _damaged(data: bytes) -> list[tuple[str, bytes]]:
    stride_at = data.index(b"con_4", 1000) + 200  # somewhere in the first block's weights
    return [
        ("empty", b""),
        ("truncated", data[: len(data) // 2]),
        ("a byte short", data[:-1]),
        ("a byte more", data + b"\x00"),
        ("another network", data.replace(b"\x01\x05relu_", b"\x01\x05prelu", 1)),
        ("not dlib's", bytes(range(256)) * 4),
        ("cut in a tensor", data[:stride_at]),
    ]


def test_damaged_files_are_refused(model_bytes: bytes) -> None:
    for label, data in _damaged(model_bytes):
        with pytest.raises(ModelFormatError):
            face_resnet.parse(data)
            pytest.fail(f"{label}: parsed")


def test_unreadable_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError):
        face_resnet.load(tmp_path / "missing.dat")


def test_model_falls_back_to_dlibs_encoder(tmp_path: Path, model_bytes: bytes,
                                           caplog: pytest.LogCaptureFixture) -> None:
    """A file dlib reads but this module does not: dlib's encoder, the same encodings."""
    pytest.importorskip("dlib")
    (tmp_path / LANDMARKS_FILE).symlink_to(_model_dir() / LANDMARKS_FILE)
    (tmp_path / ENCODER_FILE).write_bytes(model_bytes + b"\x00")  # dlib stops at the network
    image = working_image(corpus() / "examples/two_people.jpg")
    fast = FaceModel(FaceSettings(idle_unload=0))
    with caplog.at_level(logging.WARNING, logger="scanpixd.models.faces"):
        slow = FaceModel(FaceSettings(idle_unload=0, model_dir=str(tmp_path)))
        slow_faces = slow.detect(image)
    assert "fall back to dlib" in caplog.text
    assert not isinstance(slow.load().encoder, ChipEncoder)
    assert isinstance(fast.load().encoder, ChipEncoder)
    fast_faces = fast.detect(image)
    assert len(slow_faces) == len(fast_faces) == 2
    _assert_same(np.stack([f.encoding for f in fast_faces]),
                 np.stack([f.encoding for f in slow_faces]))
