"""The model server (``python -m aiopt_lib.serve``): real processes and real HTTP, no mocks.

Two tiny models (the compact chart+indicator network and the logistic baseline) are trained on
real EUR/USD samples and saved; one server process serves both with a cache of ONE model per
worker, so every request that names the other model makes the worker switch. Answers are
compared with the same models' ``predict_proba`` in this process. The functions behind the
server (catalog, inputs, engine and the LitServe API's hooks) are tested in process too.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import polars as pl
import pytest
from PIL import Image

from aiopt_lib.core.errors import ConfigError
from aiopt_lib.data.sources import load_sample
from aiopt_lib.features.dataset import DatasetConfig, build_dataset, read_dataset_bars
from aiopt_lib.features.labels import CLASSES
from aiopt_lib.features.render import RenderSpec
from aiopt_lib.features.splits import purged_split
from aiopt_lib.models import load_model
from aiopt_lib.models.base import SampleSet, load_sample_set
from aiopt_lib.models.networks import CompactChartNet, CompactConfig, LogisticBaseline
from aiopt_lib.serve.catalog import ModelCache, ServedModel, open_models, parse_model_arg
from aiopt_lib.serve.engine import GroupFailure, predict_items
from aiopt_lib.serve.inputs import ItemError, decode_image, prepare_item
from aiopt_lib.serve.schemas import PredictRequest
from aiopt_lib.serve.server import SignalAPI, main_serve
from tests.serve_process import Server, serve_process

ROOT = Path(__file__).resolve().parent.parent
SPEC = RenderSpec(width=40, height=32)  # 16 bars, 2 px each
WINDOW = 16
BAR_COLUMNS = ("open", "high", "low", "close", "volume")


# -- fixtures: a dataset, two saved models, one server ---------------------------------------


@dataclasses.dataclass
class World:
    root: Path
    bars: pl.DataFrame
    data: SampleSet
    folders: dict[str, Path]
    models: dict[str, Any]
    entries: dict[str, ServedModel]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    base = tmp_path_factory.mktemp("serve")
    root = base / "dataset"
    build_dataset(load_sample().head(700), root, DatasetConfig(window=WINDOW))
    data = load_sample_set(root, spec=SPEC)
    split = purged_split(data.samples)
    train, valid = data.take(split.train), data.take(split.validation)
    config = CompactConfig(spec=SPEC, channels=(4, 8, 8), hidden=16, epochs=1, batch_size=64)
    compact = CompactChartNet(config, progress=False)
    compact.fit(train, valid)
    logistic = LogisticBaseline()
    logistic.fit(train, valid)
    folders = {"compact": base / "compact", "logistic": base / "logistic"}
    compact.save(folders["compact"])
    logistic.save(folders["logistic"])
    models = {name: load_model(folder) for name, folder in folders.items()}
    entries = {e.id: e for e in open_models([f"{k}={v}" for k, v in folders.items()], window=16)}
    symbol = data.samples["symbol"][0]
    return World(root, read_dataset_bars(root, symbol), data, folders, models, entries)


@pytest.fixture(scope="module")
def server(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server in its own process group: both models, a cache of one model, batches of up
    to 8 requests gathered for 5 ms (so concurrent requests for both models share batches)."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    arguments = [
        f"compact={world.folders['compact']}",
        f"logistic={world.folders['logistic']}",
        "--window", str(WINDOW),
        "--cache-size", "1",
        "--max-batch", "8",
        "--batch-timeout", "0.005",
    ]  # fmt: skip
    with serve_process(arguments, log) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


# -- helpers -----------------------------------------------------------------------------------


def row_features(world: World, model_id: str, row: int) -> dict[str, float | None]:
    names = list(world.entries[model_id].feature_names)
    values = world.data.samples.select(pl.col(names).cast(pl.Float64)).row(row)
    return {n: (None if v is None else float(v)) for n, v in zip(names, values, strict=True)}


def png(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def item_for(world: World, model_id: str, row: int) -> dict[str, Any]:
    """The inputs of sample ``row`` as the model reads them (features, and the chart as PNG)."""
    item: dict[str, Any] = {"model": model_id, "features": row_features(world, model_id, row)}
    if world.entries[model_id].uses_image:
        assert world.data.images is not None
        item["image"] = png(world.data.images[row])
    return item


def bars_until(world: World, row: int, history: int | None = None) -> dict[str, list[Any]]:
    """The bars up to sample ``row``'s bar, as the live client sends them (ISO times)."""
    ts = world.data.samples["ts"][row]
    frame = world.bars.filter(pl.col("ts") <= ts)
    if history is not None:
        frame = frame.tail(history)
    return {
        "ts": [t.isoformat() for t in frame["ts"].to_list()],
        **{c: frame[c].to_list() for c in BAR_COLUMNS},
    }


