"""Champion/challenger against the real MinIO and Kafka: a worse (or merely equal)
challenger never replaces the champion; the decision is recorded either way."""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pytest
import redis

from fraud_app.promote import PromotionRefusedError, promote
from fraud_monitor.outcomes import Outcome
from fraud_monitor.store import OutcomeStore
from fraud_pipelines.data import build_datasets, feature_matrix, plan_windows, simulate
from fraud_pipelines.onnx_export import convert, metadata_of
from fraud_pipelines.publish import publish
from fraud_pipelines.training import make_estimator
from fraudcore.features import DAY_US
from fraudcore.settings import Settings
from fraudcore.storage import s3_client
from tests.helpers import isolated, read_topic
from tests.integration.test_pipeline_local import SMALL_SIMULATION, remove_prefix


@pytest.fixture
def model_name(stack: Settings, unique: str) -> Iterator[str]:
    name = f"test-champion-{unique}"
    yield name
    remove_prefix(stack, f"{name}/")


def test_worse_challenger_does_not_replace_the_champion(
    stack: Settings, unique: str, model_name: str
) -> None:
    settings = isolated(stack, unique)
    raw = simulate(SMALL_SIMULATION)
    windows = plan_windows(
        "2024-01-01", "2024-03-01", train_start="2024-02-01", history_days=0, burn_in_days=14
    )
    sets = build_datasets(raw, windows)
    train = sets.train.loc[sets.train["timestamp"] >= windows.train_start]
    x_train, y_train = feature_matrix(train), train["is_fraud"].to_numpy()
    x_test, y_test = feature_matrix(sets.test), sets.test["is_fraud"].to_numpy()

    good = make_estimator("random_forest", {"n_estimators": 30, "max_depth": 8}).fit(x_train, y_train)
    shuffled = np.random.default_rng(0).permutation(y_train)  # learns nothing
    worse = make_estimator("logreg", {"C": 1.0}).fit(x_train, shuffled)
    metadata = {"data_window": {"test": windows.to_dict()}}

    def publish_model(estimator: object, version: str) -> dict[str, object]:
        onnx_bytes = convert(estimator, {"model_version": version}).SerializeToString()
        return publish(settings, onnx_bytes, x_test, y_test, metadata, model_name=model_name, version=version)

    first = publish_model(good, "v1-good")
    assert first["promoted"] is True
    second = publish_model(worse, "v2-worse")
    assert second["promoted"] is False
    decision = second["decision"]
    assert isinstance(decision, dict)
    assert decision["champion_version"] == "v1-good"
    assert decision["challenger_ap"] < decision["champion_ap"]
    third = publish_model(good, "v3-equal")  # the same model: equal AP does not win
    assert third["promoted"] is False

    client = s3_client(stack)
    bucket = stack.s3.models_bucket
    champion = client.get_object(bucket, f"{model_name}/champion/model.onnx").read()
    assert metadata_of(champion)["model_version"] == "v1-good"
    champion_meta = json.loads(client.get_object(bucket, f"{model_name}/champion/metadata.json").read())
    assert champion_meta["version"] == "v1-good"
    recorded = json.loads(client.get_object(bucket, f"{model_name}/decisions/v2-worse.json").read())
    assert recorded["promoted"] is False
    assert recorded["champion_ap"] == pytest.approx(first["decision"]["challenger_ap"])  # type: ignore[index]
    version_meta = json.loads(client.get_object(bucket, f"{model_name}/v2-worse/metadata.json").read())
    assert version_meta["decision"]["promoted"] is False  # kept, and served in the shadow slot only
    shadow = client.get_object(bucket, f"{model_name}/shadow/model.onnx").read()
    assert metadata_of(shadow)["model_version"] == "v3-equal"  # the latest loser
    triton = {
        o.object_name
        for o in client.list_objects(bucket, prefix=f"{model_name}/triton/{model_name}/", recursive=True)
    }
    assert f"{model_name}/triton/{model_name}/1/model.onnx" in triton
    assert not any("/2/" in name for name in triton)

    records = read_topic(settings, settings.topics.model_events.name, expected=3, timeout_s=20)
    assert [(json.loads(r.value)["type"], json.loads(r.value)["version"]) for r in records] == [
        ("champion-changed", "v1-good"),
        ("shadow-changed", "v2-worse"),
        ("shadow-changed", "v3-equal"),
    ]

    # fraud promote: refused while the shadow's live precision is worse than the champion's
    # on the same days (the monitor's counts in Redis), done when it is not, or with --force.
    served = settings.model_copy(
        update={"serving": settings.serving.model_copy(update={"model_name": model_name})}
    )
    group = f"promote-{unique}"
    outcomes = OutcomeStore(redis.Redis(**stack.redis.client_kwargs()), f"monitor:{group}")
    day = 20_000

    def labelled(version: str, alerts_that_were_fraud: int) -> None:
        rows = [
            Outcome(version, day * DAY_US + i, f"C{i}", 0.9, True, i < alerts_that_were_fraud)
            for i in range(10)
        ]
        outcomes.apply(rows, {})

    labelled("v1-good", 8)
    labelled("v2-worse", 5)
    with pytest.raises(PromotionRefusedError, match="worse than the champion's"):
        promote(served, "v2-worse", group=group)
    with pytest.raises(PromotionRefusedError, match="no live decisions"):
        promote(served, "v3-equal", group=group)
    labelled("v3-equal", 9)
    done = promote(served, "v3-equal", group=group)
    assert (done["previous_champion"], done["forced"]) == ("v1-good", False)
    assert (
        json.loads(client.get_object(bucket, f"{model_name}/champion/metadata.json").read())["version"]
        == "v3-equal"
    )
    forced = promote(served, "v2-worse", group=group, force=True)
    assert forced["forced"] is True
    events = read_topic(settings, settings.topics.model_events.name, expected=5, timeout_s=20)
    assert [json.loads(r.value)["version"] for r in events][3:] == ["v3-equal", "v2-worse"]


