"""Live and paper trading: the ranked strategy in a Nautilus ``TradingNode``, the model asked once
per bar, controlled over Redis (docs/api/live.md)."""
