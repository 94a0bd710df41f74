"""Labelled text from a CSV file: a text column and a label column. Words are split by a simple
tokenizer, the vocabulary is built on the training split only (TextTransform), and each text
becomes data.max_len token ids, padded and cut at the front as Keras's pad_sequences does, for a
model with an Embedding layer (model.embedding_dim)."""

import logging
import re
from collections import Counter

import numpy as np
import torch

from nnrun.data.base import DATASETS, Loaded, stratified_split, unseen_classes
from nnrun.data.described import Vocabulary
from nnrun.data.tabular import encode_target, read_csv
from nnrun.errors import ConfigError

log = logging.getLogger(__name__)
PAD, UNKNOWN = 0, 1  # token ids: padding, and any word not in the vocabulary
WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?|[^\w\s]")  # words (with an apostrophe part) or one punctuation mark


def tokenize(text: str, lowercase: bool = True) -> list:
    return WORD.findall(text.lower() if lowercase else text)


@DATASETS.register("text_csv")
def text_csv(  # noqa: PLR0913  (its parameters are the YAML schema)
    root: str,
    seed: int,
    path: str = None,
    text: str = "text",
    target: str = "label",
    task: str = "auto",
    vocab_size: int = 10000,
    max_len: int = 100,
    lowercase: bool = True,
    test_path: str = None,
    test_split: float = 0.2,
    val_path: str = None,
):
    """Rows of a CSV file: data.text holds the text, data.target its class."""
    if not path:
        raise ConfigError("data.path is not set: give the CSV file, e.g. data.path=notes.csv")
    if vocab_size < 3 or max_len < 1:
        raise ConfigError(f"data.vocab_size={vocab_size}, data.max_len={max_len}: use vocab_size >= 3 and max_len >= 1")
    if task == "regression":
        raise ConfigError("data.task=regression: data=text_csv classifies texts; use auto, binary or multiclass")
    files = [f for f in (path, test_path, val_path) if f]  # data.path's rows, then the test file's, then val's
    keys = [k for k, f in (("data.path", path), ("data.test_path", test_path), ("data.val_path", val_path)) if f]
    frames = [read_csv(f, k) for f, k in zip(files, keys)]
    for frame, file in zip(frames, files):
        for key, column in (("data.text", text), ("data.target", target)):
            if column not in frame.columns:
                raise ConfigError(
                    f"{key}={column} is not a column of {file}; its columns: {', '.join(map(str, frame.columns))}"
                )
        missing = frame[target].isna().to_numpy()
        if missing.any():
            raise ConfigError(
                f"column {target!r} of {file} has {int(missing.sum())} missing label(s), the first "
                f"at row {int(missing.argmax()) + 2}; drop or fill those rows"
            )
    import pandas as pd

    frame = pd.concat(frames, ignore_index=True)
    y, task, classes = encode_target(frame[target], task, target)
    texts = frame[text].fillna("").astype(str).tolist()  # an empty text is all padding
    x, y = torch.arange(len(texts)), torch.from_numpy(y)  # row numbers: TextTransform turns them into ids
    n, n_test = len(frames[0]), len(frames[1]) if test_path else 0
    files = [(f"data.test_path={test_path}", torch.arange(n, n + n_test))] if test_path else []
    files += [(f"data.val_path={val_path}", torch.arange(n + n_test, len(texts)))] if val_path else []
    unseen_classes(y, n, files, classes, task)
    if test_path:
        train_idx, test_idx = torch.arange(n), torch.arange(n, n + n_test)
    else:
        train_idx, test_idx = stratified_split(y[:n], test_split, seed, key="data.test_split")
    val = None
    if val_path:
        val = (x[n + n_test :], y[n + n_test :])
        log.info(
            f"data.val_path={val_path}: {len(texts) - n - n_test} validation texts (data.val_split does not apply)"
        )
    log.info(f"data.path={path}: {len(texts)} texts, label {target!r} ({task}, classes {', '.join(classes)})")
    return Loaded(
        train=(x[train_idx], y[train_idx]),
        val=val,
        test=(x[test_idx], y[test_idx]),
        classes=classes,
        task=task,
        transform=TextTransform(texts, vocab_size, max_len, lowercase),
    )


class TextTransform:
    """Fitted on the training rows: the vocab_size - 2 most frequent words (ties: first seen) get
    ids 2, 3, ...; 0 is padding, 1 any other word. Applied to row numbers, gives (N, max_len)."""

    def __init__(self, texts: list, vocab_size: int, max_len: int, lowercase: bool):
        self.texts, self.vocab_size, self.max_len, self.lowercase = texts, vocab_size, max_len, lowercase

    def fit(self, rows: torch.Tensor) -> "TextTransform":
        counts = Counter(word for i in rows.tolist() for word in tokenize(self.texts[i], self.lowercase))
        self.words = [w for w, _ in counts.most_common(self.vocab_size - 2)]
        self.ids = {w: i + 2 for i, w in enumerate(self.words)}
        return self

    def adopt(self, description: Vocabulary) -> "TextTransform":
        """The run's vocabulary and rules, for texts it never saw."""
        self.words, self.max_len = list(description.vocabulary), int(description.max_len)
        self.lowercase = bool(description.lowercase)
        self.ids = {w: i + 2 for i, w in enumerate(self.words)}
        return self

    def unscaled(self) -> None:
        """Token ids are never scaled."""

    def minmax(self, x) -> None:
        """Token ids are never scaled."""

    def encode(self, texts) -> torch.Tensor:
        out = np.zeros((len(texts), self.max_len), dtype=np.int64)
        for row, text in enumerate(texts):
            ids = [self.ids.get(w, UNKNOWN) for w in tokenize(text, self.lowercase)][-self.max_len :]
            if ids:  # Keras: pad and truncate at the front
                out[row, -len(ids) :] = ids
        return torch.from_numpy(out)

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        return self.encode([self.texts[i] for i in rows.tolist()])

    def describe(self) -> Vocabulary:
        return Vocabulary(
            lowercase=self.lowercase, max_len=self.max_len, vocabulary=self.words, pad_id=PAD, unknown_id=UNKNOWN
        )
