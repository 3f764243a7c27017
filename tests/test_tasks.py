"""Tasks beyond perplexity: builders (deterministic, held-out text only), scoring against a direct
computation and hand-worked examples, the knowledge file, drift metrics, intervals and the record.
Tiny random models check the arithmetic; the results come from the real models (tasks.json)."""

import json
import re

import pytest
import torch

from sponlib.data import load_corpus
from sponlib.errors import CorruptFileError, DataError, InvalidArgumentError
from sponlib.models.tiny import tiny_model
from sponlib.sparsity import calibrate
from sponlib.spon import SponVectors
from sponlib.tasks import choice, cloze, drift, knowledge
from sponlib.tasks.intervals import bootstrap_mean, paired_difference, wilson
from sponlib.tasks.passages import blocks, check_held_out, passages, split_sentences, word_count
from sponlib.tasks.scoring import ContinuationScore, score_requests

# ------------------------------------------------------------------ passages and builders


def test_sentences_split_at_ends_not_at_titles():
    text = 'Mr. Elliot came in. "Is it you?" she asked.\nHe smiled; J. Smith left. The end'
    assert split_sentences(text) == [
        "Mr. Elliot came in.",
        '"Is it you?" she asked.',
        "He smiled; J. Smith left.",
        "The end",
    ]


def test_only_held_out_text_is_accepted():
    for name in ("austen-train", "austen-val", "austen-emma"):
        with pytest.raises(InvalidArgumentError, match="held-out text only"):
            check_held_out(name)
    with pytest.raises(InvalidArgumentError, match="held-out"):
        cloze.build("austen-train", 5)


@pytest.mark.parametrize("source", ["persuasion", "brown"])
def test_passages_are_the_shortest_runs_within_the_word_bounds(source):
    found = passages(source, 40, 120)
    assert len(found) > 1000
    for passage in found[::50]:
        assert 40 <= word_count(passage.text) <= 120
        assert len(passage.sentences) == 1 or word_count(" ".join(passage.sentences[1:])) < 40  # shortest
    if source == "brown":  # never across two Brown documents
        by_block = {(b.document, b.index): b for b in blocks(source)}
        assert all(p.sentences[0] in by_block[(p.document, p.block)].sentences for p in found[::50])


@pytest.fixture(scope="module")
def training_text():
    """The SPON training and calibration novels, whitespace-normalised, for leak checks."""
    return " ".join(" ".join(text.split()) for _, text in load_corpus("austen-train").documents())


def _leaks(text: str, training: str) -> bool:
    # a 60-character piece from the middle of a passage would only be found if it were copied
    middle = len(text) // 2
    return text[middle - 30 : middle + 30] in training


@pytest.mark.parametrize("source", ["persuasion", "brown"])
def test_builders_are_deterministic_and_never_use_training_text(source, training_text, default_tokenizer):
    first, again, other = (
        cloze.build(source, 60, seed=0),
        cloze.build(source, 60, seed=0),
        cloze.build(source, 60, seed=1),
    )
    assert first == again and first != other
    for example in first:
        assert re.search(rf"\b{example.word}\b", example.context)  # the clue is in the passage
        assert example.word.lower() not in cloze.FUNCTION_WORDS and not example.context.endswith(" ")
        assert not _leaks(example.context, training_text)
    choices = choice.build(source, 60, seed=0)
    assert choices == choice.build(source, 60, seed=0)
    for example in choices:
        assert len(set(example.endings)) == choice.CHOICES and 0 <= example.gold < choice.CHOICES
        assert not _leaks(example.context, training_text)
        assert not any(_leaks(ending, training_text) for ending in example.endings if len(ending) > 70)
    prompts = drift.build(source, 20, default_tokenizer, seed=0)
    assert prompts.shape == (20, drift.PROMPT_TOKENS) and torch.equal(
        prompts, drift.build(source, 20, default_tokenizer)
    )
    for row in prompts:
        assert not _leaks(default_tokenizer.decode(row), training_text)


