"""Targets in any units (data.scale_target) and the input scalings (data.normalize), through the
real CLI: a price in the hundreds of thousands learns with the defaults, and every number a user
reads (metrics, predictions, eval, an exported model) is in the target's own units."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import FAST, nnrun, one_line_error, refused, summary, tool, train


def houses(n: int, seed: int) -> pd.DataFrame:
    """House prices (mean ~360,000, std ~150,000) from four numbers and a district, with noise."""
    rng = np.random.default_rng(seed)
    rooms, area = rng.uniform(2, 9, n), rng.uniform(40, 300, n)
    age, dist = rng.uniform(0, 80, n), rng.uniform(1, 40, n)
    hood = rng.choice(["north", "south", "east", "west"], n)
    bonus = pd.Series(hood).map({"north": 40000, "south": -20000, "east": 10000, "west": 0}).to_numpy()
    price = 50000 + 1800 * area + 15000 * rooms - 900 * age - 2500 * dist + bonus + rng.normal(0, 20000, n)
    return pd.DataFrame({"rooms": rooms, "area": area, "age": age, "dist": dist, "hood": hood, "price": price.round()})


@pytest.fixture
def prices(tmp_path):
    houses(500, 0).to_csv(tmp_path / "houses.csv", index=False)
    return ["data=csv", "data.path=houses.csv", "data.target=price"]


def test_a_price_in_the_hundreds_of_thousands_learns_with_the_defaults(tmp_path, prices):
    result, run_dir = train(tmp_path, *prices)
    info = summary(run_dir)
    assert info["test_r2"] >= 0.90, info
    assert 1000 < info["test_mae"] < 60000  # in dollars, not in standard deviations
    assert "data.scale_target: the model learns the target standardized" in result.stdout
    assert not info["warnings"]
    prep = json.loads((run_dir / "preprocessing.json").read_text())
    assert prep["target"]["mean"] > 100000 and prep["target"]["std"] > 50000

    new = houses(200, 1)
    new.drop(columns="price").to_csv(tmp_path / "new.csv", index=False)
    predicted = tool("nnrun-predict", f"run={run_dir}", "input=new.csv", "output=p.csv", cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr  # the command itself; eval and export run in-process
    values = pd.read_csv(tmp_path / "p.csv")["prediction"].to_numpy()
    truth = new["price"].to_numpy()
    r2 = 1 - ((values - truth) ** 2).sum() / ((truth - truth.mean()) ** 2).sum()
    assert r2 >= 0.85 and abs(values.mean() - truth.mean()) < 30000  # prices, not z-scores

    from nnrun.trained import eval_main, export_main

    eval_main([f"run={run_dir}", f"data.path={tmp_path / 'houses.csv'}"])  # (this process's folder is not tmp_path)
    scores = json.loads((run_dir / "eval.json").read_text())
    assert scores["test_mae"] == pytest.approx(info["test_mae"], rel=1e-6)
    assert scores["test_r2"] == pytest.approx(info["test_r2"], rel=1e-6)

    export_main([f"run={run_dir}", "format=torchscript"])
    import nnrun as api

    run = api.load_run(run_dir)
    x = run.prepare(new.drop(columns="price"))
    with torch.no_grad():
        scripted = torch.jit.load(str(run_dir / "model.ts"))(x).reshape(-1).double().numpy()
    assert np.allclose(scripted, run.predict(new.drop(columns="price")), rtol=1e-5)  # the file gives prices too
    assert np.allclose(run.predict(new.drop(columns="price")), values, rtol=1e-6)


def test_an_unscaled_huge_target_is_warned_about_and_the_hint_names_the_key(tmp_path, prices):
    result, run_dir = train(tmp_path, *prices, "data.scale_target=false", *FAST)
    line = next(x for x in result.stdout.splitlines() if "check unscaled_target" in x)
    assert "data.scale_target=true" in line and "e+05 in size" in line
    info = summary(run_dir)
    assert any("data.scale_target=true" in hint for hint in info["hints"]), info["hints"]
    assert "target" not in json.loads((run_dir / "preprocessing.json").read_text())
    assert info["test_mae"] > 100000  # it could not learn outputs that large in two short epochs


def test_a_target_near_one_is_not_warned_about_unscaled(tmp_path):
    frame = houses(300, 0)
    frame["price"] = frame["price"] / 1e5
    frame.to_csv(tmp_path / "small.csv", index=False)
    result, _ = train(
        tmp_path, "data=csv", "data.path=small.csv", "data.target=price", "data.scale_target=false", *FAST
    )
    assert "unscaled_target" not in result.stdout


def test_normalize_minmax_maps_the_training_range_to_0_1(tmp_path):
    houses(500, 0).assign(floor=3.0).to_csv(tmp_path / "houses.csv", index=False)
    prices = ["data=csv", "data.path=houses.csv", "data.target=price"]
    _, run_dir = train(tmp_path, *prices, "data.normalize=minmax", *FAST)
    columns = {c["name"]: c for c in json.loads((run_dir / "preprocessing.json").read_text())["transform"]["columns"]}
    assert (columns["floor"]["mean"], columns["floor"]["std"]) == (3.0, 1.0)  # constant: shifted only, as scikit-learn
    frame = houses(500, 0)
    area = frame["area"]
    # the training rows are a subset: their range lies inside the file's, and close to it
    assert area.min() <= columns["area"]["mean"] < area.min() + 2
    assert area.max() - area.min() - 4 < columns["area"]["std"] <= area.max() - area.min()
    assert "categories" in columns["hood"]  # text columns are still one-hot

    _, digits = train(tmp_path, "data.normalize=minmax", *FAST, name="digits")
    transform = json.loads((digits / "preprocessing.json").read_text())["transform"]
    assert (transform["mean"], transform["std"]) == (0.0, 16.0)  # the digits' pixels run 0..16


@pytest.mark.parametrize("value", ["none", "false"])
def test_normalize_none_and_false_leave_the_values_as_they_are(tmp_path, value):
    _, run_dir = train(tmp_path, f"data.normalize={value}", *FAST)
    transform = json.loads((run_dir / "preprocessing.json").read_text())["transform"]
    assert (transform["mean"], transform["std"]) == (0.0, 1.0)


def test_an_unknown_normalize_value_is_one_line(tmp_path):
    result = refused("data.normalize=zscore", *FAST, cwd=tmp_path)
    assert result.returncode == 2
    line = one_line_error(result)
    assert "data.normalize=zscore" in line and "minmax" in line


def test_resume_refuses_another_target_or_input_scaling(tmp_path, prices):
    _, run_dir = train(tmp_path, *prices, "trainer.epochs=1", "trainer.limit_batches=3")
    for change, key in (("data.scale_target=false", "data.scale_target"), ("data.normalize=minmax", "data.normalize")):
        result = refused(
            f"hydra.run.dir={run_dir}", *prices, "trainer.epochs=2", f"trainer.resume={run_dir}", change, cwd=tmp_path
        )
        assert result.returncode == 2
        assert key in one_line_error(result)
    resumed = nnrun(
        f"hydra.run.dir={run_dir}",
        *prices,
        "trainer.epochs=2",
        f"trainer.resume={run_dir}",
        "data.normalize=true",
        "trainer.plots=false",
        cwd=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr  # true is standard's other name: the same scaling
    again = nnrun(
        f"hydra.run.dir={run_dir}",
        *prices,
        "trainer.epochs=3",
        f"trainer.resume={run_dir}",
        "data.scale_target=true",  # null (the default) means true for regression
        "trainer.plots=false",
        cwd=tmp_path,
    )
    assert again.returncode == 0, again.stderr
    pd.concat([houses(500, 0), houses(50, 7)]).to_csv(tmp_path / "houses.csv", index=False)  # the file grew
    grown = refused(f"hydra.run.dir={run_dir}", *prices, "trainer.epochs=4", f"trainer.resume={run_dir}", cwd=tmp_path)
    assert grown.returncode == 2
    line = one_line_error(grown)
    assert "the data is not what the run trained on (train: 360 -> 396 samples" in line, line


@pytest.fixture(scope="module")
def fast_prices_run(tmp_path_factory):
    """A short run on the prices, trained once for the tests that tamper with a copy of it."""
    folder = tmp_path_factory.mktemp("prices")
    houses(500, 0).to_csv(folder / "houses.csv", index=False)
    return train(folder, "data=csv", "data.path=houses.csv", "data.target=price", *FAST)[1]


@pytest.mark.parametrize(
    "target, expected",
    [("abc", "needs a finite mean and std"), ({"mean": 0, "std": 1e-300}, "out of range"), (None, "no 'target'")],
)
def test_a_tampered_target_scaling_is_refused_in_one_line(tmp_path, fast_prices_run, target, expected):
    run_dir = shutil.copytree(fast_prices_run, tmp_path / "run")
    path = run_dir / "preprocessing.json"
    prep = json.loads(path.read_text())
    if target is None:
        del prep["target"]  # the config says scaling was on: predictions would be z-scores
    else:
        prep["target"] = target
    path.write_text(json.dumps(prep))
    houses(5, 1).drop(columns="price").to_csv(tmp_path / "new.csv", index=False)
    result = tool("nnrun-predict", f"run={run_dir}", "input=new.csv", cwd=tmp_path)
    assert result.returncode == 2
    assert expected in one_line_error(result)


def test_a_target_beyond_float32_is_one_line_naming_the_column(tmp_path):
    houses(60, 0).assign(price=lambda f: f["price"] * 1e300).to_csv(tmp_path / "huge.csv", index=False)
    result = refused("data=csv", "data.path=huge.csv", "data.target=price", *FAST, cwd=tmp_path)
    assert result.returncode == 2
    assert "column 'price' holds values up to" in one_line_error(result) and "float32" in one_line_error(result)
