"""Everything the inference domain contributes to the code location."""

import dagster as dg

from ai_assets.inference import assets
from ai_assets.inference.automation import batch_inference, inference_inbox_sensor

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([assets]),
    jobs=[batch_inference],
    sensors=[inference_inbox_sensor],
)