def test_choice_gold_is_the_sentence_that_follows():
    text = " ".join(" ".join(text.split()) for _, text in load_corpus("persuasion").documents())
    for example in choice.build("persuasion", 20, seed=3):
        assert example.context + " " + example.endings[example.gold] in text
        for k, ending in enumerate(example.endings):
            if k != example.gold:
                assert example.context + " " + ending not in text


def test_asking_for_more_examples_than_the_text_holds_is_refused():
    with pytest.raises(InvalidArgumentError, match="ask for at most"):
        cloze.build("persuasion", 10**6)


def test_cloze_needs_a_clue_and_a_content_word():
    assert cloze.last_word_example("The cat sat by the fire. Then the dog saw the cat.") == (
        "The cat sat by the fire. Then the dog saw the",
        "cat",
    )
    assert cloze.last_word_example("The cat sat. Then it was the dog.") is None  # "dog" gives no clue
    assert cloze.last_word_example("Give it to them. They said it was for them.") is None  # function word


# ------------------------------------------------------------------ scoring


@pytest.fixture(scope="module")
def tiny(default_tokenizer):
    return tiny_model("llama", vocab_size=len(default_tokenizer)), default_tokenizer


def test_scores_equal_a_direct_computation(tiny):
    model, tokenizer = tiny
    requests = [
        ("The capital of France is", " Paris"),
        ("A much longer context, so that the batch is padded", " x y z"),
        ("2 + 2 =", " 4"),
        ("One", " two three four five"),
    ]
    scores = score_requests(model, tokenizer, requests, batch_size=3, progress=False)
    for (context, continuation), got in zip(requests, scores):
        ctx = tokenizer(context)["input_ids"]
        cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([ctx + cont])).logits[0].double(), -1)  # (L, V)
        rows = logprobs[len(ctx) - 1 : len(ctx) + len(cont) - 1]  # (T, V): the rows predicting cont
        target = rows[torch.arange(len(cont)), cont]  # (T,)
        assert got.tokens == len(cont)
        assert got.logprob == pytest.approx(float(target.sum()), abs=1e-4)
        assert got.greedy == bool((rows.argmax(-1) == torch.tensor(cont)).all())
        first = next(i for i, t in enumerate(cont) if tokenizer.decode([t]).strip())
        assert got.first_rank == int((rows[first] > target[first]).sum())


