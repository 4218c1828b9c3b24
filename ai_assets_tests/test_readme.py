"""What the README promises a new user, checked against the code it describes."""

from __future__ import annotations

import re

from ai_assets.lib import settings
from ai_assets_tests.corpora import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command() -> None:
    # The set-up section's second command is what CI proves: the same line, not a cousin of it.
    block = README.split("## Set-up: two commands", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2, commands
    ci = (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    assert commands[1] in ci, f"the README's test command is not a line of .ci/run:\n{commands[1]}"


def test_the_configuration_reference_has_one_row_per_setting() -> None:
    reference = README.split("### Every setting", 1)[1]
    rows = re.findall(r"^\| `([A-Z0-9_]+)` \| (.*?) \| (.*?) \| (.*?) \|$", reference, re.M)
    assert [name for name, *_ in rows] == list(settings.SETTINGS), "one row per setting, in registry order"
    for name, default, expected, meaning in rows:
        # The valid values are the registry's own words: the same the error for a bad value quotes.
        assert expected == settings.SETTINGS[name].expected, name
        assert default and meaning, name


def test_every_picture_the_readme_shows_exists() -> None:
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README)
    assert pictures, "the README shows the UI"
    for picture in pictures:
        path = REPO_ROOT / picture
        assert path.is_file() and path.stat().st_size > 10_000, picture
