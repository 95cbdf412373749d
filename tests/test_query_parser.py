"""The query parser: every syntax form, every rejected query, and parse/print round trips."""

from __future__ import annotations

import doctest
from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import scanpixd.query.parser as parser_module
from scanpixd.errors import QueryError
from scanpixd.query import (
    CameraFilter,
    DateFilter,
    FolderFilter,
    NearFilter,
    NearPlaceFilter,
    PersonFilter,
    PlaceFilter,
    Query,
    SemanticTerm,
    SimilarTerm,
    TypeFilter,
    parse,
)

T = SemanticTerm
MAX = date.max
MIN = date.min


def d(text: str) -> date:
    return date.fromisoformat(text)


def terms(*items: SemanticTerm) -> Query:
    return Query(terms=tuple(items))


def filters(*items: object) -> Query:
    return Query(filters=tuple(items))  # type: ignore[arg-type]


SYNTAX = [
    ("", Query()),
    ("   ", Query()),
    ("dog", terms(T("dog"))),
    ("dog on the beach", terms(T("dog on the beach"))),
    ("  dog   on\tthe\nbeach ", terms(T("dog on the beach"))),
    ("dog + beach", terms(T("dog"), T("beach"))),
    ("dog+beach", terms(T("dog"), T("beach"))),
    ("dog +beach", terms(T("dog"), T("beach"))),
    ("big dog + sandy beach + sky", terms(T("big dog"), T("sandy beach"), T("sky"))),
    ("dog^2", terms(T("dog", 2.0))),
    ("dog^0.5", terms(T("dog", 0.5))),
    ("dog^.5", terms(T("dog", 0.5))),
    ("dog^100", terms(T("dog", 100.0))),
    ("big dog^2", terms(T("big dog", 2.0))),
    ("dog^2 beach", terms(T("dog", 2.0), T("beach"))),
    ("dog^2 + beach", terms(T("dog", 2.0), T("beach"))),
    ('"red car"^0.5', terms(T("red car", 0.5))),
    ('"red   car"', terms(T("red car"))),
    ('a "red car" parked', terms(T("a red car parked"))),
    ('meeting at "10:30"', terms(T("meeting at 10:30"))),
    ('"http://example.com"', terms(T("http://example.com"))),
    ('"c++"', terms(T("c++"))),
    ('"-snow"', terms(T("-snow"))),
    ("don't panic", terms(T("don't panic"))),
    ("t-shirt", terms(T("t-shirt"))),
    ("dog -snow", terms(T("dog"), T("snow", negative=True))),
    ("-snow dog", terms(T("dog"), T("snow", negative=True))),
    ("dog -snow beach", terms(T("dog beach"), T("snow", negative=True))),
    ('dog -"parking lot"', terms(T("dog"), T("parking lot", negative=True))),
    ("dog -snow^2", terms(T("dog"), T("snow", 2.0, True))),
    ('dog -"deep snow"^3', terms(T("dog"), T("deep snow", 3.0, True))),
    ("dog + -snow", terms(T("dog"), T("snow", negative=True))),
    ("dog+-snow", terms(T("dog"), T("snow", negative=True))),
    ("date:2023", filters(DateFilter(d("2023-01-01"), d("2023-12-31")))),
    ("DATE:2023", filters(DateFilter(d("2023-01-01"), d("2023-12-31")))),
    ("date:2024-02", filters(DateFilter(d("2024-02-01"), d("2024-02-29")))),
    ("date:2023-02", filters(DateFilter(d("2023-02-01"), d("2023-02-28")))),
    ("date:2023-6-1", filters(DateFilter(d("2023-06-01"), d("2023-06-01")))),
    ("date:2023-06-01", filters(DateFilter(d("2023-06-01"), d("2023-06-01")))),
    ("date:2023-06..2023-08", filters(DateFilter(d("2023-06-01"), d("2023-08-31")))),
    ("date:2020..2021-03-15", filters(DateFilter(d("2020-01-01"), d("2021-03-15")))),
    ("date:2023-06..2023-06", filters(DateFilter(d("2023-06-01"), d("2023-06-30")))),
    ("date:2023..", filters(DateFilter(d("2023-01-01"), MAX))),
    ("date:..2020-01", filters(DateFilter(MIN, d("2020-01-31")))),
    ('date:"2023"', filters(DateFilter(d("2023-01-01"), d("2023-12-31")))),
    ("-date:2023", filters(DateFilter(d("2023-01-01"), d("2023-12-31"), negated=True))),
    ("type:photo", filters(TypeFilter("photo"))),
    ("type:image", filters(TypeFilter("photo"))),
    ("type:Videos", filters(TypeFilter("video"))),
    ("-type:video", filters(TypeFilter("video", negated=True))),
    ("camera:canon", filters(CameraFilter("canon"))),
    ('camera:"Canon EOS"', filters(CameraFilter("Canon EOS"))),
    ('camera:" Canon EOS "', filters(CameraFilter("Canon EOS"))),
    ("camera:a:b", filters(CameraFilter("a:b"))),
    ("-camera:iphone", filters(CameraFilter("iphone", negated=True))),
    ("folder:Trips", filters(FolderFilter("Trips"))),
    ('folder:"/mnt/my photos/2023"', filters(FolderFilter("/mnt/my photos/2023"))),
    ("folder:C++", filters(FolderFilter("C++"))),
    ("place:Italy", filters(PlaceFilter("Italy"))),
    ('place:"Rome, Italy"', filters(PlaceFilter("Rome, Italy"))),
    ("-place:Paris", filters(PlaceFilter("Paris", negated=True))),
    ("person:alice", filters(PersonFilter("alice"))),
    ('person:"Ann Lee"', filters(PersonFilter("Ann Lee"))),
    ("-person:bob", filters(PersonFilter("bob", negated=True))),
    ("near:45.4,12.3,5km", filters(NearFilter(45.4, 12.3, 5000.0))),
    ("near:45.4,12.3", filters(NearFilter(45.4, 12.3, 1000.0))),
    ("near:-33.86,151.2,500m", filters(NearFilter(-33.86, 151.2, 500.0))),
    ("near:+10,-20,2", filters(NearFilter(10.0, -20.0, 2000.0))),
    ("near:0,0,1mi", filters(NearFilter(0.0, 0.0, 1609.344))),
    ("near:0,0,1.5KM", filters(NearFilter(0.0, 0.0, 1500.0))),
    ("near:Paris", filters(NearPlaceFilter("Paris", 25000.0))),
    ("near:Paris,10km", filters(NearPlaceFilter("Paris", 10000.0))),
    ("near:Paris,3", filters(NearPlaceFilter("Paris", 3000.0))),
    ('near:"Lake Como",10km', filters(NearPlaceFilter("Lake Como", 10000.0))),
    ('near:"Paris, France"', filters(NearPlaceFilter("Paris, France", 25000.0))),
    ('near:"45"', filters(NearPlaceFilter("45", 25000.0))),
    ("-near:45,12,5km", filters(NearFilter(45.0, 12.0, 5000.0, negated=True))),
    ("similar:IMG_0042.jpg", Query(similar=(SimilarTerm("IMG_0042.jpg"),))),
    ('similar:"My Photos/a b.jpg"', Query(similar=(SimilarTerm("My Photos/a b.jpg"),))),
    ("similar:x.jpg^2", Query(similar=(SimilarTerm("x.jpg", 2.0),))),
    ('similar:"x^2"', Query(similar=(SimilarTerm("x^2"),))),
    ("similar:a^b.jpg", Query(similar=(SimilarTerm("a^b.jpg"),))),
    ("similar:C:/x.jpg", Query(similar=(SimilarTerm("C:/x.jpg"),))),
    (
        "similar:a.jpg -similar:b.jpg",
        Query(similar=(SimilarTerm("a.jpg"), SimilarTerm("b.jpg", negative=True))),
    ),
    (
        "beach + similar:a.jpg",
        Query(terms=(T("beach"),), similar=(SimilarTerm("a.jpg"),)),
    ),
    (
        "date:2023 -snow",
        Query(
            terms=(T("snow", negative=True),),
            filters=(DateFilter(d("2023-01-01"), d("2023-12-31")),),
        ),
    ),
    (
        "dog date:2023 on the beach",
        Query(
            terms=(T("dog on the beach"),), filters=(DateFilter(d("2023-01-01"), d("2023-12-31")),)
        ),
    ),
    (
        "dog + date:2023 beach",
        Query(
            terms=(T("dog"), T("beach")), filters=(DateFilter(d("2023-01-01"), d("2023-12-31")),)
        ),
    ),
    (
        '"dog on the beach" date:2023 place:Italy -snow',
        Query(
            terms=(T("dog on the beach"), T("snow", negative=True)),
            filters=(DateFilter(d("2023-01-01"), d("2023-12-31")), PlaceFilter("Italy")),
        ),
    ),
]