def test_first_rank_skips_a_leading_space_token(tiny):
    model, tokenizer = tiny
    cont = tokenizer(" 19", add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(cont[:1]).strip() == ""  # digits are split, the space stands alone
    (score,) = score_requests(model, tokenizer, [("7 + 12 =", " 19")], progress=False)
    ctx = tokenizer("7 + 12 =")["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ctx + cont])).logits[0]  # (L, V)
    row = logits[len(ctx)]  # predicts "1", after the space
    assert score.first_rank == int((row > row[cont[1]]).sum())


def test_empty_continuation_is_refused(tiny):
    model, tokenizer = tiny
    with pytest.raises(DataError, match="gives no tokens"):
        score_requests(model, tokenizer, [("context", "")], progress=False)


def test_choice_normalises_by_characters(monkeypatch, tiny):
    # By summed log-likelihood the short ending wins (-5 > -12); per character the long one does
    # (-12/40 = -0.30 > -5/10 = -0.50).
    example = choice.ChoiceExample("ctx", ("a" * 9, "b" * 39, "c" * 9, "d" * 9), gold=1, source="persuasion", where="")
    logprobs = {"a" * 9: -5.0, "b" * 39: -12.0, "c" * 9: -6.0, "d" * 9: -7.0}
    fake = lambda model, tok, requests, *a, **k: [ContinuationScore(logprobs[c[1:]], 1, False, 0) for _, c in requests]  # noqa: E731
    monkeypatch.setattr(choice, "score_requests", fake)
    assert choice.score(None, None, [example]) == [1]


def test_cloze_scores_the_whole_word(monkeypatch):
    examples = [
        cloze.ClozeExample("ctx", "Wentworth", "persuasion", ""),
        cloze.ClozeExample("ctx", "Anne", "persuasion", ""),
    ]

    def fake(model, tok, requests, *a, **k):
        return [ContinuationScore(-1.0, 3, True, 0), ContinuationScore(-1.0, 1, False, 0)]

    monkeypatch.setattr(cloze, "score_requests", fake)
    assert cloze.score(None, None, examples) == [1, 0]


# ------------------------------------------------------------------ knowledge file


def test_knowledge_file_loads_and_answers_are_single_strings(default_tokenizer):
    probe = knowledge.load_probe()
    assert probe.version >= 1 and len(probe.items) >= 200
    assert len({i.id for i in probe.items}) == len(probe.items)
    assert len({i.prompt for i in probe.items}) == len(probe.items)
    categories = {i.category for i in probe.items}
    assert {"capitals", "arithmetic"} <= categories and categories == set(probe.shots)
    for item in probe.items:
        assert item.answer == item.answer.strip() and item.answer[0].isalnum() and not item.answer.endswith(".")
        assert not re.search(r"[/|()]| or ", item.answer), item  # one answer, no alternatives
        assert item.answer.lower() not in item.prompt.lower().split()  # the prompt does not give it away
        ids = default_tokenizer(" " + item.answer, add_special_tokens=False)["input_ids"]
        assert any(default_tokenizer.decode([t]).strip() for t in ids)
    context = probe.context(probe.items[0])
    assert context.endswith(probe.items[0].prompt) and context.count("\n") == len(probe.shots[probe.items[0].category])


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.pop("items"), "not a knowledge file"),
        (lambda d: d["items"].append(dict(d["items"][0])), "repeats an id or a prompt"),
        (lambda d: d["items"][0].update(answer="Paris/Lyon"), "one plain string"),
        (lambda d: d["items"][0].update(answer=" Paris"), "without outer spaces"),
        (lambda d: d["items"][0].update(category="gossip"), "unknown category"),
    ],
)
def test_bad_knowledge_files_are_refused(tmp_path, change, message):
    data = json.loads(knowledge.default_path().read_text())
    change(data)
    path = tmp_path / "knowledge.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CorruptFileError, match=message):
        knowledge.load_probe(path)


def test_truncated_or_missing_knowledge_file_is_refused(tmp_path):
    path = tmp_path / "knowledge.json"
    path.write_text(knowledge.default_path().read_text()[:500])
    with pytest.raises(CorruptFileError, match="not a knowledge file"):
        knowledge.load_probe(path)
    with pytest.raises(CorruptFileError, match="missing"):
        knowledge.load_probe(tmp_path / "absent.json")


# ------------------------------------------------------------------ drift


def test_drift_metrics_by_hand():
    reference = torch.tensor([[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]])
    generated = torch.tensor([[1, 2, 9, 4, 5, 6], [1, 2, 3, 4, 5, 6]])
    assert drift.agreement(generated, reference) == [5 / 6, 1.0]
    assert drift.first_divergence(generated, reference) == [2, 6]
    looped = torch.tensor([[7, 8, 7, 8, 7, 8, 7, 8]])  # 5 bigrams... 4-grams: 7878, 8787, 7878, 8787, 7878
    assert drift.repetition(looped) == [3 / 5]
    assert drift.repetition(reference[:1]) == [0.0]


def test_greedy_continuations_match_decoding_without_a_cache(tiny):
    model, _ = tiny
    prompts = torch.randint(0, 1000, (3, 8), generator=torch.Generator().manual_seed(0))
    got = drift.greedy_continuations(model, prompts, new_tokens=6, batch_size=2, progress=False)
    ids = prompts.clone()
    with torch.no_grad():
        for _ in range(6):
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(got, ids[:, 8:])


# ------------------------------------------------------------------ intervals


def test_wilson_interval_known_values():
    low, high = wilson(0, 10)
    assert low == 0.0 and high == pytest.approx(0.2775, abs=1e-4)
    low, high = wilson(5, 10)
    assert (low, high) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    with pytest.raises(InvalidArgumentError):
        wilson(3, 0)


