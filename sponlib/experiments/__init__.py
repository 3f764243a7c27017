"""This project's experiments: the protocol, and the code that runs each measurement and writes its
record under data/results/ (the library below takes every setting as an argument; only here are
the project's own choices fixed).

    protocol        the model, texts, windows, levels and targets, in one place
    sweep           perplexity per mask rule and level; how close calibrated thresholds come
    recovery        SPON trained and tested per level, rule and ablation; recovery and its targets
    generalization  the trained vectors on many held-out texts
    representation  the layer-by-layer analysis record (drift, CKA, lens KL, SPON alignment)
    tasks           cloze, choice, knowledge and generation drift, dense / masked / SPON
    figures         the figures drawn from these records
"""
