"""People across a library: clustering on real faces, names, merges, rejections, sync."""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

import orjson
import pytest

from scanpixd.config import Settings
from scanpixd.errors import UsageError
from scanpixd.people import CACHE_FILE, CHOICES_FILE, People, face_ref
from scanpixd.store import Store
from tests.helpers_faces import CLIP, TRUTH, corpus, faces_record, library

OBAMA_FIRST = [r for r in TRUTH if r.startswith("examples/obama")]
LATER = [r for r in TRUTH if r not in OBAMA_FIRST]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    settings = Settings()
    settings.cache_dir = tmp_path / "cache"
    return Store(settings)


def who() -> dict[str, str | None]:
    """Truth label of every face ref of the corpus."""
    labels: dict[str, str | None] = {}
    for rel, names in TRUTH.items():
        content = faces_record(rel)["hash"]
        for index, label in enumerate(names):
            labels[face_ref(content, index)] = label
    return labels


def groups(people: People) -> dict[str, set[str | None]]:
    """Truth labels found in each person."""
    labels = who()
    return {p.id: {labels[f.ref] for f in people.faces_of(p.id)} for p in people.list()}


def person_of(people: People, label: str) -> str:
    labels = who()
    (pid,) = {
        p.id for p in people.list() for f in people.faces_of(p.id) if labels[f.ref] == label
    }
    return pid


def test_each_person_is_one_group_and_group_shots_split(tmp_path: Path, store: Store) -> None:
    corpus()
    root = tmp_path / "lib"
    people = People.load(store, [root], library(root, list(TRUTH)))
    found = groups(people)
    for label in ("obama", "biden", "kit", "rose", "alex"):
        holding = [pid for pid, labels in found.items() if label in labels]
        assert len(holding) == 1, f"{label} is split over {holding}"
        assert found[holding[0]] == {label}, f"{label} shares a person with others"
    obama = people.person(person_of(people, "obama"))
    assert obama is not None
    assert root / "examples" / "two_people.jpg" in obama.files
    assert obama.count == len([r for r in TRUTH if "obama" in TRUTH[r]])
    assert obama.sample is not None and obama.sample.path in obama.files
    listed = obama.to_dict()
    assert listed["count"] == obama.count and listed["sample"] == str(obama.sample.path)
    assert orjson.loads(orjson.dumps(listed)) == listed
    two = faces_record("examples/two_people.jpg")
    assert people.people_in(two) == {person_of(people, "obama"), person_of(people, "biden")}


def test_ids_are_the_same_on_every_machine(tmp_path: Path, store: Store) -> None:
    corpus()
    rels = list(TRUTH)
    random.Random(1).shuffle(rels)
    one = People.load(store, [tmp_path / "a"], library(tmp_path / "a", list(TRUTH)))
    other = People(store, [tmp_path / "b"]).load(library(tmp_path / "b", rels))
    assert [(p.id, p.count) for p in one.list()] == [(p.id, p.count) for p in other.list()]


def test_named_person_keeps_the_name_as_photos_arrive(tmp_path: Path, store: Store) -> None:
    corpus()
    root = tmp_path / "lib"
    people = People.load(store, [root], library(root, OBAMA_FIRST))
    (only,) = people.list()
    people.name(only.id, "Barack Obama")
    for folder, record in library(root, LATER):
        people.assign_new(folder, record)
    named = [p for p in people.list() if p.name == "Barack Obama"]
    assert len(named) == 1 and named[0].id == only.id
    assert groups(people)[only.id] == {"obama"}
    assert "barack obama" in people.people_in((root / "examples", "two_people.jpg"))
    assert people.find("BARACK OBAMA") == {only.id} == people.find(only.id)
    people.save()

    again = People.load(store, [root], library(root, LATER + OBAMA_FIRST))
    assert again.person(only.id) is not None
    assert again.person(only.id).name == "Barack Obama"  # type: ignore[union-attr]
    text = (store.library_dir(root) / CHOICES_FILE).read_text()
    assert str(tmp_path) not in text and "Barack Obama" in text
    cache = (store.library_dir(root) / CACHE_FILE).read_text()
    assert str(tmp_path) not in cache


