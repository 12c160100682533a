"""Runs of the whole pipeline: papermill runner, batches, the command line."""
