"""Maintainers' tooling: the result tables and figures of the README and docs/, rendered from the
records under data/results/. Nothing in the library imports it; the `readme` and `figures` commands load it, and
the tests that keep the README in step with the records run it.

    readme       rewrite the result blocks of the README and docs/*.md from their records
                 (`python -m sponlib readme`)
    quality      the tables of the quality records (perplexity, sweep, recovery, analysis, tasks)
    robust       the robust-SPON tables and the README's headline
    speed        the tables of the speed records (throughput, latency, kernels, multi-GPU)
    provenance   the line under each table that says where its numbers come from
    png          the figures as PNG through chromium (`python -m sponlib figures`)
"""
