"""Where documents come from: local folders/files and HTTP(S) URLs."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from ai_assets.lib import settings
from ai_assets.lib.ingestion.sources import HttpSettings, LocalSettings, SourceSpec, parse_source_specs


def sample_corpus_path() -> Path:
    """The Markdown pages shipped with the project, ingested when no source is configured."""
    return Path(__file__).resolve().parents[1] / "data" / "sample_corpus"


class DocumentSourcesResource(dg.ConfigurableResource):
    """The document sources to keep the knowledge base in sync with.

    `sources` is a comma- or newline-separated list of `name=location` or bare locations; a location is
    a folder, a single file, or an http(s) URL. Empty means the bundled sample corpus.

    `http_timeout_s` bounds the whole fetch of one URL (connection, redirects, headers and body).
    `max_file_bytes` caps one local document (a file, or one record of a JSONL corpus): a larger one is
    reported and its indexed chunks are kept. Symbolic links are followed only while they stay inside
    the source folder, unless `follow_external_symlinks` is set.

    `http_timeout_s` (a number of seconds) and `follow_external_symlinks` (true/false, 1/0, yes/no,
    on/off) are text, parsed when used: Dagster has no environment-variable source for a float, nor
    one for a bool that a Python `EnvVar` can feed, and as text both stay `EnvVar`s read by the run.
    """

    sources: str = ""
    http_timeout_s: str = "10.0"
    http_max_bytes: int = 5_000_000
    max_file_bytes: int = 20_000_000
    follow_external_symlinks: str = "false"

    def specs(self) -> list[SourceSpec]:
        return parse_source_specs(self.sources or f"sample_corpus={sample_corpus_path()}")

    def http_settings(self) -> HttpSettings:
        """Raises `SettingError` naming HTTP_TIMEOUT_S when `http_timeout_s` is not a positive number."""
        timeout = settings.parse("HTTP_TIMEOUT_S", self.http_timeout_s, field="DocumentSourcesResource.http_timeout_s")
        return HttpSettings(timeout_s=timeout, max_bytes=self.http_max_bytes)

    def follows_external_symlinks(self) -> bool:
        """`follow_external_symlinks` parsed; raises `SettingError` naming the variable when malformed."""
        return settings.parse(
            "AI_ASSETS_FOLLOW_EXTERNAL_SYMLINKS",
            self.follow_external_symlinks,
            field="DocumentSourcesResource.follow_external_symlinks",
        )

    def local_settings(self) -> LocalSettings:
        """Raises ValueError naming `max_file_bytes` (LOCAL_MAX_FILE_BYTES) when it is not positive."""
        return LocalSettings(
            max_file_bytes=self.max_file_bytes, follow_external_symlinks=self.follows_external_symlinks()
        )
