"""Everything the evaluation domain contributes to the code location."""

import dagster as dg

from ai_assets.evaluation import assets, checks
from ai_assets.evaluation.automation import daily_rag_evaluation, rag_evaluation

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([assets]),
    asset_checks=dg.load_asset_checks_from_modules([checks]),
    jobs=[rag_evaluation],
    schedules=[daily_rag_evaluation],
)
