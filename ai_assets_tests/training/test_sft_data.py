"""Instruction (SFT) data: strict reading with every problem named by file:line and field, prompt-keyed
dedupe and splits that do not move, length checks, deterministic writing, and the bundled set."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import ai_assets
from ai_assets.lib.training.sft_data import (
    SftDataError,
    SftExample,
    check_lengths,
    content_version,
    dedupe,
    jsonl_text,
    read_sft_jsonl,
    split,
)

BUNDLED = Path(ai_assets.__file__).resolve().parent / "data" / "sft_examples" / "examples.jsonl"
LABELS = {"ingestion", "retrieval", "inference", "training", "deployment"}


def write_lines(path: Path, lines: list[Any]) -> Path:
    """Each entry a JSON value, or a str written verbatim (for broken lines)."""
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def chat(*turns: tuple[str, str]) -> dict[str, Any]:
    return {"messages": [{"role": role, "content": content} for role, content in turns]}


def example(question: str, answer: str, source: str = "test:1") -> SftExample:
    return SftExample((("system", "route it"), ("user", question), ("assistant", answer)), source)


def read_errors(tmp_path: Path, *lines: Any) -> str:
    path = write_lines(tmp_path / "bad.jsonl", list(lines))
    with pytest.raises(SftDataError) as raised:
        read_sft_jsonl(path)
    return str(raised.value)


def test_both_formats_are_read_into_conversations(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "mixed.jsonl",
        [
            chat(
                ("system", "Be brief."), ("user", "Hi?"), ("assistant", "Hello."), ("user", "2+2?"), ("assistant", "4")
            ),
            "",  # blank lines are skipped but still counted, so sources keep pointing at the right line
            {"prompt": "Capital of France?", "completion": "Paris", "id": 7},  # extra keys are ignored
            {"system": "Answer in one word.", "prompt": "Colour of the sky?", "completion": "blue", "synthetic": True},
        ],
    )
    multi_turn, pair, with_system = read_sft_jsonl(path)

    assert (multi_turn.source, pair.source, with_system.source) == (f"{path}:1", f"{path}:3", f"{path}:4")
    assert multi_turn.answer == "4"
    assert multi_turn.prompt == (("system", "Be brief."), ("user", "Hi?"), ("assistant", "Hello."), ("user", "2+2?"))
    assert multi_turn.prompt_chat()[-1] == {"role": "user", "content": "2+2?"}
    assert multi_turn.chat()[-1] == {"role": "assistant", "content": "4"}
    assert pair.messages == (("user", "Capital of France?"), ("assistant", "Paris")) and not pair.synthetic
    assert with_system.messages[0] == ("system", "Answer in one word.") and with_system.synthetic
    assert pair.to_json() == {
        "messages": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris"}]
    }
    assert with_system.to_json()["synthetic"] is True


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"messages": [', "bad.jsonl:1: json: invalid JSON (Expecting"),
        ("[1, 2]", "bad.jsonl:1: json: expected an object, got list"),
        ({"question": "q", "answer": "a"}, "bad.jsonl:1: messages: neither chat format"),
        ({**chat(("user", "q"), ("assistant", "a")), "prompt": "q"}, "bad.jsonl:1: messages: both"),
        ({"messages": []}, "bad.jsonl:1: messages: must be a non-empty list of messages, got an empty list"),
        ({"messages": "hello"}, "bad.jsonl:1: messages: must be a non-empty list of messages, got str"),
        ({"messages": ["hello", {"role": "assistant", "content": "a"}]}, "bad.jsonl:1: messages[0]: must be an object"),
        (
            chat(("human", "q"), ("assistant", "a")),
            'bad.jsonl:1: messages[0].role: must be one of system, user, assistant, got "human"',
        ),
        (
            {"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "a"}]},
            "bad.jsonl:1: messages[0].content: must be a string, got int",
        ),
        (
            chat(("user", "q"), ("assistant", "  \n")),
            "bad.jsonl:1: messages[1].content: must not be empty or whitespace",
        ),
        (
            chat(("user", "q"), ("assistant", "a"), ("user", "and?")),
            'bad.jsonl:1: messages[2].role: the last message must be "assistant", got "user"',
        ),
        (chat(("system", "s"), ("assistant", "a")), 'bad.jsonl:1: messages: no "user" message'),
        (
            chat(("user", "q"), ("user", "q2"), ("assistant", "a")),
            'bad.jsonl:1: messages[1].role: expected "assistant", got "user"',
        ),
        (
            chat(("user", "q"), ("system", "s"), ("assistant", "a")),
            'bad.jsonl:1: messages[1].role: "system" is allowed only as the first message',
        ),
        ({"prompt": "", "completion": "a"}, "bad.jsonl:1: prompt: must not be empty or whitespace"),
        ({"prompt": "q", "completion": ["a"]}, "bad.jsonl:1: completion: must be a string, got list"),
        ({"prompt": "q"}, "bad.jsonl:1: completion: missing"),
        ({"prompt": "q", "completion": "a", "system": None}, "bad.jsonl:1: system: must be a string, got NoneType"),
        (
            {"prompt": "q", "completion": "a", "synthetic": "yes"},
            'bad.jsonl:1: synthetic: must be true or false, got "yes"',
        ),
    ],
)
def test_each_problem_is_named_by_file_line_and_field(tmp_path: Path, line: Any, expected: str) -> None:
    assert expected in read_errors(tmp_path, line)


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    good = chat(("user", "fine"), ("assistant", "ok"))
    message = read_errors(
        tmp_path,
        good,
        "not json",
        good,
        {"prompt": "q", "completion": ""},
        chat(("user", "q"), ("user", "again")),
    )
    assert message.startswith(f"{tmp_path / 'bad.jsonl'}: 4 problem(s) in the training data:")
    assert f"\n{tmp_path / 'bad.jsonl'}:2: json: invalid JSON" in message
    assert "bad.jsonl:4: completion: must not be empty" in message
    # One line, two problems: both named.
    assert 'bad.jsonl:5: messages[1].role: expected "assistant"' in message
    assert 'bad.jsonl:5: messages[1].role: the last message must be "assistant"' in message
    assert "bad.jsonl:1:" not in message and "bad.jsonl:3:" not in message


def test_a_long_list_of_problems_is_cut_with_a_count(tmp_path: Path) -> None:
    message = read_errors(tmp_path, *["[]"] * 25)
    assert "bad.jsonl:20: json" in message and "bad.jsonl:21: json" not in message
    assert message.endswith("... and 5 more")


def test_a_missing_or_empty_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SftDataError, match=r"nowhere\.jsonl: training data file not found"):
        read_sft_jsonl(tmp_path / "nowhere.jsonl")
    (tmp_path / "blank.jsonl").write_text("\n  \n")
    with pytest.raises(SftDataError, match=r"blank\.jsonl: no examples"):
        read_sft_jsonl(tmp_path / "blank.jsonl")


def test_an_example_built_in_code_is_checked_too() -> None:
    with pytest.raises(
        SftDataError, match=r'^generated:3: .*messages\[1\]\.role: the last message must be "assistant"'
    ):
        SftExample((("user", "q"), ("user", "q2")), "generated:3")


def test_dedupe_keeps_the_first_answer_to_a_prompt() -> None:
    first = example("Why is my run queued?", "ingestion", "a:1")
    other_answer = example("Why is my run queued?", "deployment", "a:2")
    different_system = SftExample((("user", "Why is my run queued?"), ("assistant", "ingestion")), "a:3")
    unrelated = example("Search is slow", "retrieval", "a:4")
    assert first.key == other_answer.key != different_system.key

    kept, dropped = dedupe([first, other_answer, different_system, unrelated, other_answer])

    assert kept == [first, different_system, unrelated] and dropped == 2


def many(count: int, prefix: str = "ticket") -> list[SftExample]:
    return [example(f"{prefix} {i}", "inference", f"many:{i}") for i in range(count)]


def test_split_does_not_move_when_data_is_added() -> None:
    examples = many(200)
    train, validation = split(examples, 0.2)
    assert train and validation and len(train) + len(validation) == 200
    assert split(examples, 0.2) == (train, validation)

    grown_train, grown_validation = split([*many(300, "new ticket"), *examples], 0.2)
    assert set(train) <= set(grown_train) and set(validation) <= set(grown_validation)
    assert split(examples, 0.2, seed="another seed") != (train, validation)


def test_one_prompt_never_lands_in_both_splits() -> None:
    examples = [example(f"ticket {i % 40}", f"answer {i}", f"dup:{i}") for i in range(120)]
    train, validation = split(examples, 0.3)
    assert train and validation
    assert not {e.key for e in train} & {e.key for e in validation}


def test_a_tiny_set_still_gets_both_splits() -> None:
    two = many(2)
    for fraction in (0.01, 0.5, 0.99):
        train, validation = split(two, fraction)
        assert len(train) == len(validation) == 1


def test_a_split_that_cannot_be_made_is_refused() -> None:
    with pytest.raises(SftDataError, match="LLM_VALIDATION_FRACTION"):
        split(many(10), 1.0)
    with pytest.raises(SftDataError, match="LLM_VALIDATION_FRACTION"):
        split(many(10), 0)
    with pytest.raises(SftDataError, match="at least 2 distinct prompts"):
        split(many(1), 0.2)
    with pytest.raises(SftDataError, match="at least 2 distinct prompts"):
        split([example("same", "a"), example("same", "b")], 0.2)


def test_too_long_examples_are_named_with_their_length() -> None:
    short, long = example("short", "a", "set.jsonl:1"), example("a much longer ticket " * 20, "b", "set.jsonl:2")

    def words(e: SftExample) -> int:
        return sum(len(content.split()) for _, content in e.messages)

    check_lengths([short], words, max_tokens=10)
    with pytest.raises(SftDataError) as raised:
        check_lengths([short, long], words, max_tokens=10)
    message = str(raised.value)
    assert f"set.jsonl:2: {words(long)} tokens > 10" in message and "set.jsonl:1" not in message
    assert "max_seq_len" in message and "shorten" in message


def test_written_examples_read_back_and_rewrite_to_the_same_bytes(tmp_path: Path) -> None:
    examples = [
        example("Ünïcode — and a | pipe\u2028inside", "ingestion"),
        SftExample((("user", "q"), ("assistant", "a")), "x:2", synthetic=True),
    ]
    first = tmp_path / "train.jsonl"
    first.write_text(jsonl_text(examples), encoding="utf-8")
    assert "Ünïcode" in first.read_text(encoding="utf-8")  # not \u-escaped

    back = read_sft_jsonl(first)
    assert [(e.messages, e.synthetic) for e in back] == [(e.messages, e.synthetic) for e in examples]
    assert jsonl_text(back) == first.read_text(encoding="utf-8")
    assert content_version(back) == content_version(examples)


def test_a_split_written_with_origins_still_names_the_users_file_and_line(tmp_path: Path) -> None:
    source = write_lines(
        tmp_path / "mine.jsonl", [chat(("user", "a"), ("assistant", "x")), "", chat(("user", "b"), ("assistant", "y"))]
    )
    examples = read_sft_jsonl(source)
    split_file = tmp_path / "train.jsonl"
    split_file.write_text(jsonl_text(examples, with_origin=True), encoding="utf-8")
    again = read_sft_jsonl(split_file)
    assert [e.source for e in again] == [f"{source}:1", f"{source}:3"]
    assert content_version(again) == content_version(examples)  # where it came from is not its content
    with pytest.raises(SftDataError, match=r"longer than max_seq_len[\s\S]*mine.jsonl:3: 5 tokens > 1"):
        check_lengths(again, lambda e: 1 if e.answer == "x" else 5, 1)
    assert ": origin: must be a non-empty string" in read_errors(
        tmp_path, {**chat(("user", "a"), ("assistant", "x")), "origin": 3}
    )


def test_the_content_version_follows_the_content() -> None:
    examples = [example("a", "training"), example("b", "retrieval")]
    version = content_version(examples)
    assert version == content_version([example("a", "training", "elsewhere:9"), example("b", "retrieval")])
    assert content_version([example("a", "training"), example("b", "inference")]) != version
    assert content_version(list(reversed(examples))) != version


def test_the_bundled_set_reads_cleanly_and_is_balanced(tmp_path: Path) -> None:
    examples = read_sft_jsonl(BUNDLED)
    assert len(examples) >= 140
    kept, dropped = dedupe(examples)
    assert dropped == 0 and len({e.messages[1][1] for e in examples}) == len(examples)

    labels = Counter(e.answer for e in examples)
    assert set(labels) == LABELS and min(labels.values()) >= 20, labels
    assert len({e.messages[0] for e in examples}) == 1 and all(len(e.messages) == 3 for e in examples)

    train, validation = split(kept, 0.2)
    assert 0.12 <= len(validation) / len(kept) <= 0.28
    assert set(Counter(e.answer for e in validation)) == LABELS  # every label is scored
    # Kept in the form jsonl_text gives it, so a diff of the file is a diff of the data.
    assert jsonl_text(examples) == BUNDLED.read_text(encoding="utf-8")
