"""tandem_adapters: models, data sources, the ``tandem`` CLI and plots."""
