"""Market data in: readers (CSV, Parquet, Dukascopy), validation and cleaning, resampling."""
