"""Batch-inference settings of the deployment: input limits, the tolerated error rate, the inbox."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from ai_assets.lib import settings
from ai_assets.lib.inference.files import InferenceFolders
from ai_assets.resources.data_folder import DataFolderResource


class InferenceResource(dg.ConfigurableResource):
    """Where input files arrive and what a batch must satisfy.

    `inbox` (AI_ASSETS_INFERENCE_INBOX): the folder the inbox sensor watches; empty = `inference/inbox`
    in the data folder, which also holds the ledgers and outputs. `max_prompt_chars`
    (INFERENCE_MAX_PROMPT_CHARS): the longest prompt a line may hold (a run may lower or raise it).
    `max_error_rate` (INFERENCE_MAX_ERROR_RATE): the error rate the check tolerates. `mode`
    (INFERENCE_MODE): `sync` or `batch_api` for a file that does not choose (see `mode_for`);
    `batch_max_rounds` (INFERENCE_BATCH_MAX_ROUNDS): batch_api rounds, the first included, before a
    failure is the answer; `batch_discount` (INFERENCE_BATCH_DISCOUNT): the Batch API's price cut, for
    the cost metadata.
    """

    data_folder: DataFolderResource
    inbox: str = ""
    max_prompt_chars: int = 200_000
    # Text, parsed when the check uses it: Dagster has no environment-variable source for floats.
    max_error_rate: str = "0.01"
    mode: str = "sync"
    batch_max_rounds: int = 3
    batch_discount: str = "0.5"

    def folders(self) -> InferenceFolders:
        """The inbox, ledgers and outputs folders, resolved in the calling process."""
        inbox = settings.parse("AI_ASSETS_INFERENCE_INBOX", self.inbox, field="InferenceResource.inbox")
        return InferenceFolders.under(self.data_folder.root, Path(inbox).expanduser().resolve() if inbox else None)

    def error_rate_threshold(self) -> float:
        return settings.parse("INFERENCE_MAX_ERROR_RATE", self.max_error_rate, field="InferenceResource.max_error_rate")

    def default_mode(self) -> str:
        return settings.parse("INFERENCE_MODE", self.mode, field="InferenceResource.mode")

    def discount(self) -> float:
        return settings.parse("INFERENCE_BATCH_DISCOUNT", self.batch_discount, field="InferenceResource.batch_discount")


def folders_from_environment() -> InferenceFolders:
    """The inference folders the code location would use, for a command outside Dagster (`submit`):
    the deployment's `inference` resource, resolved from this process's environment."""
    return settings_from_environment()[0]


def settings_from_environment() -> tuple[InferenceFolders, int]:
    """(folders, max_prompt_chars) of the deployment's `inference` resource, resolved from this
    process's environment, so that `submit` validates exactly as the run will."""
    from ai_assets.resources import build_resources

    with build_resources()["inference"].process_config_and_initialize_cm() as inference:
        return inference.folders(), inference.max_prompt_chars
