"""Instruments: the point value of each symbol (how many points make one unit of price: 100,000 for
a 5-digit FX pair, 1,000 for a 3-digit JPY pair), read by the Dukascopy decoder (prices are stored
as integer points) and by the strategy spec (pip and tick sizes)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["POINT_VALUES"]

POINT_VALUES: Mapping[str, int] = MappingProxyType(
    {
        # 5-digit FX pairs: 1.23456
        "EURUSD": 100_000,
        "GBPUSD": 100_000,
        "USDCHF": 100_000,
        "AUDUSD": 100_000,
        "NZDUSD": 100_000,
        "USDCAD": 100_000,
        "EURGBP": 100_000,
        "EURCHF": 100_000,
        "EURAUD": 100_000,
        "EURCAD": 100_000,
        "EURNZD": 100_000,
        "GBPCHF": 100_000,
        "GBPAUD": 100_000,
        "GBPCAD": 100_000,
        "GBPNZD": 100_000,
        "AUDCAD": 100_000,
        "AUDCHF": 100_000,
        "AUDNZD": 100_000,
        "NZDCAD": 100_000,
        "NZDCHF": 100_000,
        "CADCHF": 100_000,
        "USDCNH": 100_000,
        "USDDKK": 100_000,
        "USDHKD": 100_000,
        "USDMXN": 100_000,
        "USDNOK": 100_000,
        "USDPLN": 100_000,
        "USDSEK": 100_000,
        "USDSGD": 100_000,
        "USDTRY": 100_000,
        "USDZAR": 100_000,
        # JPY pairs (123.456), gold (1234.567), silver (15.432), USD/HUF (312.345)
        "USDJPY": 1_000,
        "EURJPY": 1_000,
        "GBPJPY": 1_000,
        "AUDJPY": 1_000,
        "CHFJPY": 1_000,
        "CADJPY": 1_000,
        "NZDJPY": 1_000,
        "XAUUSD": 1_000,
        "XAGUSD": 1_000,
        "USDHUF": 1_000,
        "USDCZK": 10_000,  # 22.1234
    }
)
