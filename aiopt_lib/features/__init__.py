"""From bars to model inputs: indicators, patterns, causal features, labels, splits, the dataset, chart images."""