def test_recluster_keeps_names_and_ids(tmp_path: Path, store: Store) -> None:
    corpus()
    root = tmp_path / "lib"
    people = People.load(store, [root], library(root, list(TRUTH)))
    before = {p.id for p in people.list()}
    biden = person_of(people, "biden")
    people.name(biden, "Joe Biden")
    people.recluster()
    assert {p.id for p in people.list()} == before
    assert people.person(biden).name == "Joe Biden"  # type: ignore[union-attr]

    stricter = People.load(store, [root], library(root, list(TRUTH)), threshold=0.3)
    stricter.recluster()
    assert stricter.person(biden).name == "Joe Biden"  # type: ignore[union-attr]
    assert groups(stricter)[biden] == {"biden"}
    assert len([p for p in groups(stricter).values() if "biden" in p]) == 1


def test_merge_holds_through_recluster_and_reload(tmp_path: Path, store: Store) -> None:
    corpus()
    root = tmp_path / "lib"
    records = library(root, list(TRUTH))
    strict = People.load(store, [root], records, threshold=0.25)  # splits people up
    obama_parts = [pid for pid, labels in groups(strict).items() if labels == {"obama"}]
    assert len(obama_parts) > 1
    strict.name(obama_parts[1], "Obama")
    keep = obama_parts[0]
    for part in obama_parts[1:]:
        assert strict.merge(part, into=keep) == keep
    assert [pid for pid, labels in groups(strict).items() if "obama" in labels] == [keep]
    assert strict.person(keep).name == "Obama"  # type: ignore[union-attr]
    assert strict.person(obama_parts[1]).id == keep  # type: ignore[union-attr]
    strict.recluster()
    assert [pid for pid, labels in groups(strict).items() if "obama" in labels] == [keep]

    reloaded = People.load(store, [root], records, threshold=0.25)
    reloaded.recluster()
    assert [pid for pid, labels in groups(reloaded).items() if "obama" in labels] == [keep]
    assert "obama" in reloaded.people_in(faces_record("examples/obama.jpg"))
    with pytest.raises(UsageError, match="no person"):
        reloaded.merge("pnothere", into=keep)


def test_rejected_face_leaves_the_person_for_good(tmp_path: Path, store: Store) -> None:
    corpus()
    root = tmp_path / "lib"
    records = library(root, list(TRUTH))
    people = People.load(store, [root], records)
    biden = person_of(people, "biden")
    people.name(biden, "Joe Biden")
    wrong = face_ref(faces_record("examples/two_people.jpg")["hash"], 1)  # Biden, say "not him"
    moved = people.reject(wrong, biden)
    assert moved is not None and moved != biden
    assert wrong not in {f.ref for f in people.faces_of(biden)}
    assert biden not in people.people_in((root / "examples", "two_people.jpg"))
    people.recluster()
    assert wrong not in {f.ref for f in people.faces_of(biden)}

    reloaded = People.load(store, [root], records)
    reloaded.recluster()
    assert wrong not in {f.ref for f in reloaded.faces_of(biden)}
    assert reloaded.person(biden).name == "Joe Biden"  # type: ignore[union-attr]
    assert len(reloaded.faces_of(biden)) == len(people.faces_of(biden))


def test_forgetting_files_and_copies(tmp_path: Path, store: Store) -> None:
    corpus()
    root = tmp_path / "lib"
    copies = ["examples/biden.jpg", "tests/test_images/biden.jpg"]  # the same bytes twice
    people = People.load(store, [root], library(root, copies + ["examples/obama.jpg"]))
    biden = person_of(people, "biden")
    assert people.person(biden).count == 2  # type: ignore[union-attr]
    people.forget(root / "examples", "biden.jpg")
    assert people.person(biden).count == 1  # type: ignore[union-attr]
    people.forget(root / "tests" / "test_images", "biden.jpg")
    assert people.person(biden) is None
    assert {p.count for p in people.list()} == {1}


