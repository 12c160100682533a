"""Strategies in nautilus_trader: confirmation backtests and (later) the live node."""
