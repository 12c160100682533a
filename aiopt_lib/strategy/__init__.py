"""Strategies: the spec and rule language, the backtest engine, bar-by-bar evaluation, the search, overfitting statistics."""