def test_two_runs_publishing_at_once_make_exactly_one_champion(
    stack: Settings, unique: str, model_name: str
) -> None:
    """Both runs decide against no champion, then both claim it at the same moment: MinIO's
    conditional write lets one through; the other decides again against the winner and, with
    the same AP, is recorded as the challenger."""
    import threading

    settings = isolated(stack, unique)
    raw = simulate(SMALL_SIMULATION)
    windows = plan_windows(
        "2024-01-01", "2024-03-01", train_start="2024-02-01", history_days=0, burn_in_days=14
    )
    sets = build_datasets(raw, windows)
    train = sets.train.loc[sets.train["timestamp"] >= windows.train_start]
    x_test, y_test = feature_matrix(sets.test), sets.test["is_fraud"].to_numpy()
    model = make_estimator("logreg", {"C": 1.0}).fit(feature_matrix(train), train["is_fraud"].to_numpy())
    metadata = {"data_window": {"test": windows.to_dict()}}
    both_decided = threading.Barrier(2, timeout=60)
    results: dict[str, dict[str, object]] = {}
    errors: list[BaseException] = []

    def run(version: str) -> None:
        def wait_for_the_other(message: str) -> None:
            if message.startswith("promoted") and "no champion" in message:
                both_decided.wait()  # neither has claimed yet: both read "no champion"

        onnx_bytes = convert(model, {"model_version": version}).SerializeToString()
        try:
            results[version] = publish(
                settings,
                onnx_bytes,
                x_test,
                y_test,
                metadata,
                model_name=model_name,
                version=version,
                log=wait_for_the_other,
            )
        except BaseException as exc:  # surfaced below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(v,)) for v in ("run-a", "run-b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    promoted = [v for v, r in results.items() if r["promoted"]]
    assert len(promoted) == 1, results
    [winner] = promoted
    [loser] = [v for v in results if v != winner]
    loser_decision = results[loser]["decision"]
    assert isinstance(loser_decision, dict)
    assert loser_decision["champion_version"] == winner
    assert "kept the champion" in loser_decision["reason"]

    client = s3_client(stack)
    bucket = stack.s3.models_bucket

    def read_json(key: str) -> dict[str, object]:
        return dict(json.loads(client.get_object(bucket, f"{model_name}/{key}").read()))

    assert read_json("champion.json")["version"] == winner
    assert read_json("champion/metadata.json")["version"] == winner
    assert read_json(f"decisions/{loser}.json")["promoted"] is False
    triton = [
        o.object_name
        for o in client.list_objects(bucket, prefix=f"{model_name}/triton/{model_name}/", recursive=True)
        if o.object_name.endswith("model.onnx")
    ]
    assert len(triton) == 1, triton
    events = read_topic(settings, settings.topics.model_events.name, expected=2, timeout_s=20)
    kinds = sorted(json.loads(e.value)["type"] for e in events)
    assert kinds == ["champion-changed", "shadow-changed"]
    assert [
        json.loads(e.value)["version"] for e in events if json.loads(e.value)["type"] == "champion-changed"
    ] == [winner]
