"""Everything the ingestion domain contributes to the code location."""

import dagster as dg

from ai_assets.ingestion import assets, checks
from ai_assets.ingestion.automation import nightly_rag_refresh, rag_ingestion, source_change_sensor

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([assets]),
    asset_checks=dg.load_asset_checks_from_modules([checks]),
    jobs=[rag_ingestion],
    schedules=[nightly_rag_refresh],
    sensors=[source_change_sensor],
)
