"""Preflight: an unreachable tracking server, a refused login or a wrong Ray address stops `orch run`
in seconds with a message naming the setting, instead of after the trials spent their GPU time.

The servers here are real sockets on 127.0.0.1: a closed port, and a small HTTP server that answers
like an MLflow server behind basic auth (401 without the right Authorization header).
"""

from __future__ import annotations

import base64
import http.server
import json
import threading
import time

import pytest

from orchestrator.experiment.schema import ExperimentConfig
from orchestrator.cluster.preflight import (PreflightError, check_ray_address, check_settings, check_storage,
                                           check_tracking)
from orchestrator.settings import RunSettings
from orchestrator.storage import resolve
from tests.orchestrator.conftest import free_port
from trainers.errors import InputError

USER, PASSWORD, TOKEN = "alice", "s3cret", "tok-123"


class FakeMlflow(http.server.BaseHTTPRequestHandler):
    """experiments/search as an MLflow server behind basic auth answers it; `/html` is some other site."""

    def do_POST(self):
        accepted = {"Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode(), f"Bearer {TOKEN}"}
        if self.path.startswith("/html"):
            self._answer(200, "text/html", b"<html>a login page</html>")
        elif self.headers.get("Authorization") not in accepted:
            self._answer(401, "application/json", b'{"error_code": "UNAUTHENTICATED"}')
        else:
            self._answer(200, "application/json", json.dumps({"experiments": []}).encode())

    def _answer(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def fake_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeMlflow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(autouse=True)
def no_credentials(monkeypatch):
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "RAY_ADDRESS"):
        monkeypatch.delenv(name, raising=False)


def test_an_unreachable_server_fails_in_seconds_naming_tracking_uri():
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(PreflightError) as error:
        check_tracking(uri)
    assert time.monotonic() - started < 120  # MLflow's own client retries for over 4 minutes (7 retries, backoff 2 s)
    assert str(error.value) == (f"tracking.uri: cannot reach the MLflow server at {uri} (Connection refused); "
                                "start it, or point tracking.uri at it. Nothing was started.")
    assert isinstance(error.value, InputError)  # the CLI's exit code 2


def test_a_server_asking_for_credentials_says_which_variables_to_set(fake_server):
    with pytest.raises(PreflightError, match="asks for credentials and none of MLFLOW_TRACKING_USERNAME, "
                                             "MLFLOW_TRACKING_PASSWORD, MLFLOW_TRACKING_TOKEN is set"):
        check_tracking(fake_server)


def test_wrong_credentials_are_named_without_their_values(fake_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
    with pytest.raises(PreflightError) as error:
        check_tracking(fake_server)
    assert "it refused MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD" in str(error.value)
    assert "wrong" not in str(error.value)


@pytest.mark.parametrize("variables", [{"MLFLOW_TRACKING_USERNAME": USER, "MLFLOW_TRACKING_PASSWORD": PASSWORD},
                                       {"MLFLOW_TRACKING_TOKEN": TOKEN}])
def test_mlflow_credentials_from_the_environment_are_sent(fake_server, monkeypatch, variables):
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    check_tracking(fake_server)  # no error: the server accepted them


def test_a_web_page_that_is_not_mlflow_is_told_apart(fake_server):
    with pytest.raises(PreflightError, match=r"answered HTTP 200 \(<html>a login page</html>\), not as an "
                                             r"MLflow tracking server does"):
        check_tracking(f"{fake_server}/html")


def test_local_stores_need_no_check(tmp_path):
    check_tracking(f"sqlite:///{tmp_path}/mlflow.db")  # created by the run itself


def test_an_unreachable_database_names_it_without_its_password():
    pytest.importorskip("psycopg", reason="psycopg (the test extra) drives PostgreSQL stores")
    uri = f"postgresql://orch:hunter2@127.0.0.1:{free_port()}/mlflow"
    with pytest.raises(PreflightError) as error:
        check_tracking(uri, timeout_s=3)
    assert str(error.value).startswith(f"tracking.uri: cannot connect to the database "
                                       f"{uri.replace('hunter2', '***')} (")
    assert "hunter2" not in str(error.value)


def test_a_ray_address_where_nothing_listens_names_its_source():
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(PreflightError, match=rf"^--address: no Ray cluster answers at {address} \(.*refused"):
        check_ray_address(address, "--address", timeout_s=3)
    with pytest.raises(PreflightError, match=rf"^ray.address: no Ray cluster answers at ray://{address} "):
        check_ray_address(f"ray://{address}", "ray.address", timeout_s=3)


def test_auto_follows_ray_address_as_ray_init_does(monkeypatch):
    port = free_port()
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    with pytest.raises(PreflightError, match=rf"^ray.address: no Ray cluster answers at \S+:{port} "):  # Ray's own IP
        check_ray_address("auto", "ray.address", timeout_s=3)


def test_no_address_means_a_local_ray_and_nothing_to_check():
    check_ray_address(None)


def test_a_bucket_that_does_not_answer_names_ray_storage_and_the_credential_variables(monkeypatch):
    """An S3 endpoint on a closed local port (dummy keys; no instance-metadata lookup)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    storage = resolve(f"s3://orch/results?endpoint_override=127.0.0.1:{free_port()}&scheme=http&region=us-east-1")
    with pytest.raises(PreflightError, match=r"^ray.storage: cannot reach s3://orch/results: .*Could not connect.* "
                                             r"\(credentials come from the environment: AWS_ACCESS_KEY_ID"):
        check_storage(storage)


def test_a_bucket_that_does_not_exist_is_named_before_anything_starts(s3_server):
    setting = s3_server.bucket()
    check_storage(resolve(setting))  # exists; its prefix does not yet, which the run makes
    bucket = setting.split("/")[2]
    missing = resolve(setting.replace(bucket, f"{bucket}-missing"))
    with pytest.raises(PreflightError, match=rf"^ray.storage: the bucket '{bucket}-missing' of s3://{bucket}-missing/"
                                             r"results does not exist: create it \(or add allow_bucket_creation=true"):
        check_storage(missing)
    check_storage(resolve(f"{missing.setting}&allow_bucket_creation=true"))


def test_a_local_storage_needs_no_check(tmp_path):
    check_storage(resolve(str(tmp_path / "results")))
    assert not (tmp_path / "results").exists()


def test_check_reports_the_first_thing_the_run_could_not_reach(tmp_path, monkeypatch):
    port = free_port()
    config = ExperimentConfig.model_validate({
        "name": "grid", "ray": {"storage": str(tmp_path / "results")},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"}})
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    with pytest.raises(PreflightError, match=f"^RAY_ADDRESS: no Ray cluster answers at 127.0.0.1:{port}"):
        check_settings(RunSettings.resolve(config), timeout_s=3)
    with pytest.raises(PreflightError, match="^--address: "):
        check_settings(RunSettings.resolve(config, address=f"127.0.0.1:{port}"), timeout_s=3)
    config.tracking.uri = f"http://127.0.0.1:{port}"
    with pytest.raises(PreflightError, match="^tracking.uri: cannot reach"):
        check_settings(RunSettings.resolve(config), timeout_s=3)
    assert not (tmp_path / "results").exists()  # nothing written
