"""What a fitted transform applies to new inputs, one dataclass per kind: a transform's describe()
gives one, as_json() is preprocessing.json's "transform" (its keys and "kind" values are a public
file format), and from_json() reads that back once the stored-file checks have passed."""

from dataclasses import dataclass, fields
from typing import ClassVar, Optional

from nnrun.errors import ConfigError


class Described:
    """The shared part: kind names the class in preprocessing.json."""

    kind: ClassVar[str]

    @classmethod
    def from_json(cls, stored: dict) -> "Described":
        """The description a run stored; a field it lacks makes the folder damaged (checked values
        only: trained.check_preprocessing, check_scaling and tabular.check_description come first)."""
        values = {f.name: stored[f.name] for f in fields(cls) if f.name in stored}
        try:
            return cls(**values)
        except TypeError:
            missing = sorted(f.name for f in fields(cls) if f.name not in stored)
            raise ConfigError(
                f"preprocessing.json: its {cls.kind} transform lacks {', '.join(missing)}; the run folder is damaged"
            ) from None


@dataclass(frozen=True)
class Standardization(Described):
    """One mean and std over every value (images: every pixel alike)."""

    kind: ClassVar[str] = "standardize"
    mean: float
    std: float
    data_format: Optional[str] = None  # data=arrays of images: channels_first | channels_last (None: not arrays)

    def as_json(self) -> dict:
        out = {"kind": self.kind, "mean": self.mean, "std": self.std}
        return out if self.data_format is None else {**out, "data_format": self.data_format}


@dataclass(frozen=True)
class FeatureStandardization(Described):
    """A mean and std per feature (a series' or an array's last axis)."""

    kind: ClassVar[str] = "standardize_features"
    features: list
    mean: list
    std: list
    window: Optional[int] = None  # data=timeseries: steps per window, the horizon and the target column
    horizon: Optional[int] = None
    target: Optional[str] = None
    layout: Optional[str] = None  # data=arrays: how its arrays were read

    def as_json(self) -> dict:
        out = {"kind": self.kind, "features": self.features, "mean": self.mean, "std": self.std}
        if self.window is not None:
            out.update(window=self.window, horizon=self.horizon, target=self.target)
        return out if self.layout is None else {**out, "layout": self.layout}


@dataclass(frozen=True)
class TabularEncoding(Described):
    """A table's columns in the model's input order, each numeric (fill, mean, std) or categorical
    (fill, categories): plain dicts as preprocessing.json holds them (tabular.check_description)."""

    kind: ClassVar[str] = "tabular"
    columns: list
    target: Optional[str] = None
    impute: Optional[str] = None

    def as_json(self) -> dict:
        return {"kind": self.kind, "target": self.target, "impute": self.impute, "columns": self.columns}


@dataclass(frozen=True)
class Vocabulary(Described):
    """Texts as token ids: words of the vocabulary are 2, 3, ...; pad_id 0, unknown_id 1."""

    kind: ClassVar[str] = "tokens"
    lowercase: bool
    max_len: int
    vocabulary: list
    padding: str = "pre"
    truncating: str = "pre"
    pad_id: int = 0
    unknown_id: int = 1

    def as_json(self) -> dict:
        return {
            "kind": self.kind,
            "lowercase": self.lowercase,
            "max_len": self.max_len,
            "padding": self.padding,
            "truncating": self.truncating,
            "pad_id": self.pad_id,
            "unknown_id": self.unknown_id,
            "vocabulary": self.vocabulary,
        }


KINDS = {cls.kind: cls for cls in (Standardization, FeatureStandardization, TabularEncoding, Vocabulary)}


def vocabulary_size(description: Described) -> int:
    """Rows of the embedding table for token data (padding, unknown, the words kept); 0 otherwise."""
    return len(description.vocabulary) + 2 if isinstance(description, Vocabulary) else 0


def from_json(stored: dict) -> Described:
    """preprocessing.json's "transform" as its typed description (its kind checked before)."""
    return KINDS[stored["kind"]].from_json(stored)
