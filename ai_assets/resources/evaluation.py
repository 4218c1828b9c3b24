"""RAG evaluation settings of the deployment (the evaluation set, how much to answer, the quality
gates) and the ragas judge."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import dagster as dg

from ai_assets.lib import settings

if TYPE_CHECKING:
    from ai_assets.lib.evaluation.ragas_metrics import JudgeConfig


class EvaluationResource(dg.ConfigurableResource):
    """What the knowledge base is evaluated on and what it must score.

    `eval_set` (RAG_EVAL_SET): a JSONL file or BEIR folder; empty = the bundled golden set.
    `doc_id_prefix` (RAG_EVAL_DOC_ID_PREFIX): the source-name prefix of a BEIR corpus's document ids.
    `synthesize_questions` (RAG_EVAL_SYNTHESIZE): extra questions the LLM writes from indexed chunks.
    `max_answered_questions` (RAG_EVAL_MAX_ANSWERED): questions answered for the answer metrics.
    `thresholds` (RAG_THRESHOLDS) and `regression_tolerance` (RAG_REGRESSION_TOLERANCE): the gates.
    """

    eval_set: str = ""
    doc_id_prefix: str = ""
    synthesize_questions: int = 0
    max_answered_questions: int = 30
    # Text, parsed when a check uses it: a JSON object and a float have no environment-variable source
    # in Dagster's config system, and as text they stay `EnvVar`s read by the run (see `resources`).
    thresholds: str = json.dumps(settings.DEFAULT_THRESHOLDS)
    regression_tolerance: str = "0.02"

    def threshold_map(self) -> dict[str, float]:
        """Metric -> minimum; raises `SettingError` naming RAG_THRESHOLDS when it is not such an object."""
        return dict(settings.parse("RAG_THRESHOLDS", self.thresholds, field="EvaluationResource.thresholds"))

    def tolerance(self) -> float:
        """The largest tolerated drop of a metric between two evaluations."""
        return settings.parse(
            "RAG_REGRESSION_TOLERANCE", self.regression_tolerance, field="EvaluationResource.regression_tolerance"
        )


class JudgeResource(dg.ConfigurableResource):
    """The LLM that judges answers for the ragas metrics (faithfulness, answer relevancy, LLM context
    precision/recall): an OpenAI-compatible endpoint `base_url` (RAGAS_JUDGE_BASE_URL) and `model`
    (RAGAS_JUDGE_MODEL); without both the LLM-judged metrics are skipped. `api_key`
    (RAGAS_JUDGE_API_KEY) never appears in run config, metadata or logs."""

    base_url: str = ""
    model: str = ""
    api_key: str = ""

    @property
    def configured(self) -> bool:
        return bool(self.base_url and self.model)

    def judge_config(self) -> JudgeConfig:
        """The ragas glue's judge settings; raises `SettingError` naming a malformed URL or model."""
        from ai_assets.lib.evaluation.ragas_metrics import JudgeConfig

        if not self.configured:
            raise ValueError("No judge: set RAGAS_JUDGE_BASE_URL and RAGAS_JUDGE_MODEL")
        return JudgeConfig(
            base_url=settings.parse("RAGAS_JUDGE_BASE_URL", self.base_url, field="JudgeResource.base_url"),
            api_key=settings.parse("RAGAS_JUDGE_API_KEY", self.api_key, field="JudgeResource.api_key") or "not-needed",
            model=settings.parse("RAGAS_JUDGE_MODEL", self.model, field="JudgeResource.model"),
        )