@pytest.mark.parametrize(("text", "expected"), SYNTAX, ids=[s[0] or "<empty>" for s in SYNTAX])
def test_syntax(text: str, expected: Query) -> None:
    assert parse(text) == expected


ERRORS = [
    # (query, fragment quoted, words the message must hold)
    ('"red car', '"red car', "unbalanced quote"),
    ('camera:"Canon EOS', '"Canon EOS', "unbalanced quote"),
    ('dog "', '"', "unbalanced quote"),
    ("-", "-", "must be followed"),
    ("dog - beach", "-", "must be followed"),
    ("--snow", "--snow", "must be followed"),
    ('-""', '-""', "no text"),
    ('""', '""', "no text"),
    ("+", "+", "joins two terms"),
    ("+ dog", "+", "joins two terms"),
    ("dog +", "+", "joins nothing"),
    ("dog + + beach", "+", "joins two terms"),
    ("c++", "+", "joins two terms"),
    ("date:2023 + dog", "+", "joins two terms"),
    ("dog + date:2023", "+", "joins nothing"),
    ("dog^", "dog^", "bad weight"),
    ("dog^0", "dog^0", "bad weight"),
    ("dog^-1", "dog^-1", "bad weight"),
    ("dog^abc", "dog^abc", "bad weight"),
    ("dog^1e3", "dog^1e3", "bad weight"),
    ("dog^101", "dog^101", "bad weight"),
    ("dog^2^3", "dog^2^3", "bad weight"),
    ("^2", "^2", "no text"),
    ("similar:x.jpg^0", "x.jpg^0", "bad weight"),
    ("-snow", "-snow", "only demotes"),
    ("-snow -rain", "-snow", "only demotes"),
    ("-json", "-json", "only demotes"),
    ("-similar:x.jpg", "-similar:x.jpg", "only demotes"),
    ("beach at 10:30", "10:30", "unknown field '10'"),
    ("http://example.com", "http://example.com", "unknown field 'http'"),
    ("colour:red", "colour:red", "unknown field 'colour'"),
    ("-colour:red", "-colour:red", "unknown field"),
    (":x", ":x", "missing field name"),
    ('"a":b', '"a":b', "unexpected ':'"),
    ("date:", "date:", "empty value"),
    ('camera:""', 'camera:""', "empty value"),
    ('person:"  "', 'person:"  "', "empty value"),
    ("similar:", "similar:", "empty value"),
    ("similar:^2", "^2", "needs the path"),
    ("date:2023-13", "2023-13", "bad date"),
    ("date:2023-00", "2023-00", "bad date"),
    ("date:0000", "0000", "bad date"),
    ("date:2023-02-29", "2023-02-29", "no day 29"),
    ("date:2023-04-31", "2023-04-31", "no day 31"),
    ("date:23", "23", "bad date"),
    ("date:2023/06", "2023/06", "bad date"),
    ("date:yesterday", "yesterday", "bad date"),
    ("date:2023-06..2023-13", "2023-13", "bad date"),
    ("date:2023-01-01..2023-0", "2023-0", "bad date"),
    ("date:2024..2023", "2024..2023", "ends before it starts"),
    ("date:2023-08..2023-06", "2023-08..2023-06", "ends before it starts"),
    ("date:..", "..", "at least one side"),
    ("date:2023...2024", ".2024", "bad date"),
    ("type:audio", "audio", "unknown type"),
    ("near:45.4", "45.4", "cannot read"),
    ("near:45.4,Paris", "45.4,Paris", "cannot read"),
    ("near:1,2,3km,4", "1,2,3km,4", "cannot read"),
    ("near:Paris,5km,x", "Paris,5km,x", "cannot read"),
    ("near:45.4,12.3,5xx", "5xx", "bad radius"),
    ("near:45.4,12.3,0km", "0km", "bad radius"),
    ("near:45.4,12.3,-5km", "-5km", "bad radius"),
    ("near:Paris,France", "France", "bad radius"),
    ("near:91,0", "91,0", "off the map"),
    ("near:0,181", "0,181", "off the map"),
    ("near:45,", "45,", "empty part"),
    ("near:45, 12", "45,", "empty part"),
    ("near:,5km", ",5km", "empty part"),
]