def test_cache_keeps_incremental_ids_and_damage_is_survived(tmp_path: Path, store: Store) -> None:
    corpus()
    root = tmp_path / "lib"
    rels = list(TRUTH)
    random.Random(3).shuffle(rels)
    people = People(store, [root])
    for folder, record in library(root, rels):
        people.assign_new(folder, record)
    people.save()
    ids = sorted(p.id for p in people.list())
    assert sorted(p.id for p in People.load(store, [root], library(root, rels)).list()) == ids

    (store.library_dir(root) / CACHE_FILE).write_bytes(b'{"format": 1, "assign')
    (store.library_dir(root) / CHOICES_FILE).write_bytes(b"\x00garbage")
    fresh = People.load(store, [root], library(root, rels))
    assert len(fresh.list()) == len(ids)


def test_choices_from_several_machines_are_merged(tmp_path: Path, store: Store) -> None:
    corpus()
    root = tmp_path / "lib"
    records = library(root, list(TRUTH))
    people = People.load(store, [root], records)
    obama, biden = person_of(people, "obama"), person_of(people, "biden")
    people.name(obama, "Obama")
    directory = store.library_dir(root)
    theirs = {
        "format": 1,
        "names": {obama: {"name": "Barack", "at": "2999-01-01T00:00:00Z"},
                  biden: {"name": "Joe", "at": "2000-01-01T00:00:00Z"}},
    }
    conflict = directory / "people.sync-conflict-20240101-120000-ABCDEFG.json"
    conflict.write_bytes(orjson.dumps(theirs))
    merged = People.load(store, [root], records)
    assert merged.person(obama).name == "Barack"  # type: ignore[union-attr]
    assert merged.person(biden).name == "Joe"  # type: ignore[union-attr]
    merged.save()
    assert not conflict.exists()
    saved = orjson.loads((directory / CHOICES_FILE).read_bytes())
    assert saved["names"][obama]["name"] == "Barack"


def test_people_span_roots(tmp_path: Path, store: Store) -> None:
    corpus()
    home, usb = tmp_path / "home", tmp_path / "usb"
    records = library(home, ["examples/obama.jpg", "examples/biden.jpg"])
    records += library(usb, ["examples/obama2.jpg", "examples/two_people.jpg"])
    people = People.load(store, [home, usb], records)
    obama = person_of(people, "obama")
    assert people.person(obama).count == 3  # type: ignore[union-attr]
    people.name(obama, "Obama")
    for root in (home, usb):
        assert "Obama" in (store.library_dir(root) / CHOICES_FILE).read_text()
    home_cache = orjson.loads((store.library_dir(home) / CACHE_FILE).read_bytes())
    hashes = {faces_record(r)["hash"] for r in ("examples/obama.jpg", "examples/biden.jpg")}
    assert {ref.rpartition("#")[0] for ref in home_cache["assignments"]} == hashes
    only_usb = People.load(store, [usb], library(usb, ["examples/obama2.jpg"]))
    assert only_usb.person(obama).name == "Obama"  # type: ignore[union-attr]


def test_clip_and_photo_of_one_performer_are_one_person(tmp_path: Path, store: Store) -> None:
    corpus()
    root = tmp_path / "lib"
    records = library(root, [CLIP, "examples/lin-manuel-miranda.png", "examples/obama.jpg"])
    people = People.load(store, [root], records)
    by_files: dict[int, list[str]] = defaultdict(list)
    for person in people.list():
        by_files[person.count].append(person.id)
    assert len(by_files[2]) == 1 and len(by_files[1]) == 1
    (lin,) = by_files[2]
    faces = people.faces_of(lin)
    assert {f.time is None for f in faces} == {True, False}


def test_redetected_and_damaged_face_entries(tmp_path: Path, store: Store) -> None:
    corpus()
    root = tmp_path / "lib"
    ((folder, record),) = library(root, ["examples/two_people.jpg"])
    people = People.load(store, [root], [(folder, record)])
    assert len(people.list()) == 2
    record["faces"] = record["faces"][:1] + [{"encoding": "!!not base64", "box": [0]}, "junk"]
    assert len(people.assign_new(folder, record)) == 1
    assert len(people.list()) == 1
    record["faces"] = []
    assert people.assign_new(folder, record) == set()
    assert people.list() == []
