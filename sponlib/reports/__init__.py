"""Maintainers' tooling: the README's result tables and figures, rendered from the records under
data/results/. Nothing in the library imports it; the `readme` and `figures` commands load it, and
the tests that keep the README in step with the records run it.

    readme       rewrite the README's result blocks from their records (`python -m sponlib readme`)
    quality      the tables of the quality records (perplexity, sweep, recovery, analysis, tasks)
    speed        the tables of the speed records (throughput, latency, kernels, multi-GPU)
    provenance   the line under each table that says where its numbers come from
    png          the README's figures as PNG through chromium (`python -m sponlib figures`)
"""