def expected(world: World, model_id: str, rows: list[int]) -> np.ndarray:
    return world.models[model_id].predict_proba(world.data.take(rows))


def probabilities(answer: dict[str, Any]) -> np.ndarray:
    return np.array([answer["probabilities"][c] for c in CLASSES])


def assert_error(response: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text
    body = response.json()
    assert set(body) == {"error", "field", "status"} and body["status"] == status
    for word in words:
        assert word in body["error"], body
    return body


# -- over HTTP -----------------------------------------------------------------------------------


def test_bars_request_of_the_live_client_matches_in_process(
    world: World, client: httpx.Client
) -> None:
    """The compatibility contract: ``{"model", "bars": columns with ISO times}``, answered by
    one prediction whose probabilities (by label) are the model's on that sample."""
    row = world.data.samples.height - 1
    for model_id in ("compact", "logistic"):
        response = client.post("/predict", json={"model": model_id, "bars": bars_until(world, row)})
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["model"] == model_id
        assert answer["version"] == world.entries[model_id].version
        assert list(answer["probabilities"]) == list(CLASSES)
        np.testing.assert_allclose(
            probabilities(answer), expected(world, model_id, [row])[0], atol=1e-6
        )
        assert answer["label"] == CLASSES[int(np.argmax(probabilities(answer)))]
        assert answer["confidence"] == max(answer["probabilities"].values())


def test_too_few_bars_is_a_4xx_that_says_so(world: World, client: httpx.Client) -> None:
    row = world.data.samples.height - 1
    for model_id in ("compact", "logistic"):
        response = client.post(
            "/predict", json={"model": model_id, "bars": bars_until(world, row, history=30)}
        )
        assert_error(response, 422, "too few bars")


def test_features_and_image_items_single_and_list(world: World, client: httpx.Client) -> None:
    rows = [5, 77, 300]
    single = client.post("/predict", json=item_for(world, "compact", rows[0]))
    assert single.status_code == 200, single.text
    np.testing.assert_allclose(
        probabilities(single.json()), expected(world, "compact", rows[:1])[0], atol=1e-6
    )
    items = [item_for(world, m, r) for r in rows for m in ("compact", "logistic")]
    items[0]["id"] = "first"
    listed = client.post("/predict", json=items)
    assert listed.status_code == 200, listed.text
    answers = listed.json()["predictions"]
    assert [a["model"] for a in answers] == [i["model"] for i in items]
    assert answers[0]["id"] == "first"
    for model_id in ("compact", "logistic"):
        got = np.array([probabilities(a) for a in answers if a["model"] == model_id])
        np.testing.assert_allclose(got, expected(world, model_id, rows), atol=1e-6)
    # {"items": [...], "model": ...}: the request's model is the items' default
    wrapped = client.post(
        "/predict",
        json={"model": "logistic", "items": [{"features": row_features(world, "logistic", 9)}]},
    )
    assert wrapped.status_code == 200, wrapped.text
    (answer,) = wrapped.json()["predictions"]
    assert answer["model"] == "logistic"
    np.testing.assert_allclose(
        probabilities(answer), expected(world, "logistic", [9])[0], atol=1e-6
    )


def test_no_model_named_means_the_first_served(world: World, client: httpx.Client) -> None:
    item = item_for(world, "compact", 12)
    del item["model"]
    response = client.post("/predict", json=item)
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "compact"


def test_explain_gives_reasons(world: World, client: httpx.Client) -> None:
    for model_id in ("logistic", "compact"):
        item = {**item_for(world, model_id, 40), "explain": True}
        response = client.post("/predict", json=item)
        assert response.status_code == 200, response.text
        explanation = response.json()["explanation"]
        assert explanation["available"] and explanation["method"] == "occlusion"
        attributions = explanation["attributions"]
        assert 1 <= len(attributions) <= 5
        assert {a["feature"] for a in attributions} <= set(world.entries[model_id].feature_names)
        effects = [abs(a["effect"]) for a in attributions]
        assert effects == sorted(effects, reverse=True)
        if model_id == "logistic":  # the baseline says its own reasons too
            assert explanation["text"]
    plain = client.post("/predict", json=item_for(world, "logistic", 40)).json()
    assert plain.get("explanation") is None


def test_models_lists_what_each_reads(world: World, client: httpx.Client) -> None:
    body = client.get("/models").json()
    assert body["default"] == "compact"
    infos = {m["id"]: m for m in body["models"]}
    assert set(infos) == {"compact", "logistic"}
    assert infos["compact"]["image_size"] == [SPEC.height, SPEC.width]
    assert infos["compact"]["inputs"] == ["features", "image", "bars"]
    assert infos["logistic"]["inputs"] == ["features", "bars"]
    assert infos["logistic"]["image_size"] is None
    assert infos["compact"]["window"] == WINDOW
    for model_id, info in infos.items():
        assert info["version"] == world.entries[model_id].version
        assert info["feature_names"] == list(world.entries[model_id].feature_names)
    assert sum(m["loaded"] for m in body["models"]) == 1  # one worker, a cache of one
    assert client.get("/health").status_code == 200


def test_switching_models_under_concurrent_requests_never_mixes_answers(
    world: World, client: httpx.Client
) -> None:
    """A cache of one model and 16 clients asking both models at once: batches hold both, the
    worker switches between groups, and every answer is its own model's on its own sample."""
    rows = list(range(100, 124))
    jobs = [(m, r) for r in rows for m in ("compact", "logistic")]
    want = {m: dict(zip(rows, expected(world, m, rows), strict=True)) for m in world.entries}

    def ask(job: tuple[str, int]) -> tuple[str, int, dict[str, Any]]:
        model_id, row = job
        item = {**item_for(world, model_id, row), "id": f"{model_id}-{row}"}
        response = client.post("/predict", json=item)
        assert response.status_code == 200, response.text
        return model_id, row, response.json()

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(ask, jobs * 2))
    for model_id, row, answer in results:
        assert answer["model"] == model_id and answer["id"] == f"{model_id}-{row}"
        np.testing.assert_allclose(probabilities(answer), want[model_id][row], atol=1e-6)
    loaded = [m["loaded"] for m in client.get("/models").json()["models"]]
    assert sum(loaded) == 1