@pytest.mark.parametrize(("text", "fragment", "words"), ERRORS, ids=[e[0] for e in ERRORS])
def test_rejected(text: str, fragment: str, words: str) -> None:
    with pytest.raises(QueryError) as caught:
        parse(text)
    error = caught.value
    assert error.fragment == fragment
    assert error.position is not None
    assert text[error.position :].startswith(fragment)
    message = str(error)
    assert words in message
    assert repr(fragment) in message or fragment in message


def test_error_points_at_the_bad_word_not_an_earlier_copy() -> None:
    with pytest.raises(QueryError) as caught:
        parse("dog^2 + beach dog^0")
    assert caught.value.position == len("dog^2 + beach ")


ARGV = [
    (["dog", "on", "the", "beach"], terms(T("dog on the beach"))),
    (["dog on the beach", "-snow"], terms(T("dog on the beach"), T("snow", negative=True))),
    (["dog + beach"], terms(T("dog"), T("beach"))),
    (["camera:Canon EOS"], filters(CameraFilter("Canon EOS"))),
    (["-camera:Canon EOS"], filters(CameraFilter("Canon EOS", negated=True))),
    (
        ["similar:/home/me/My Photos/a.jpg"],
        Query(similar=(SimilarTerm("/home/me/My Photos/a.jpg"),)),
    ),
    (["near:Lake Como,10km"], filters(NearPlaceFilter("Lake Como", 10000.0))),
    (["person:Ann Lee", "beach"], Query((T("beach"),), (), (PersonFilter("Ann Lee"),))),
    (['camera:"Canon EOS" dog'], Query((T("dog"),), (), (CameraFilter("Canon EOS"),))),
    (["dog date:2023"], Query((T("dog"),), (), (DateFilter(d("2023-01-01"), d("2023-12-31")),))),
    ([], Query()),
]


