"""create_app wiring, in-process on the tiny server's engine (no second model load): the task-router
extension point, the web page at /, OpenAPI at /docs."""
from __future__ import annotations

import pytest
from starlette.testclient import TestClient

import server.app as app_module
from server.settings import Settings


@pytest.fixture
def make_app(tiny_server, monkeypatch):
    def build(**overrides):
        settings = Settings(model=tiny_server.engine.model_path, served_model_name="tiny", self_test="off",
                            **overrides)
        return TestClient(app_module.create_app(settings, tiny_server.engine))  # no lifespan: engine untouched

    return build


def test_task_router_is_mounted_behind_the_api_key(make_app, monkeypatch) -> None:
    monkeypatch.setattr(app_module, "TASKS_MODULE", "tests.server.tasks_router_example")
    client = make_app(api_key=["k"])
    assert client.post("/v1/example-task").status_code == 401
    assert client.post("/v1/example-task", headers={"Authorization": "Bearer k"}).json() == {"ok": True}


def test_missing_task_module_is_fine(make_app, monkeypatch) -> None:
    monkeypatch.setattr(app_module, "TASKS_MODULE", "tests.server.no_such_module")
    assert make_app().get("/health").status_code == 200


def test_web_page_is_served_at_root(make_app) -> None:
    resp = make_app().get("/")
    assert resp.status_code == 200 and "<html" in resp.text.lower()


def test_web_dir_flag_points_elsewhere(make_app, tmp_path) -> None:
    (tmp_path / "index.html").write_text("<html>custom page</html>")
    assert "custom page" in make_app(web_dir=str(tmp_path)).get("/").text


def test_openapi_docs_list_the_routes(make_app) -> None:
    client = make_app()
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/models/{model_id}", "/health",
                 "/ready", "/metrics"):
        assert path in paths, path
