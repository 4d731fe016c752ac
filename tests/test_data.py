"""Offline data: formats, TRL-style tokenization, length limits, and every kind of bad input."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from alignlab.data.collate import PreferenceCollator
from alignlab.data.offline import OfflinePreferenceDataModule
from alignlab.data.pairs import BadRow, PairTokenizer, parse_row
from alignlab.errors import DataError
from alignlab.judges.rater import score

from .conftest import prompt_set

GOOD = {"prompt": "What is 2 plus 2?", "chosen": "2 plus 2 is 4.", "rejected": "2 plus 2 is 5."}


def rows(n):
    return [{"prompt": f"What is {i} plus 1?", "chosen": f"{i} plus 1 is {i + 1}.", "rejected": f"It is {i + 7}."}
            for i in range(n)]


def datamodule(tiny, path, **kw):
    dm = OfflinePreferenceDataModule(tiny.tokenizer, prompt_set(path, kw), batch_size=4, **kw)
    dm.setup("fit")
    return dm


def test_bundled_preference_is_checkable_by_program(bundled_rows):
    assert len(bundled_rows) >= 300
    for row in bundled_rows:
        assert score(row["chosen"], row["answer"], row["prompt"]) > score(row["rejected"], row["answer"], row["prompt"])


def test_plain_and_conversational_rows_tokenize_identically(tiny):
    tok = PairTokenizer(tiny.tokenizer, chat_template=True)
    plain = tok(parse_row(GOOD), 0, "r")
    explicit = tok(parse_row({"prompt": [{"role": "user", "content": GOOD["prompt"]}],
                              "chosen": [{"role": "assistant", "content": GOOD["chosen"]}],
                              "rejected": [{"role": "assistant", "content": GOOD["rejected"]}]}), 0, "r")
    user = {"role": "user", "content": GOOD["prompt"]}
    implicit = tok(parse_row({"chosen": [user, {"role": "assistant", "content": GOOD["chosen"]}],
                              "rejected": [user, {"role": "assistant", "content": GOOD["rejected"]}]}), 0, "r")
    for other in (explicit, implicit):
        assert (other.prompt_ids, other.chosen_ids, other.rejected_ids) == \
               (plain.prompt_ids, plain.chosen_ids, plain.rejected_ids)
    # The completion ends with the template's end of turn, and the prompt with the generation prompt.
    assert tiny.tokenizer.decode(plain.chosen_ids).startswith("2 plus 2 is 4.<|im_end|>")
    assert tiny.tokenizer.decode(plain.prompt_ids).endswith("<|im_start|>assistant\n")


def test_plain_text_without_template_appends_eos(tiny):
    pair = PairTokenizer(tiny.tokenizer, chat_template=False)(parse_row(GOOD), 0, "r")
    assert pair.chosen_ids[-1] == tiny.tokenizer.eos_token_id
    assert tiny.tokenizer.decode(pair.prompt_ids) == GOOD["prompt"]


def test_truncation_rules(tiny):
    long_prompt = {**GOOD, "prompt": "word " * 300 + "Final question?"}
    tok = PairTokenizer(tiny.tokenizer, max_prompt_length=32, max_response_length=7)
    pair = tok(parse_row(long_prompt), 0, "r")
    assert len(pair.prompt_ids) == 32
    assert tiny.tokenizer.decode(pair.prompt_ids).endswith("Final question?<|im_end|>\n<|im_start|>assistant\n")
    assert len(pair.chosen_ids) == 7 and tok.truncated_prompts == 1 and tok.truncated_responses == 1
    with pytest.raises(DataError, match="r: prompt longer than max_prompt_length=32"):
        PairTokenizer(tiny.tokenizer, max_prompt_length=32, overlong_prompt="error")(parse_row(long_prompt), 0, "r")


@pytest.mark.parametrize("row,reason", [
    ({"prompt": "q", "chosen": "", "rejected": "b"}, "empty chosen response"),
    ({"prompt": "q", "chosen": "a", "rejected": "   "}, "empty rejected response"),
    ({"prompt": "q", "chosen": "same", "rejected": "same"}, "identical"),
    ({"prompt": "", "chosen": "a", "rejected": "b"}, "empty prompt"),
    ({"chosen": "a", "rejected": "b"}, "missing 'prompt'"),
    ({"prompt": "q", "chosen": 3, "rejected": "b"}, "neither text nor"),
    ({"prompt": "q", "chosen": "a", "rejected": [{"role": "assistant", "content": "b"}]}, "mix text and messages"),
])
def test_bad_rows_give_a_reason(row, reason):
    with pytest.raises(BadRow, match=reason):
        parse_row(row)


def test_bad_rows_are_skipped_and_counted(tiny, write_jsonl):
    bad = ['{"prompt": "q", "chosen": "x"', {"prompt": "q", "chosen": "", "rejected": "b"}]
    path = write_jsonl(rows(60) + bad)
    dm = datamodule(tiny, path)
    assert len(dm.train_pairs) + len(dm.val_pairs) == 60
    skipped = dm.report["skipped"][f"{path}[train]"]
    assert skipped["skipped"] == 2
    assert skipped["by_reason"]["empty chosen response"]["examples"] == [f"{path}:62"]
    assert any(r.startswith("malformed JSON") for r in skipped["by_reason"])


def test_bad_row_is_an_error_naming_file_and_line(tiny, write_jsonl):
    path = write_jsonl(rows(5) + ['{"prompt": "q", "chosen": "x"'])
    with pytest.raises(DataError, match=rf"{path}:6: malformed JSON"):
        datamodule(tiny, path, on_bad_row="error")


def test_too_many_bad_rows_is_an_error(tiny, write_jsonl):
    path = write_jsonl(rows(10) + [{"prompt": "q", "chosen": "a", "rejected": "a"}] * 3)
    with pytest.raises(DataError, match="more than data.prompts.max_bad_fraction"):
        datamodule(tiny, path)


def test_missing_column_is_named(tiny, write_jsonl):
    path = write_jsonl([{"prompt": "q", "chosen": "a", "worse": "b"}] * 4)
    with pytest.raises(DataError, match="missing column 'rejected'"):
        datamodule(tiny, path)


def test_empty_and_missing_files(tiny, write_jsonl, tmp_path):
    with pytest.raises(DataError, match="empty"):
        datamodule(tiny, write_jsonl([]))
    with pytest.raises(DataError, match="no such file"):
        datamodule(tiny, tmp_path / "nope.jsonl")


@pytest.mark.parametrize("suffix", ["json", "parquet", "csv"])
def test_other_file_formats(tiny, tmp_path, suffix):
    path = tmp_path / f"data.{suffix}"
    data = rows(20)
    if suffix == "json":
        path.write_text(json.dumps(data))
    elif suffix == "parquet":
        pd.DataFrame(data).to_parquet(path)
    else:
        pd.DataFrame(data).to_csv(path, index=False)
    dm = datamodule(tiny, path)
    assert len(dm.train_pairs) == 18 and len(dm.val_pairs) == 2


def test_conversational_parquet(tiny, tmp_path):
    data = [{"prompt": [{"role": "user", "content": r["prompt"]}],
             "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows(10)]
    path = tmp_path / "conv.parquet"
    pd.DataFrame(data).to_parquet(path)
    assert datamodule(tiny, path).num_examples == 10


def test_validation_file_and_ids(tiny, write_jsonl):
    train = write_jsonl(rows(12), "train.jsonl")
    val = write_jsonl(rows(5), "val.jsonl")
    dm = datamodule(tiny, train, val_path=str(val))
    assert len(dm.train_pairs) == 12 and len(dm.val_pairs) == 5
    assert [p.example_id for p in dm.train_pairs + dm.val_pairs] == list(range(17))


def test_collator_layout(tiny):
    tok = PairTokenizer(tiny.tokenizer)
    pairs = [tok(parse_row(r), i, "r") for i, r in enumerate(rows(3) + [GOOD])]
    batch = PreferenceCollator(tiny.tokenizer.pad_token_id)(pairs)
    assert batch.prompt_mask[:, -1].all()  # left-padded: every prompt ends in the last column
    assert batch.chosen_mask[:, 0].all() and batch.rejected_mask[:, 0].all()  # right-padded responses
    assert batch.chosen_ids.shape == batch.rejected_ids.shape
    assert batch.num_tokens == sum(2 * len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)


def test_hub_style_dataset_folder_with_test_split(tiny, tmp_path):
    """A folder laid out like a hub dataset goes through datasets.load_dataset, as a hub name does."""
    folder = tmp_path / "owner_name" / "data"
    folder.mkdir(parents=True)
    pd.DataFrame(rows(12)).to_parquet(folder / "train-00000-of-00001.parquet")
    pd.DataFrame(rows(4)).to_parquet(folder / "test-00000-of-00001.parquet")
    dm = datamodule(tiny, tmp_path / "owner_name")
    assert len(dm.train_pairs) == 12 and len(dm.val_pairs) == 4  # the hub's test split is the validation set
    assert dm.train_pairs[0].where.endswith("[train] row 0")


def test_unreachable_hub_name_is_a_clear_error(tiny, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="could not be loaded"):
        datamodule(tiny, "no-such-owner/no-such-dataset", val_split="test")


def test_bundled_prompts_are_unique(bundled_rows):
    prompts = [r["prompt"] for r in bundled_rows]
    assert len(set(prompts)) == len(prompts)  # no question can sit in both train and validation


def test_overlong_prompt_skip_and_error_modes(tiny, write_jsonl):
    path = write_jsonl(rows(40) + [{**GOOD, "prompt": "word " * 400}])
    dm = datamodule(tiny, path, max_prompt_length=64, overlong_prompt="skip")
    assert dm.num_examples == 40
    reasons = list(dm.report["skipped"][f"{path}[train]"]["by_reason"])
    assert len(reasons) == 1 and reasons[0].startswith("prompt longer than max_prompt_length=64")
    with pytest.raises(DataError, match=rf"{path}:41: prompt longer than max_prompt_length=64"):
        datamodule(tiny, path, max_prompt_length=64, overlong_prompt="error")


def test_val_split_on_a_local_file_is_a_config_error(tiny, write_jsonl):
    from alignlab.errors import ConfigError

    with pytest.raises(ConfigError, match="data.prompts.val_path"):
        datamodule(tiny, write_jsonl(rows(10)), val_split="test")