@pytest.mark.parametrize(("argv", "expected"), ARGV, ids=[" | ".join(a[0]) for a in ARGV])
def test_argv(argv: list[str], expected: Query) -> None:
    assert parse(argv) == expected


def test_argv_error_positions_count_in_the_joined_arguments() -> None:
    argv = ["dog", "camera:Canon EOS", "date:2023-13"]
    with pytest.raises(QueryError) as caught:
        parse(argv)
    joined = " ".join(argv)
    assert caught.value.fragment == "2023-13"
    assert joined[caught.value.position or 0 :].startswith("2023-13")


def test_date_values_with_spaces_in_one_argument_are_not_one_filter() -> None:
    with pytest.raises(QueryError, match="2023-13"):
        parse(["date:2023-13 dog"])


@pytest.mark.parametrize(("text", "expected"), SYNTAX, ids=[s[0] or "<empty>" for s in SYNTAX])
def test_printed_query_parses_back(text: str, expected: Query) -> None:
    assert parse(str(expected)) == expected


PRINTED = [
    ("  dog   on the beach ", "dog on the beach"),
    ("dog+beach -snow^2", "dog + beach -snow^2"),
    ('"red car"^0.5 -"parking lot"', 'red car^0.5 -"parking lot"'),
    ('meeting "10:30"', '"meeting 10:30"'),
    ("date:2023", "date:2023"),
    ("date:2023-06", "date:2023-06"),
    ("date:2023-06-01", "date:2023-06-01"),
    ("date:2023-06..2023-08", "date:2023-06..2023-08"),
    ("date:2023-01-15..2023-03", "date:2023-01-15..2023-03"),
    ("date:2023.. date:..2020-01", "date:2023.. date:..2020-01"),
    ('DATE:2023 -type:Videos camera:"Canon EOS"', 'date:2023 -type:video camera:"Canon EOS"'),
    ("near:45.4,12.3,5km near:Paris", 'near:45.4,12.3,5000m near:"Paris",25000m'),
    ('-similar:"a b.jpg"^2 beach', 'beach -similar:"a b.jpg"^2'),
    ("", ""),
]


