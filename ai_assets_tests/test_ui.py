"""The Dagster UI end to end, in a real headless browser, against `dagster dev -w workspace.yaml`.

What a user sees and does, read from the rendered pages (not from GraphQL): every asset group and asset
of the code location in the lineage graph; the `rag_ingestion` job materialized from its page and
followed on the run page until it succeeds; the row count, metadata and passed checks on the asset
pages; and a file dropped in the inference inbox added as a partition in the materialize dialog,
materialized, and answered by a local OpenAI-compatible server.

`AI_ASSETS_SCREENSHOTS=docs .venv/bin/pytest ai_assets_tests/test_ui.py` also writes the README's
screenshots (a folder relative to the repository root); without it they go to the test's tmp folder.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ai_assets_tests.browser import (
    Page,
    button,
    chromium,
    matches_truncated,
    require_browser,
    with_text,
    with_whole_text,
)
from ai_assets_tests.corpora import REPO_ROOT, scifact_records, write_markdown_corpus
from ai_assets_tests.dagster_processes import graphql, make_dagster_home, process_env, webserver
from ai_assets_tests.inference.openai_server import FakeOpenAIServer

pytestmark = pytest.mark.slow

LOCATION = "ai_assets"  # workspace.yaml's location_name
DOCUMENTS = 4  # a corpus this small embeds in seconds once the model is loaded
SCREENSHOTS = "AI_ASSETS_SCREENSHOTS"
# Generous for a loaded 2-core machine: the ingestion run loads torch and the embedding model.
RUN_TIMEOUT_S = 300


@dataclass(frozen=True)
class ExpectedGraph:
    """The code location as its definitions declare it: assets per group, check names per asset."""

    groups: dict[str, set[str]]
    checks: dict[str, set[str]]

    @property
    def assets(self) -> set[str]:
        return set().union(*self.groups.values())


def expected_graph() -> ExpectedGraph:
    # Imported when the test runs, not when pytest collects: loading the definitions fills the settings'
    # defaults into this process's environment.
    from ai_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    groups: dict[str, set[str]] = {}
    checks: dict[str, set[str]] = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        groups.setdefault(node.group_name, set()).add(key.to_user_string())
        checks[key.to_user_string()] = {check.name for check in node.check_keys}
    return ExpectedGraph(groups, checks)


@dataclass(frozen=True)
class DagsterUI:
    """The browser tab on the webserver, the data folder its runs write, the fake LLM they call."""

    page: Page
    data_dir: Path
    llm: FakeOpenAIServer
    screenshots: Path


SCHEDULES_AND_SENSORS = """
query($location: String!) {
  repositoryOrError(repositorySelector: {repositoryLocationName: $location, repositoryName: "__repository__"}) {
    ... on Repository { sensors { name sensorState { id status } } schedules { name scheduleState { id status } } }
  }
}
"""
STOP_SENSOR = "mutation($id: String) { stopSensor(id: $id) { __typename } }"
STOP_SCHEDULE = "mutation($id: String) { stopRunningSchedule(id: $id) { __typename } }"


def stop_automation(port: int) -> None:
    """Stop every sensor and schedule, so that the runs of the test are the only ones.

    They start RUNNING by default: the inference inbox sensor would add the test's partition itself
    (before the UI could) and launch its run, and rag_quality_automation would start a RAG evaluation
    after the ingestion run, competing for the two cores. Done before the test writes anything, so none
    of them has anything to react to yet.
    """
    repository = graphql(port, SCHEDULES_AND_SENSORS, {"location": LOCATION})["repositoryOrError"]
    for sensor in repository["sensors"]:
        if sensor["sensorState"]["status"] == "RUNNING":
            result = graphql(port, STOP_SENSOR, {"id": sensor["sensorState"]["id"]})["stopSensor"]
            assert result["__typename"] == "StopSensorMutationResult", (sensor["name"], result)
    for schedule in repository["schedules"]:
        if schedule["scheduleState"]["status"] == "RUNNING":
            result = graphql(port, STOP_SCHEDULE, {"id": schedule["scheduleState"]["id"]})["stopRunningSchedule"]
            assert result["__typename"] == "ScheduleStateResult", (schedule["name"], result)


@pytest.fixture
def dagster_ui(tmp_path: Path) -> Iterator[DagsterUI]:
    """`dagster dev` on a tiny corpus with a private DAGSTER_HOME, its LLM a local fake, and a browser."""
    require_browser()  # before spending a minute on the webserver
    corpus = tmp_path / "corpus"
    write_markdown_corpus(corpus, scifact_records(DOCUMENTS))
    data_dir = tmp_path / "data"
    home = make_dagster_home(tmp_path / "home")
    # The webserver shows a community sign-up dialog over every page until an instance has seen it once.
    (home / ".nux").mkdir()
    (home / ".nux" / "nux.yaml").write_text("seen: 1\n")
    screenshots = REPO_ROOT / os.environ[SCREENSHOTS] if os.environ.get(SCREENSHOTS) else tmp_path / "screenshots"
    with FakeOpenAIServer() as llm:
        env = process_env(
            home,
            AI_ASSETS_SOURCES=f"scifact={corpus}",
            AI_ASSETS_DATA_DIR=str(data_dir),
            OPENAI_BASE_URL=llm.base_url,
            OPENAI_API_KEY="sk-ui-test",
        )
        with webserver(home, env) as (process, port):
            stop_automation(port)
            with chromium() as driver:
                page = Page(driver, f"http://127.0.0.1:{port}", process.tail, tmp_path)
                yield DagsterUI(page, data_dir, llm, screenshots)


def test_graph_ingestion_run_and_inference_partition_through_the_ui(dagster_ui: DagsterUI) -> None:
    """One user session, in order: the graph, an ingestion run and its results, an inference partition."""
    expected = expected_graph()
    page, shots = dagster_ui.page, dagster_ui.screenshots

    # 1. The lineage graph shows every group, and every asset; each group's page names its assets.
    check_lineage(page, expected, shots / "asset-graph.png")

    # 2. Materialize the ingestion job from its page; the run page shows it succeed; the asset pages
    # show what it wrote and that the checks passed.
    page.open(f"/locations/{LOCATION}/jobs/rag_ingestion")
    run_id = launch_and_follow(page, button("Materialize all"), "the rag_ingestion job's Materialize all")
    wait_for_success(page, run_id)
    # Loaded afresh for the picture: the launch toast stays open while the pointer rests on its link.
    page.open(f"/runs/{run_id}")
    wait_for_success(page, run_id)
    page.find(with_text("RUN_SUCCESS"), "the RUN_SUCCESS event in the run's log")
    page.screenshot(shots / "run.png")

    page.open("/assets/raw_documents")
    assert page.labelled_value("Row count", "raw_documents' row count") == str(DOCUMENTS)
    assert page.metadata_value("documents") == str(DOCUMENTS)

    page.open("/assets/document_embeddings")
    points = int(page.metadata_value("point_count"))
    assert points >= DOCUMENTS  # at least one chunk per document
    assert int(page.metadata_value("chunks_embedded")) == points  # a first run embeds every chunk
    assert page.metadata_value("documents_added") == str(DOCUMENTS)
    page.find(with_text("Latest check results"), "the status section's check results")
    page.screenshot(shots / "asset-page.png")
    assert check_results(page, expected.checks["document_embeddings"]) == dict.fromkeys(
        expected.checks["document_embeddings"], "Succeeded"
    )

    # 3. A file in the inference inbox becomes a partition through the materialize dialog's "Add a
    # partition", and its run answers every request through the configured (fake) endpoint.
    key = "ui-questions.jsonl"
    prompts = ["Name one use of embeddings.", "What is a vector index?", "Say hello."]
    inbox = dagster_ui.data_dir / "inference" / "inbox"
    inbox.mkdir(parents=True)
    (inbox / key).write_text("".join(json.dumps({"id": f"q{i}", "prompt": p}) + "\n" for i, p in enumerate(prompts)))

    page.open("/assets/inference_outputs")
    page.click(button("Materialize"), "the asset's Materialize… button")
    dialog = "//*[@role='dialog']"
    page.click(with_text("Add a partition"), "the dialog's Add a partition link")
    page.fill(f"{dialog}//input[@placeholder='name']", key, "the new partition's name field")
    page.click(button("Save", dialog), "the Save button of the new partition")
    # The new partition is selected for the launch: one run, of that partition.
    page.find(f"{dialog}{with_text(key)}", f"partition {key} selected in the dialog")
    page.screenshot(shots / "add-partition.png")
    run_id = launch_and_follow(page, button("Launch 1 run", dialog), "the dialog's Launch 1 run")
    wait_for_success(page, run_id)

    page.open("/assets/inference_outputs")
    page.find(with_text(key), "the latest materialization's partition")
    assert page.labelled_value("Row count", "inference_outputs' row count") == str(len(prompts))
    assert (page.metadata_value("items"), page.metadata_value("succeeded")) == (str(len(prompts)),) * 2
    assert page.metadata_value("failed") == "0"
    assert page.metadata_value("endpoint") == dagster_ui.llm.base_url
    assert f"echo: {prompts[0]}" in page.text()  # the preview table holds the server's answers
    assert check_results(page, expected.checks["inference_outputs"]) == dict.fromkeys(
        expected.checks["inference_outputs"], "Succeeded"
    )
    assert sorted(r.outcome for r in dagster_ui.llm.records) == ["ok"] * len(prompts)


def check_lineage(page: Page, expected: ExpectedGraph, screenshot: Path) -> None:
    """The global lineage graph: one node per group, then, expanded, one node per asset; then each
    group's own graph, whose nodes carry the assets' full names."""

    def tooltips_including(xpath: str, names: set[str], what: str) -> set[str]:
        # Nodes appear as the graph's layout arrives: wait for all the expected ones, then compare.
        def seen() -> set[str] | None:
            tooltips = page.attributes(xpath, "data-tooltip")
            return tooltips if tooltips >= names else None

        return page.wait(seen, what)

    # Taller than the other pages: expanded, the graph stacks its groups, and at the smallest zoom they
    # fit this height (the README's picture of the whole graph).
    page.driver.set_window_size(1600, 1350)
    page.open("/asset-groups")
    group_nodes = "//*[local-name()='foreignObject' and @class='group']//*[@data-tooltip]"
    groups = tooltips_including(group_nodes, set(expected.groups), "every group in the lineage graph")
    assert groups == set(expected.groups)

    # The graph's settings button (the gear icon, without a label) holds "Expand all groups".
    page.click("//button[.//*[@aria-label='settings'] and normalize-space(.)='']", "the graph settings button")
    page.click(with_text("Expand all groups"), "Expand all groups")
    page.escape()
    # Zoomed out to fit, the asset nodes show their names middle-truncated ("docume…_embeddings").
    asset_nodes = "//*[local-name()='foreignObject' and not(@class='group')]"

    def asset_labels() -> list[str] | None:
        labels = page.texts(asset_nodes)
        return labels if len(labels) >= len(expected.assets) else None

    labels = page.wait(asset_labels, f"{len(expected.assets)} asset nodes in the expanded graph")
    shown = {name for name in expected.assets if sum(matches_truncated(label, name) for label in labels) == 1}
    assert len(labels) == len(expected.assets) and shown == expected.assets, (sorted(labels), sorted(expected.assets))
    page.screenshot(screenshot)
    page.driver.set_window_size(1600, 1000)

    for group, assets in sorted(expected.groups.items()):
        page.open(f"/locations/{LOCATION}/asset-groups/{group}")
        seen = tooltips_including("//*[@data-tooltip]", assets, f"the assets of group {group} on its page")
        assert seen == assets, (group, sorted(seen))


def launch_and_follow(page: Page, launch_button: str, what: str) -> str:
    """Click a launch button, then the "View" link of the "Launched run" toast; the run's id."""
    page.click(launch_button, what)
    page.click("//a[normalize-space(.)='View' and contains(@href, '/runs/')]", f"the launched run's toast after {what}")
    url = page.wait(lambda: re.search(r"/runs/([0-9a-f-]{36})", page.driver.current_url), "the run page")
    return url.group(1)


def wait_for_success(page: Page, run_id: str) -> None:
    """Watch the run page until its status tag reads Success; fail at once on Failure or Canceled."""
    status = page.wait(
        lambda: next(
            (s for s in ("Success", "Failure", "Canceled") if page.visible(with_text(s))),
            None,
        ),
        f"run {run_id} to finish",
        RUN_TIMEOUT_S,
    )
    assert status == "Success", f"run {run_id}: {status}\n{page.text()[-3000:]}\n{page.describe()}"


def check_results(page: Page, names: set[str]) -> dict[str, str]:
    """The status the asset's Checks tab lists under each check (its name may be middle-truncated)."""
    page.click(with_text("Checks"), "the Checks tab")
    page.find(with_whole_text(f"Checks ({len(names)})"), f"the {len(names)} checks of the asset")

    def statuses() -> dict[str, str] | None:
        lines = page.text().splitlines()
        found = {
            name: lines[i + 1].strip()
            for i, line in enumerate(lines[:-1])
            for name in names
            if matches_truncated(line.strip(), name) and lines[i + 1].strip() in ("Succeeded", "Failed", "Errored")
        }
        return found if set(found) == names else None

    return page.wait(statuses, f"a status for each of the checks {sorted(names)}")
