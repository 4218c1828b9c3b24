"""The checks a team runs against its deployment from its own CI: `deployment_checks`.

A job of asset checks only: nothing is materialized, so it is safe against production at any time. It
reads what is deployed (the chunk table, the index behind the alias, the recorded quality metrics) with
the deployment's own settings and records each result in the deployment's instance, where the UI shows
it. A failed blocking check fails its step, so `dagster job execute -j deployment_checks` (or
`dg launch --job deployment_checks`) exits non-zero and fails the CI job.
"""

import dagster as dg

from ai_assets.defs.evaluation.assets import rag_quality_metrics
from ai_assets.defs.ingestion.assets import document_chunks, document_embeddings

# Left out on purpose: the inference checks are evaluated by `inference_outputs` itself on the file it
# just wrote (one per partition), and the training gates judge a candidate inside its own training run;
# re-judging the newest candidate later would fail CI forever after one rejected candidate.
DEPLOYED_STATE = [document_chunks, document_embeddings, rag_quality_metrics]

deployment_checks = dg.define_asset_job(
    "deployment_checks",
    selection=dg.AssetSelection.checks_for_assets(*DEPLOYED_STATE),
    description="Re-runs the knowledge base's checks (chunks, the index behind the alias, the quality "
    "gates on the latest metrics) without materializing anything: the command for a team's CI.",
    tags={"domain": "operations"},
)