@pytest.mark.parametrize(("text", "printed"), PRINTED, ids=[p[0] or "<empty>" for p in PRINTED])
def test_printed_form(text: str, printed: str) -> None:
    assert str(parse(text)) == printed


def test_query_sorts_terms_by_sign_and_kind() -> None:
    query = parse("dog + beach -snow similar:a.jpg date:2023")
    assert [t.text for t in query.positive_terms] == ["dog", "beach"]
    assert [t.text for t in query.negative_terms] == ["snow"]
    assert query.is_semantic and not query.is_empty
    assert not parse("date:2023 -snow").is_semantic
    assert parse("similar:a.jpg").is_semantic
    assert not parse("date:2023 -similar:a.jpg").is_semantic
    assert parse("").is_empty


def test_docstring_examples_hold() -> None:
    result = doctest.testmod(parser_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 8
    assert result.failed == 0


# --- properties -------------------------------------------------------------------------------

SYNTAX_CHARS = st.sampled_from(list(' "+-^:.,/\\abcdeéz019\t') + ["date:", "near:", "similar:"])
QUERYISH = st.lists(SYNTAX_CHARS, max_size=30).map("".join)


def _parse_or_error(query: str | list[str]) -> Query | QueryError:
    try:
        return parse(query)
    except QueryError as error:
        return error


def _check(query: str | list[str]) -> None:
    result = _parse_or_error(query)
    text = query if isinstance(query, str) else " ".join(query)
    if isinstance(result, QueryError):
        assert result.fragment
        if result.position is not None:
            assert text[result.position :].startswith(result.fragment)
    else:
        assert parse(str(result)) == result


@settings(deadline=None)  # a loaded machine must not turn slowness into failure
@given(st.text())
def test_any_text_parses_or_raises_query_error(text: str) -> None:
    _check(text)


@settings(deadline=None)  # a loaded machine must not turn slowness into failure
@given(QUERYISH)
def test_syntax_soup_parses_or_raises_query_error(text: str) -> None:
    _check(text)


@settings(deadline=None)  # a loaded machine must not turn slowness into failure
@given(st.lists(st.one_of(st.text(max_size=20), QUERYISH), max_size=5))
def test_any_argv_parses_or_raises_query_error(argv: list[str]) -> None:
    _check(argv)


WORD = st.text("abcdefghij", min_size=1, max_size=6)
PIECE = st.one_of(
    WORD,
    WORD.map(lambda w: f"-{w}"),
    st.tuples(WORD, st.integers(1, 100)).map(lambda p: f"{p[0]}^{p[1]}"),
    st.tuples(st.integers(1900, 2100), st.integers(1, 12)).map(lambda p: f"date:{p[0]}-{p[1]}"),
    st.sampled_from(["+", "type:photo", "-type:video", 'camera:"Canon EOS"', "near:Rome,3km"]),
    st.tuples(st.floats(-90, 90), st.floats(-180, 180)).map(lambda p: f"near:{p[0]},{p[1]}"),
    WORD.map(lambda w: f'similar:"{w} {w}.jpg"'),
)


@settings(deadline=None)  # a loaded machine must not turn slowness into failure
@given(st.lists(PIECE, max_size=8).map(" ".join))
def test_generated_queries_round_trip(text: str) -> None:
    _check(text)
