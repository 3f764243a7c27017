"""Task measurements beyond perplexity: what a sparsified model still gets right.

One small module per task, each with a deterministic builder (held-out text or a shipped data
file in, a list of examples out) and a scorer (model in, per-example outcomes out):

    cloze      last-word prediction (LAMBADA-style) on Persuasion and Brown passages
    choice     next-sentence choice among four (HellaSwag-style), length-normalised likelihood
    knowledge  short factual prompts from data/tasks/knowledge.json, first-token top-1 / top-5
    drift      greedy continuations against the dense model's: agreement, first divergence, repetition

`sponlib.experiments.tasks` runs them all for dense, masked and SPON models and writes
data/results/tasks.json. One integration sits beside them: `sponlib.tasks.harness` lets
lm-evaluation-harness evaluate a sparsified or SPON model.
"""
