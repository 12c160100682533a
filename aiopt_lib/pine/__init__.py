"""TradingView Pine Script: export, checks and fixes, offline execution, the distilled AI gate."""