def test_bootstrap_intervals():
    values = [0.0, 1.0] * 50
    low, high = bootstrap_mean(values, seed=0)
    assert low < 0.5 < high and bootstrap_mean(values, seed=0) == (low, high)
    same = paired_difference([1, 0, 1, 1], [1, 0, 1, 1])
    assert same == {"difference": 0.0, "ci": [0.0, 0.0]}
    better = paired_difference([1] * 40, [0] * 40)
    assert better["difference"] == 1.0 and better["ci"] == [1.0, 1.0]


# ------------------------------------------------------------------ the record


@pytest.fixture(scope="module")
def tiny_family(tiny):
    """The tiny model with a calibration and random SPON vectors at one level."""
    model, tokenizer = tiny
    model.sponlib_source = {"name": "tiny-llama"}
    ids = torch.randint(0, 1000, (8, 32), generator=torch.Generator().manual_seed(1))
    calibration = calibrate(model, ids, refine_levels=(0.5,), progress=False)
    vectors = SponVectors.zeros(model)
    for alpha in vectors.alphas.values():
        alpha.copy_(0.3 * torch.randn(alpha.shape, generator=torch.Generator().manual_seed(2)))
    return model, tokenizer, calibration, {0.5: (vectors, calibration.thresholds(0.5, "teal"))}


def test_record_runs_every_cell_resumes_and_summarises(tmp_path, tiny_family, monkeypatch):
    from sponlib.experiments import tasks as record

    model, tokenizer, calibration, spon = tiny_family
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps({"kind": "tasks", "families": {"other-model": {"cells": {}}}}))
    sizes = record.TaskSizes(cloze=3, choice=2, drift=2)
    entry = record.run_family(path, model, tokenizer, calibration, spon, [0.5], sizes=sizes, progress=False)
    saved = json.loads(path.read_text())
    assert set(saved["families"]) == {"other-model", "tiny-llama"}  # other families are kept
    assert set(entry["cells"]) == {"dense", "masked@0.5", "spon@0.5"}
    dense = entry["cells"]["dense"]["outcomes"]
    assert len(dense["cloze/persuasion/accuracy"]) == 3 and len(dense["choice/brown/accuracy"]) == 2
    assert dense["drift/brown/agreement"] == [1.0, 1.0] and dense["drift/brown/first_divergence"] == [64, 64]
    assert 0.3 < entry["cells"]["masked@0.5"]["measured_sparsity"] < 0.7
    rows = {(r["task"], r["source"], r["metric"]): r for r in entry["summary"]}
    assert ("knowledge", "all", "top5") in rows and ("drift", "persuasion", "repetition") in rows
    row = rows[("knowledge", "all", "top1")]
    n = len(knowledge.load_probe().items)
    assert row["dense"]["n"] == n and row["dense"]["ci"][0] <= row["dense"]["value"] <= row["dense"]["ci"][1]
    outcomes = lambda cell: entry["cells"][cell]["outcomes"]["knowledge/all/top1"]  # noqa: E731
    assert row["spon_minus_masked"]["difference"] == pytest.approx(
        (sum(outcomes("spon@0.5")) - sum(outcomes("masked@0.5"))) / n
    )

    # a rerun with the same settings computes nothing again
    monkeypatch.setattr(record, "run_cell", lambda *a, **k: pytest.fail("a finished cell ran again"))
    again = record.run_family(path, model, tokenizer, calibration, spon, [0.5], sizes=sizes, progress=False)
    assert again["cells"] == entry["cells"]


