"""ai_assets: an organisation's AI pipelines as Dagster software-defined assets."""
