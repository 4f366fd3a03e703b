"""Task ids: TPI compatibility, determinism, normalisation, length limits, self-validation."""

from __future__ import annotations

import dataclasses
import random
import re
import string

import pytest

from tpi_core import identifier
from tpi_core.identifier import TaskId, deterministic, is_task_id, normalize, parse, random_id

LONG = re.compile(r"tpi-[a-z0-9](?:[a-z0-9-]*[a-z0-9])?-[a-z0-9]{8}-[a-z0-9]{8}")


def _names(count: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits + string.punctuation + " éß漢\t"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
            for _ in range(count)]


def test_matches_tpi_compatibility_vector():
    # TPI's identifier_test.go "compatibility": Identifier("test") -> these exact strings
    task_id = deterministic("test", seed="test")
    assert task_id.long == "tpi-test-3z4xlzwq-3u0vweb4"
    assert task_id.short == "3z4xlzwq3u0vweb4"


def test_matches_tpi_docs_example():
    assert deterministic("Hello, World!", seed="Hello, World!").long == \
        "tpi-hello-world-5kz6ldls-57wo7rsp"


@pytest.mark.parametrize(("raw", "expected"), [
    ("Hello, World!", "hello-world"),
    ("train_model", "train-model"),
    ("--a--b--", "a-b"),
    ("ÄÖÜ x", "x"),
    ("MiXeD123", "mixed123"),
    ("a" * 40, "a" * 28),
    ("a" * 27 + "-b", "a" * 27),  # cut at 28 leaves a trailing '-', which is stripped
    ("!!!", ""),
])
def test_normalize(raw, expected):
    assert normalize(raw) == expected


def test_deterministic_is_stable_and_seed_dependent():
    first = deterministic("train", seed="/home/a/project/train")
    assert first == deterministic("train", seed="/home/a/project/train")
    assert first.long == deterministic("train", seed="/home/a/project/train").long
    other_project = deterministic("train", seed="/home/b/project/train")
    assert other_project.name == first.name == "train"
    assert other_project.salt != first.salt
    assert other_project.long != first.long
    assert deterministic("eval", seed="/home/a/project/train").long != first.long


def test_name_without_letters_or_digits_gets_fallback():
    task_id = deterministic("___", seed="x")
    assert task_id.name == identifier.FALLBACK_NAME
    assert parse(task_id.long) == task_id


@pytest.mark.parametrize("name", _names(300))
def test_shape_and_length_limits(name):
    task_id = deterministic(name, seed=name)
    assert LONG.fullmatch(task_id.long), task_id.long
    assert len(task_id.long) <= identifier.MAX_LONG_LENGTH == 50
    assert len(task_id.name) <= identifier.NAME_LENGTH == 28
    assert re.fullmatch(r"[a-z0-9]{16}", task_id.short)
    assert task_id.long.endswith(f"-{task_id.salt}-{task_id.short[8:]}")
    assert str(task_id) == task_id.long


def test_longest_name_gives_exactly_fifty_characters():
    assert len(deterministic("x" * 200, seed="s").long) == 50


@pytest.mark.parametrize("name", _names(100, seed=11))
def test_parse_round_trip(name):
    for task_id in (deterministic(name, seed="seed" + name), random_id(name)):
        assert parse(task_id.long) == task_id
        assert is_task_id(task_id.long)


def test_random_ids_differ_and_validate():
    ids = {random_id("job").long for _ in range(50)}
    assert len(ids) == 50
    assert all(is_task_id(i) and i.startswith("tpi-job-") for i in ids)
    assert random_id().name == identifier.FALLBACK_NAME


def _tamper(text: str, index: int) -> str:
    replacement = "0" if text[index] != "0" else "1"
    return text[:index] + replacement + text[index + 1:]


@pytest.mark.parametrize("where", ["name", "salt", "hash"])
def test_parse_rejects_tampered_ids(where):
    task_id = deterministic("hello-world", seed="seed")
    text = task_id.long
    index = {"name": 4, "salt": len(text) - 12, "hash": len(text) - 1}[where]
    tampered = _tamper(text, index)
    assert tampered != text
    with pytest.raises(ValueError):
        parse(tampered)
    assert not is_task_id(tampered)


@pytest.mark.parametrize("text", [
    "",
    "tpi",
    "hello-world",
    "tpi-hello-world-5kz6ldls",
    "TPI-HELLO-WORLD-5KZ6LDLS-57WO7RSP",
    "tpi-hello-world-5kz6ldls-57wo7rsp\n",
    " tpi-hello-world-5kz6ldls-57wo7rsp",
    "tpi-hello--world-5kz6ldls-57wo7rsp",
    "tpi--5kz6ldls-57wo7rsp",
    "tpi-hello-world-5kz6ldl-57wo7rsp",
    "tpi-hello-world-5kz6ldlss-57wo7rsp",
    "xyz-hello-world-5kz6ldls-57wo7rsp",
])
def test_parse_rejects_other_strings(text):
    with pytest.raises(ValueError):
        parse(text)
    assert not is_task_id(text)


def test_parse_accepts_the_unchanged_id():
    assert parse("tpi-hello-world-5kz6ldls-57wo7rsp") == TaskId("hello-world", "5kz6ldls")


def test_parse_rejects_a_name_over_the_limit_even_with_a_matching_hash():
    name, salt = "a" * 29, "abcdefgh"
    forged = f"tpi-{name}-{salt}-{identifier.digest(name + salt)}"
    with pytest.raises(ValueError):
        parse(forged)


def test_parse_rejects_non_strings():
    with pytest.raises(ValueError):
        parse(None)  # type: ignore[arg-type]


def test_task_id_is_frozen_and_normalises():
    task_id = TaskId("Hello, World!", "5kz6ldls")
    assert task_id.name == "hello-world"
    assert task_id.long == "tpi-hello-world-5kz6ldls-57wo7rsp"
    with pytest.raises(dataclasses.FrozenInstanceError):
        task_id.salt = "00000000"  # type: ignore[misc]


@pytest.mark.parametrize("salt", ["", "short", "UPPERCAS", "toolong12", "abc-efgh", 12345678])
def test_task_id_rejects_bad_salt(salt):
    with pytest.raises(ValueError):
        TaskId("x", salt)
