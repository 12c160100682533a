"""Foundations every stage uses: errors, atomic writes, the bars schema, logging streams."""
