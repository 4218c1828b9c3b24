"""Partition keys of batch inference: distinct for distinct file names, never a way out of the data folder."""

from __future__ import annotations

import json
import random
from pathlib import Path

import dagster as dg
import pytest

from ai_assets.defs.inference.automation import inference_inbox_sensor
from ai_assets.lib.inference.files import (
    MAX_KEY_BYTES,
    InvalidPartitionKeyError,
    check_partition_key,
    key_for_name,
    partition_key_for,
)
from ai_assets_tests.resources import inference_folders, settings_resources

HOSTILE_KEYS = [
    "../../../../outside/evil.jsonl",
    "/etc/passwd",
    "..",
    ".",
    "",
    "sub/dir.jsonl",
    "back\\slash.jsonl",
    ".hidden.jsonl",
    "a...b.jsonl",
    "tab\there.jsonl",
    "x" * (MAX_KEY_BYTES + 1),
]


def test_safe_names_are_their_own_keys() -> None:
    names = ["prompts.jsonl", "batch_2024-01-02.v3.jsonl", "日本.jsonl", "中国.jsonl", "Ωmega.jsonl", "हिन्दी.jsonl"]
    for name in names:
        assert key_for_name(name) == name
        assert check_partition_key(name) == name


def test_names_that_differ_get_different_keys() -> None:
    # Before: both were "_.jsonl", and the second submit overwrote the first.
    assert key_for_name("日本.jsonl") != key_for_name("中国.jsonl")
    # Names that differ only in replaced characters differ by the hash of the original name.
    replaced = ["a b.jsonl", "a?b.jsonl", "a  b.jsonl", "a_b.jsonl", "a\u202eb.jsonl", "a/b.jsonl"]
    keys = [key_for_name(name) for name in replaced]
    assert len(set(keys)) == len(replaced), keys
    assert keys[0].startswith("a_b-") and keys[0].endswith(".jsonl")
    assert key_for_name("a b.jsonl") == key_for_name("a b.jsonl")  # deterministic across calls


def test_every_generated_key_is_valid_and_stable() -> None:
    rng = random.Random(7)
    alphabet = "ab.-_ /\\\t\n\x00é\u0301日本\u202e\u200b?*:" + "".join(chr(c) for c in range(0x20, 0x7F))
    for _ in range(3000):
        name = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 300)))
        key = key_for_name(name)
        assert check_partition_key(key) == key, (name, key)
        assert len(key.encode()) <= MAX_KEY_BYTES
        assert "/" not in key and not key.startswith(".") and "..." not in key


def test_paths_refuse_hostile_keys_naming_the_key(inbox: Path) -> None:
    for key in HOSTILE_KEYS:
        folders = inference_folders()
        for build in (
            folders.input_path,
            folders.output_path,
            lambda k, folders=folders: folders.ledger_path(k, "0" * 64),
        ):
            with pytest.raises(InvalidPartitionKeyError) as raised:
                build(key)
            assert repr(key) in str(raised.value)


def test_paths_stay_inside_their_folders_even_through_a_symlink(inbox: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.jsonl").write_text('{"id": 1, "prompt": "private"}\n')
    (inbox / "linked.jsonl").symlink_to(outside / "secret.jsonl")
    with pytest.raises(InvalidPartitionKeyError, match="'linked.jsonl'.*outside"):
        inference_folders().input_path("linked.jsonl")
    assert inference_folders().input_path("plain.jsonl") == inbox / "plain.jsonl"
    assert inference_folders().output_path("日本.jsonl").name == "日本.jsonl.outputs.jsonl"


def test_sensor_keeps_unicode_files_apart_and_skips_unsafe_ones(
    inbox: Path, tmp_path: Path, instance: dg.DagsterInstance, capfd: pytest.CaptureFixture[str]
) -> None:
    for name in ["日本.jsonl", "中国.jsonl", "with space.jsonl"]:
        (inbox / name).write_text(json.dumps({"id": 1, "prompt": name}) + "\n")
    outside = tmp_path / "outside.jsonl"
    outside.write_text('{"id": 1, "prompt": "private"}\n')
    (inbox / "escape.jsonl").symlink_to(outside)

    # The inference resource holds the data folder (a nested resource): the context opens them.
    with dg.build_sensor_context(instance=instance, resources={"inference": settings_resources()["inference"]}) as ctx:
        result = inference_inbox_sensor(ctx)
    assert isinstance(result, dg.SensorResult)
    assert sorted(r.partition_key for r in result.run_requests) == ["中国.jsonl", "日本.jsonl"]
    assert sorted(result.dynamic_partitions_requests[0].partition_keys) == ["中国.jsonl", "日本.jsonl"]
    logged = capfd.readouterr().err  # the sensor's log, as `dagster dev` shows it
    assert f"{inbox / 'with space.jsonl'}: skipped" in logged
    assert f"rename it to {partition_key_for(Path('with space.jsonl'))}" in logged
    assert f"ai_assets.lib.inference.submit '{inbox / 'with space.jsonl'}'" in logged
    assert f"{inbox / 'escape.jsonl'}: skipped" in logged and "outside" in logged
