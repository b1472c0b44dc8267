import pytest

from bitfit.errors import UserError
from bitfit.tasks import TASKS, get_task


@pytest.mark.parametrize("spelling,name", [("CoLA", "cola"), ("SST-2", "sst2"), ("sst-2", "sst2"), ("STS-B", "stsb"),
                                           ("MNLI", "mnli"), ("rte", "rte"), ("QQP", "qqp"), ("wnli", "wnli")])
def test_glue_spellings_resolve(spelling, name):
    assert get_task(spelling).name == name


def test_unknown_task_names_the_value_and_the_choices():
    with pytest.raises(UserError, match=r"unknown task 'imdb'; accepted: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli"):
        get_task("imdb")


def test_task_rows():
    assert get_task("stsb").is_regression and get_task("stsb").num_labels == 1
    assert get_task("stsb").metrics == ("pearson", "spearmanr")
    assert get_task("cola").main_metric == "mcc"
    assert get_task("mrpc").metrics == ("f1", "accuracy") and get_task("qqp").metrics == ("f1", "accuracy")
    mnli = get_task("mnli")
    assert mnli.labels == ("contradiction", "entailment", "neutral")  # GLUE's processor order
    assert [s.name for s in mnli.dev_splits] == ["dev_matched", "dev_mismatched"]
    assert [s.submission for s in mnli.test_splits] == ["MNLI-m.tsv", "MNLI-mm.tsv", "AX.tsv"]
    submissions = sorted(s.submission for t in TASKS.values() for s in t.test_splits)
    assert submissions == sorted(["CoLA.tsv", "SST-2.tsv", "MRPC.tsv", "STS-B.tsv", "QQP.tsv", "MNLI-m.tsv",
                                  "MNLI-mm.tsv", "QNLI.tsv", "RTE.tsv", "WNLI.tsv", "AX.tsv"])