def test_bad_requests_are_json_4xx(world: World, client: httpx.Client) -> None:
    assert_error(client.post("/predict", content=b'{"model": "compact", "bars": {'), 400, "JSON")
    assert_error(
        client.post("/predict", content=b"", headers={"content-type": "application/json"}),
        400,
        "empty body",
    )
    body = assert_error(
        client.post("/predict", json={"model": "nope", "features": {}}), 404, "'nope'", "compact"
    )
    assert body["field"] == "model"
    features = row_features(world, "logistic", 3)
    features["not_a_feature"] = 1.0
    del features["rsi_14"]
    body = assert_error(
        client.post("/predict", json={"model": "logistic", "features": features}),
        422,
        "missing rsi_14",
        "unknown not_a_feature",
    )
    assert body["field"] == "features"
    item = item_for(world, "compact", 3)
    assert world.data.images is not None
    item["image"] = png(world.data.images[3][:-2])
    body = assert_error(client.post("/predict", json=item), 422, "30×40", "32×40")
    assert body["field"] == "image"
    item["image"] = "not base64!"
    assert_error(client.post("/predict", json=item), 422, "base64")
    # the problem's place in a list
    items = [item_for(world, "logistic", 1), {"model": "logistic", "features": {"x": 1}}]
    body = assert_error(client.post("/predict", json=items), 422, "unknown x")
    assert body["field"] == "items[1].features"
    body = assert_error(
        client.post("/predict", json={"model": "logistic", "features": {"rsi_14": "high"}}),
        422,
        "valid number",
    )
    assert body["field"] == "items[0].features.rsi_14"
    assert_error(client.post("/predict", json=[]), 422, "at least 1")
    assert_error(client.post("/predict", json=5), 422, "list of items")
    assert_error(client.post("/predict", json={"model": "compact", "colour": 1}), 422, "colour")
    assert_error(client.get("/nowhere"), 404, "no such endpoint")
    assert_error(client.get("/predict"), 405)


