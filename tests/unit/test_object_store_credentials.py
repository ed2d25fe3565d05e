"""Object-store credentials: a static key when one is configured, the pod's identity otherwise.

On EKS the pods have no key at all (IRSA); on kind the key comes from the Secret. Neither
may end in an anonymous client or in an empty ``AWS_ACCESS_KEY_ID`` that hides the pod's own
credentials from boto3's default chain.
"""

from __future__ import annotations

import os

import pytest
from minio.credentials import ChainedProvider, StaticProvider

from fraud_app.supervisor import s3_env
from fraud_features.store import feast_env
from fraud_predictor.storage import S3Config, in_own_store
from fraudcore.settings import Settings
from fraudcore.storage import s3_client, storage_options
from tests.unit.test_manifests import LOCAL, TARGETS, one, render


def settings_with_s3(access_key: str, secret_key: str) -> Settings:
    return Settings(_env_file=None, s3={"access_key": access_key, "secret_key": secret_key})


def test_a_configured_key_is_used_as_is() -> None:
    settings = settings_with_s3(access_key="fraud-key", secret_key="fraud-secret")
    provider = s3_client(settings)._provider
    assert isinstance(provider, StaticProvider)
    assert provider.retrieve().access_key == "fraud-key"
    env = feast_env(settings)
    assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == ("fraud-key", "fraud-secret")
    options = storage_options(settings)
    assert (options["key"], options["secret"]) == ("fraud-key", "fraud-secret")


def test_without_a_key_the_default_chain_finds_the_pods_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = settings_with_s3(access_key="", secret_key="")
    provider = s3_client(settings)._provider
    assert isinstance(provider, ChainedProvider), "an empty key must not make an anonymous client"
    # The first link of the chain: keys in the environment (a Secret's AWS_* variables).
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-the-secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-from-the-secret")
    chain = s3_client(settings)._provider
    assert chain is not None
    assert chain.retrieve().access_key == "from-the-secret"
    # s3fs gets no key, so botocore's chain (IRSA's web identity included) applies.
    assert "key" not in storage_options(settings)
    assert "secret" not in storage_options(settings)


def test_feast_env_never_blanks_a_credential(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "from-the-secret")
    env = feast_env(settings_with_s3(access_key="", secret_key=""))
    assert "AWS_ACCESS_KEY_ID" not in env
    assert "AWS_SECRET_ACCESS_KEY" not in env
    for name, value in env.items():  # what the transformer's os.environ.update(...) does
        monkeypatch.setenv(name, value)
    assert os.environ["AWS_ACCESS_KEY_ID"] == "from-the-secret"


def test_the_s3_endpoint_does_not_redirect_sts() -> None:
    """AWS_ENDPOINT_URL would send every AWS service, STS's AssumeRoleWithWebIdentity too,
    to the object store; the S3-only variable does not."""
    settings = settings_with_s3(access_key="k", secret_key="s")
    for env in (feast_env(settings), s3_env(settings)):
        assert "AWS_ENDPOINT_URL" not in env
        assert env["AWS_ENDPOINT_URL_S3"] == settings.s3.endpoint_url
    assert "AWS_ACCESS_KEY_ID" not in s3_env(settings_with_s3(access_key="", secret_key=""))


def test_the_predictor_reads_kserve_variables_and_the_s3_only_endpoint() -> None:
    config = S3Config.from_env({"AWS_ENDPOINT_URL_S3": "https://s3.eu-west-1.amazonaws.com"})
    assert (config.endpoint, config.secure, config.access_key, config.anonymous) == (
        "s3.eu-west-1.amazonaws.com",
        True,
        None,
        False,
    )
    anonymous = S3Config.from_env({"awsAnonymousCredential": "true"})
    assert anonymous.anonymous
    assert anonymous.access_key is None


def test_event_uris_are_read_through_the_predictors_own_store() -> None:
    assert in_own_store("s3://models/fraud/v7", "gs://models/fraud/champion") == "gs://models/fraud/v7"
    assert in_own_store("s3://models/fraud/v7", "s3://models/fraud/champion") == "s3://models/fraud/v7"
    assert in_own_store("s3://models/fraud/v7", "/mnt/models") == "s3://models/fraud/v7"


@pytest.mark.parametrize("target", TARGETS)
def test_the_transformer_maps_the_key_secret_like_the_workers(target: str) -> None:
    isvc = one(render(target), "InferenceService", "fraud")
    [container] = isvc["spec"]["transformer"]["containers"]
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container.get("env", [])
        if "secretKeyRef" in (e.get("valueFrom") or {})
    }
    for name, key in (
        ("FRAUD_S3__ACCESS_KEY", "AWS_ACCESS_KEY_ID"),
        ("FRAUD_S3__SECRET_KEY", "AWS_SECRET_ACCESS_KEY"),
    ):
        assert refs.get(name, {}).get("key") == key, f"{target}: the transformer lacks {name} from the Secret"
        assert refs[name]["name"].startswith("fraud-s3")
        # Optional: the cloud overlays have no key Secret and use the pod's identity.
        assert refs[name].get("optional") is True
    if target in LOCAL:
        secrets = {s["metadata"]["name"] for s in render(target) if s["kind"] == "Secret"}
        assert refs["FRAUD_S3__ACCESS_KEY"]["name"] in secrets