def test_record_reruns_the_cells_whose_calibration_or_vectors_changed(tmp_path, tiny_family, monkeypatch):
    from sponlib.experiments import tasks as record

    model, tokenizer, calibration, spon = tiny_family
    path = tmp_path / "tasks.json"
    sizes = record.TaskSizes(cloze=2, choice=2, drift=1)
    files = {"calibration_sha256": "c1", "spon_sha256": {"0.5": "v1"}}
    first = record.run_family(
        path, model, tokenizer, calibration, spon, [0.5], sizes=sizes, progress=False, provenance=files
    )
    ran = []
    real = record.run_cell
    monkeypatch.setattr(record, "run_cell", lambda *a, **k: ran.append(1) or real(*a, **k))

    new_vectors = {"calibration_sha256": "c1", "spon_sha256": {"0.5": "v2"}}
    again = record.run_family(
        path, model, tokenizer, calibration, spon, [0.5], sizes=sizes, progress=False, provenance=new_vectors
    )
    assert len(ran) == 1  # the SPON cell alone: dense and masked still hold
    assert again["cells"]["masked@0.5"] == first["cells"]["masked@0.5"]
    assert json.loads(path.read_text())["families"]["tiny-llama"]["spon_sha256"] == {"0.5": "v2"}

    ran.clear()
    record.run_family(
        path,
        model,
        tokenizer,
        calibration,
        spon,
        [0.5],
        sizes=sizes,
        progress=False,
        provenance={"calibration_sha256": "c2", "spon_sha256": {"0.5": "v2"}},
    )
    assert len(ran) == 1  # the masked cell alone


def test_record_refuses_a_file_that_is_not_a_tasks_record(tmp_path, tiny_family):
    from sponlib.experiments import tasks as record

    model, tokenizer, calibration, spon = tiny_family
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"kind": "spon_recovery"}))
    with pytest.raises(CorruptFileError, match="not a tasks record"):
        record.run_family(path, model, tokenizer, calibration, spon, [0.5], progress=False)
    path.write_text("{truncated")
    with pytest.raises(CorruptFileError, match="not valid JSON"):
        record.run_family(path, model, tokenizer, calibration, spon, [0.5], progress=False)
    assert path.read_text() == "{truncated"  # nothing lost


# ------------------------------------------------------------------ the committed record


def test_tasks_record_covers_both_families_and_agrees_with_its_outcomes():
    from sponlib.experiments.tasks import task_verdicts
    from sponlib.records import load_result
    from sponlib.reports.quality import render_tasks

    record = load_result("tasks.json")
    assert set(record["families"]) == {"smollm2-135m", "gemma3-270m"}
    for family, entry in record["families"].items():
        assert entry["model"]["name"] == family and entry["device"]["name"] and entry["versions"]["torch"]
        assert entry["settings"]["sizes"]["seed"] == 0 and entry["settings"]["method"] == "teal"
        for level in (0.25, 0.5, 0.7):
            assert {f"masked@{level:g}", f"spon@{level:g}"} <= set(entry["cells"])
        for row in entry["summary"]:
            name = f"{row['task']}/{row['source']}/{row['metric']}"
            masked = entry["cells"][f"masked@{row['level']:g}"]["outcomes"][name]
            spon = entry["cells"][f"spon@{row['level']:g}"]["outcomes"][name]
            assert row["masked"]["value"] == pytest.approx(sum(masked) / len(masked))
            assert row["spon_minus_masked"]["difference"] == pytest.approx((sum(spon) - sum(masked)) / len(spon))
            low, high = row["masked"]["ci"]
            assert low <= row["masked"]["value"] <= high
        verdicts = task_verdicts(entry)
        rendered = render_tasks(record)
        assert f"better in {len(verdicts['better'])}, worse in {len(verdicts['worse'])}" in rendered


def test_task_verdicts_follow_the_direction_of_each_metric():
    from sponlib.experiments.tasks import task_verdicts

    def row(task, source, metric, ci):
        return {"task": task, "source": source, "metric": metric, "level": 0.5, "spon_minus_masked": {"ci": ci}}

    entry = {
        "summary": [
            row("cloze", "brown", "accuracy", [0.01, 0.05]),  # more accuracy: better
            row("drift", "brown", "repetition", [0.01, 0.05]),  # more repetition: worse
            row("drift", "persuasion", "repetition", [-0.2, -0.1]),  # less: better
            row("choice", "brown", "accuracy", [-0.01, 0.02]),
        ]
    }
    verdicts = task_verdicts(entry)
    assert verdicts["better"] == ["last-word cloze, Brown at 0.5", "generation, repeated 4-grams, Persuasion at 0.5"]
    assert verdicts["worse"] == ["generation, repeated 4-grams, Brown at 0.5"]
    assert verdicts["same"] == ["next-sentence choice, Brown at 0.5"]