def test_a_bad_request_does_not_fail_its_batch(world: World, client: httpx.Client) -> None:
    good = [item_for(world, "logistic", r) for r in range(10)]
    bad = [{"model": "logistic", "features": {"x": 1.0}}, {"model": "nope"}] * 5

    def ask(item: dict[str, Any]) -> int:
        return client.post("/predict", json=item).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(ask, [x for pair in zip(good, bad, strict=True) for x in pair]))
    assert statuses[0::2] == [200] * 10
    assert sorted(set(statuses[1::2])) == [404, 422]


def test_bounded_load(world: World, client: httpx.Client) -> None:
    """1,000 requests from 16 clients within 30 s, every one answered."""
    items = [item_for(world, "logistic", r) for r in range(50)]

    def ask(i: int) -> int:
        return client.post("/predict", json=items[i % len(items)]).status_code

    started = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(ask, range(1000)))
    seconds = time.perf_counter() - started
    assert statuses == [200] * 1000
    assert seconds < 30, f"{seconds:.1f} s"


def test_an_unservable_folder_is_one_line_and_status_2(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "aiopt_lib.serve", str(tmp_path / "empty"), "--port", "18999"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "no model.json" in lines[0], done.stderr
    assert "Traceback" not in done.stderr


# -- the command line in process (everything that fails before a server starts) ----------------


def test_main_serve_refuses_bad_arguments(
    world: World, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    compact, logistic = str(world.folders["compact"]), str(world.folders["logistic"])
    cases = [
        ([], "MODEL_DIR"),
        ([logistic, "--port", "80"], "--port"),
        ([logistic, "--port", "many"], "invalid int"),
        ([logistic, "--host", "10.1.2.3"], "--host"),
        ([logistic, "--batch-timeout", "0"], "--batch-timeout"),
        ([logistic, "--workers", "0"], "at least 1"),
        ([logistic, logistic], "two models are called 'logistic'"),
        ([compact], "--window"),  # 64 bars do not fit its 40 px charts
        ([f"bad id={logistic}"], "not a usable model id"),
        ([str(tmp_path / "missing")], "no model.json"),
    ]
    for argv, words in cases:
        assert main_serve(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], (argv, err)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main_serve([logistic, "--port", str(port)]) == 2
        assert "cannot listen" in capsys.readouterr().err
    assert main_serve(["--help"]) == 0
    assert "MODEL_DIR" in capsys.readouterr().out


# -- the pieces, in process ----------------------------------------------------------------------


def test_parse_model_arg(tmp_path: Path) -> None:
    assert parse_model_arg("m1=some/dir") == ("m1", Path("some/dir"))
    folder = tmp_path / "my.model-2"
    assert parse_model_arg(str(folder)) == ("my.model-2", folder)
    with pytest.raises(ConfigError, match="usable model id"):
        parse_model_arg(str(tmp_path / "a b"))


def test_model_cache_drops_the_least_recently_used(world: World) -> None:
    events: list[tuple[str, bool]] = []
    cache = ModelCache(world.entries, 1, on_change=lambda m, loaded: events.append((m, loaded)))
    first = cache.get("compact")
    assert cache.get("compact") is first and cache.holds("compact")
    cache.get("logistic")
    assert cache.loaded() == ["logistic"] and not cache.holds("compact")
    assert events == [("compact", True), ("compact", False), ("logistic", True)]
    two = ModelCache(world.entries, 2)
    two.get("compact"), two.get("logistic"), two.get("compact")
    assert two.loaded() == ["logistic", "compact"]
    with pytest.raises(ConfigError):
        ModelCache(world.entries, 0)


def test_predict_items_groups_by_model_and_keeps_order(world: World) -> None:
    cache = ModelCache(world.entries, 1)
    rows = [3, 4, 5]
    requests = [item_for(world, m, r) for r in rows for m in ("logistic", "compact")]
    items = [
        prepare_item(
            world.entries[i["model"]], PredictRequest.model_validate(i).items[0], explain=False
        )
        for i in requests
    ]
    answers = predict_items(items, cache)
    assert [a["model"] for a in answers] == [i["model"] for i in requests]  # type: ignore[index]
    for model_id in ("logistic", "compact"):
        got = np.array([probabilities(a) for a in answers if a["model"] == model_id])  # type: ignore[index]
        np.testing.assert_allclose(got, expected(world, model_id, rows), atol=1e-6)
    # a model whose folder vanished after start: its group fails with 503, others answer
    gone = world.root.parent / "gone"
    shutil.copytree(world.folders["logistic"], gone)
    (entry,) = open_models([f"gone={gone}"])
    shutil.rmtree(gone)
    mixed = ModelCache({**world.entries, "gone": entry}, 2)
    results = predict_items([dataclasses.replace(items[0], model_id="gone"), items[1]], mixed)
    assert isinstance(results[0], GroupFailure) and results[0].status == 503
    assert isinstance(results[1], dict) and results[1]["model"] == "compact"


def test_prepare_item_refusals(world: World) -> None:
    compact = world.entries["compact"]
    row = world.data.samples.height - 1
    bars = bars_until(world, row, history=80)
    bars["ts"][10] = bars["ts"][9]
    with pytest.raises(ItemError, match="not unique") as caught:
        prepare_item(compact, PredictRequest.model_validate({"bars": bars}).items[0], explain=False)
    assert caught.value.field == "bars"
    with pytest.raises(ItemError, match="send 'features'"):
        prepare_item(compact, PredictRequest.model_validate({}).items[0], explain=False)
    assert world.data.images is not None
    data_url = "data:image/png;base64," + png(world.data.images[0])
    np.testing.assert_array_equal(decode_image(compact, data_url), world.data.images[0])
    bars_rows = [
        dict(zip(("ts", *BAR_COLUMNS), values, strict=True))
        for values in zip(*bars_until(world, row).values(), strict=True)
    ]
    by_rows = PredictRequest.model_validate({"bars": bars_rows}).items[0]
    by_columns = PredictRequest.model_validate({"bars": bars_until(world, row)}).items[0]
    assert by_rows.bars == by_columns.bars


def test_signal_api_hooks_isolate_bad_requests(world: World) -> None:
    """decode -> predict -> encode of a batch as LitServe calls them: one bad request is
    answered with its error, the others with their predictions."""
    api = SignalAPI(list(world.entries.values()), cache_size=1)
    api.setup("cpu")
    bodies = [
        item_for(world, "logistic", 7),
        {"model": "missing"},
        [item_for(world, "compact", 7), item_for(world, "logistic", 8)],
    ]
    decoded = [api.decode_request(PredictRequest.model_validate(b)) for b in bodies]
    responses = [api.encode_response(y) for y in api.predict(decoded)]
    assert [r.status_code for r in responses] == [200, 404, 200]
    first = json.loads(bytes(responses[0].body))
    np.testing.assert_allclose(probabilities(first), expected(world, "logistic", [7])[0], atol=1e-6)
    assert len(json.loads(bytes(responses[2].body))["predictions"]) == 2
    single = api.encode_response(api.predict(decoded[0]))  # max_batch 1: one request, no list
    alone = json.loads(bytes(single.body))
    assert alone["model"] == "logistic" and alone["label"] == first["label"]
    np.testing.assert_allclose(probabilities(alone), probabilities(first), atol=1e-6)
