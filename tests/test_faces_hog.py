"""The native HOG face scan against dlib's own: same boxes, scores and detectors, and
clear refusals of what it cannot read."""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dlib
import numpy as np
import pytest
from PIL import Image

from scanpixd.config import FaceSettings
from scanpixd.models import _fhog, hog
from scanpixd.models.faces import FaceModel
from scanpixd.models.hog import PLANES, DetectorFormatError, HogScanner, SavedDetector, native_scanner
from tests.helpers_faces import CORPORA, TRUTH, corpus, working_image

PHONES = ("Apple iPhone 6.jpg", "Samsung SM-G935L (Galaxy S7 Edge).jpg", "Canon Powershot S90.jpg")


@pytest.fixture(scope="module")
def dlib_detector() -> dlib.fhog_object_detector:
    return dlib.get_frontal_face_detector()


@pytest.fixture(scope="module")
def scanner(dlib_detector: dlib.fhog_object_detector) -> HogScanner:
    found = native_scanner(dlib_detector)
    assert found is not None, "the native scan is part of the build"
    return found


@pytest.fixture(scope="module")
def saved_bytes(dlib_detector: dlib.fhog_object_detector, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("hog") / "frontal.svm"
    dlib_detector.save(str(path))
    return path.read_bytes()


def grey(path: Path, size: int) -> np.ndarray:
    image = Image.open(path).convert("L")
    image.thumbnail((size, size))
    return np.asarray(image)


def by_dlib(detector: dlib.fhog_object_detector, pixels: np.ndarray, upsample: int,
            adjust: float) -> tuple[list[tuple[int, int, int, int]], list[float], list[int]]:
    rects, scores, indices = detector.run(pixels, upsample, adjust)
    return ([(r.left(), r.top(), r.right(), r.bottom()) for r in rects], list(scores),
            [int(i) for i in indices])


def assert_same(ours: tuple, theirs: tuple, where: str) -> None:
    assert ours[0] == theirs[0], where
    assert ours[2] == theirs[2], where
    assert ours[1] == pytest.approx(theirs[1], abs=1e-4), where


def test_the_saved_frontal_detector_is_read_whole(saved_bytes: bytes) -> None:
    saved = SavedDetector.parse(saved_bytes)
    assert (saved.cell_size, saved.window_width, saved.window_height) == (8, 80, 80)
    assert saved.filter_shape == (10, 10)
    assert len(saved.weights) == 5 and all(len(w) == 10 * 10 * PLANES + 1 for w in saved.weights)
    assert 0 < saved.iou_thresh < 1 and 0 < saved.covered_thresh < 1


def test_the_rank_one_filters_add_up_to_each_plane_filter(scanner: HogScanner) -> None:
    bank, size = scanner.bank, 10 * 10
    pairs = bank.pairs.reshape(-1, 20)
    at = 0
    for detector, weights in enumerate(scanner.saved.weights):
        assert bank.biases[detector] == weights[-1]
        for plane in range(PLANES):
            count = int(bank.counts[detector * PLANES + plane])
            rebuilt = sum((np.outer(col, row) for row, col in
                           ((p[:10], p[10:]) for p in pairs[at:at + count])), np.zeros((10, 10)))
            at += count
            original = weights[plane * size:(plane + 1) * size].reshape(10, 10)
            assert np.abs(rebuilt - original).max() <= 2e-3 * np.abs(original).max() + 1e-4
    assert at == len(pairs)


@pytest.mark.slow
@pytest.mark.parametrize(("upsample", "adjust", "size"), [(0, -0.6, 640), (1, 0.0, 400), (2, -0.3, 200)])
def test_faces_match_dlib_on_the_face_corpus(dlib_detector: dlib.fhog_object_detector, scanner: HogScanner,
                                             upsample: int, adjust: float, size: int) -> None:
    found = 0
    for rel in TRUTH:
        pixels = grey(corpus() / rel, size)
        theirs = by_dlib(dlib_detector, pixels, upsample, adjust)
        assert_same(scanner.run(pixels, upsample, adjust), theirs, rel)
        found += len(theirs[0])
    assert found >= len(TRUTH)  # every photo holds a face, some several, with weaker ones


@pytest.mark.slow
def test_the_baseline_kernels_match_dlib_too(dlib_detector: dlib.fhog_object_detector,
                                             scanner: HogScanner) -> None:
    fastest = _fhog.KERNELS
    assert _fhog.set_kernels(True) == "baseline"  # what CPUs without AVX2 and FMA run
    try:
        for rel in list(TRUTH)[::4]:
            for upsample, adjust in ((0, -0.6), (1, 0.0)):
                pixels = grey(corpus() / rel, 400)
                assert_same(scanner.run(pixels, upsample, adjust),
                            by_dlib(dlib_detector, pixels, upsample, adjust), rel)
    finally:
        assert _fhog.set_kernels(False) == fastest


@pytest.mark.slow
def test_photos_without_faces_give_dlibs_weak_windows(dlib_detector: dlib.fhog_object_detector,
                                                      scanner: HogScanner) -> None:
    found = 0
    for name in PHONES:
        pixels = grey(CORPORA / "metadata-extractor-images" / "jpg" / name, 768)
        theirs = by_dlib(dlib_detector, pixels, 0, -1.2)
        assert_same(scanner.run(pixels, 0, -1.2), theirs, name)
        found += len(theirs[0])
    assert found > 0  # the lowered threshold lets windows through to compare


def test_pictures_smaller_than_the_window_find_nothing(dlib_detector: dlib.fhog_object_detector,
                                                       scanner: HogScanner) -> None:
    for shape in [(1, 1), (5, 300), (300, 5), (40, 40), (60, 70)]:
        pixels = np.full(shape, 128, dtype=np.uint8)
        assert scanner.run(pixels, 1, 0.0) == ([], [], [])
        if shape != (1, 1):  # dlib itself refuses to upsample a single pixel
            assert by_dlib(dlib_detector, pixels, 1, 0.0) == ([], [], [])
    assert scanner.run(np.zeros((0, 10), dtype=np.uint8)) == ([], [], [])


def test_threads_share_one_scanner(scanner: HogScanner) -> None:
    pictures = [grey(corpus() / rel, 400) for rel in list(TRUTH)[:6]]
    alone = [scanner.run(p, 1) for p in pictures]
    with ThreadPoolExecutor(max_workers=3) as pool:
        assert list(pool.map(lambda p: scanner.run(p, 1), pictures)) == alone


def test_images_it_cannot_scan_are_refused(scanner: HogScanner) -> None:
    with pytest.raises(ValueError, match="8-bit grey"):
        scanner.run(np.zeros((100, 100), dtype=np.float32))
    with pytest.raises(ValueError, match="8-bit grey"):
        scanner.run(np.zeros((100, 100, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="upsample"):
        scanner.run(np.zeros((100, 100), dtype=np.uint8), upsample=4)


def test_the_native_call_checks_its_arguments(scanner: HogScanner) -> None:
    bank = scanner.bank
    image = bytes(100 * 100)
    good = (image, 100, 100, 1, 3, 8, 5, 10, 10, bank.pairs, bank.counts, bank.biases, 0.0)
    assert _fhog.scan(*good) == []  # a flat grey picture: no window passes
    with pytest.raises(ValueError, match="image"):
        _fhog.scan(bytes(99 * 100), *good[1:])
    for at, value in [(1, -100), (1, 1 << 20), (3, 9), (5, 0), (7, 1 << 30), (8, 685789055), (6, 1 << 20)]:
        hostile = list(good)
        hostile[at] = value
        with pytest.raises(ValueError, match="out of range"):
            _fhog.scan(*hostile)
    with pytest.raises(ValueError, match="out of range"):
        _fhog.scan(*good[:12], float("nan"))
    with pytest.raises(ValueError, match="bank"):
        _fhog.scan(*good[:9], bank.pairs[:-1], *good[10:])
    with pytest.raises(ValueError, match="biases"):
        _fhog.scan(*good[:11], bank.biases[:4], 0.0)
    for count in (-1, 11, 1 << 30):  # a count past the filter's rank, or below none
        counts = bank.counts.copy()
        counts[0] = count
        with pytest.raises(ValueError, match="counts"):
            _fhog.scan(*good[:10], counts, *good[11:])
    assert _fhog.KERNELS in {"avx2+fma", "baseline"}


def test_unaligned_buffers_and_needless_levels_are_handled(scanner: HogScanner) -> None:
    bank, pixels = scanner.bank, grey(corpus() / "examples/obama.jpg", 300)
    rows, cols = pixels.shape
    expected = _fhog.scan(pixels.tobytes(), rows, cols, 1, 14, 8, 5, 10, 10, bank.pairs, bank.counts,
                          bank.biases, -0.5)
    assert expected
    shifted = [memoryview(bytearray(b"\0" + bytes(a)))[1:]
               for a in (pixels.tobytes(), bank.pairs, bank.counts, bank.biases)]
    assert _fhog.scan(shifted[0], rows, cols, 1, 14, 8, 5, 10, 10, *shifted[1:], -0.5) == expected
    # levels past the smallest the picture allows find nothing more, and cost nothing
    assert _fhog.scan(pixels.tobytes(), rows, cols, 1, 1 << 30, 8, 5, 10, 10, bank.pairs, bank.counts,
                      bank.biases, -0.5) == expected


@pytest.mark.parametrize("cut", [0, 1, 5, 17, 40, 1000, -1])
def test_truncated_detector_files_are_refused(saved_bytes: bytes, cut: int) -> None:
    with pytest.raises(DetectorFormatError):
        SavedDetector.parse(saved_bytes[:cut])


def test_other_detector_files_are_refused(saved_bytes: bytes) -> None:
    for data, why in [(b"\x01\x03" + saved_bytes[2:], "version 2"),
                      (saved_bytes + b"\x01\x00", "after the detector"),
                      (b"\x7f" * 64, "bad integer"),
                      (bytes(200), None)]:
        with pytest.raises(DetectorFormatError, match=why):
            SavedDetector.parse(data)


def test_the_face_model_scans_natively_and_finds_what_dlib_finds() -> None:
    faces = FaceModel(FaceSettings(enabled=True))
    image = working_image(corpus() / "examples/knn_examples/test/obama_and_biden.jpg")
    native = faces.detect(image)
    with faces.session() as loaded:
        assert loaded.scanner is not None
        scanner, loaded.scanner = loaded.scanner, None
    try:
        by_dlib_scan = faces.detect(image)  # the fallback: dlib's own detectors
    finally:
        loaded.scanner = scanner
    assert len(native) == 3
    assert [f.box for f in native] == [f.box for f in by_dlib_scan]
    assert [f.score for f in native] == pytest.approx([f.score for f in by_dlib_scan], abs=1e-4)
    assert np.allclose([f.encoding for f in native], [f.encoding for f in by_dlib_scan])


def test_without_the_native_module_or_a_temporary_folder_dlib_scans(
        dlib_detector: dlib.fhog_object_detector, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "scanpixd.models._fhog", None)  # as where it was not built
        assert native_scanner(dlib_detector) is None
        assert hog.kernels() == "not built"
    with monkeypatch.context() as patch:
        patch.setattr(tempfile, "tempdir", str(tmp_path / "gone"))
        assert native_scanner(dlib_detector) is None
    assert native_scanner(dlib_detector) is not None


def test_detectors_dlib_scans_another_way_are_left_to_dlib(saved_bytes: bytes) -> None:
    saved = SavedDetector.parse(saved_bytes)
    with pytest.raises(DetectorFormatError, match="1-pixel cells"):
        HogScanner(dataclasses.replace(saved, cell_size=1), _fhog)
    noisy = [np.concatenate([np.random.default_rng(i).normal(size=len(w) - 1), w[-1:]])
             for i, w in enumerate(saved.weights)]  # full-rank filters: dlib filters them whole
    with pytest.raises(DetectorFormatError, match="full filters"):
        HogScanner(dataclasses.replace(saved, weights=noisy), _fhog)
