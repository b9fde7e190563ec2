"""Readiness gates the API until the restore is complete; /metrics speaks Prometheus."""

from __future__ import annotations

import threading

from prometheus_client.parser import text_string_to_metric_families

from tenure.services.examples import ensure_examples
from tests.conftest import start_api


def test_not_ready_until_restored(db_url, tmp_path):
    gate = threading.Event()
    data = tmp_path / "data"
    for api in start_api(db_url, data, wait_ready=False, before_ready=gate.wait):
        try:
            r = api.client.get("/healthz")
            assert r.status_code == 503 and r.json()["status"] == "restoring"
            r = api.client.get("/v1/pools", headers={"Authorization": "Bearer whatever"})
            assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
        finally:
            gate.set()
        assert api.app.state.tenure.ready.wait(30)
        api.admin_token = (data / "admin.token").read_text().strip()
        assert api.client.get("/healthz").status_code == 200
        assert api.get("/v1/pools").status_code == 200


def test_example_pools(db_url, tmp_path):
    for api in start_api(db_url, tmp_path / "data", seed=ensure_examples):
        names = {p["name"] for p in api.get("/v1/pools").json()["pools"]}
        assert {"mpls-labels", "vlans", "vxlan-vnis", "ifindexes"} <= names


def _samples(text):
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_count_requests_claims_and_utilisation(api):
    api.post("/v1/pools", json={"name": "p", "ranges": [[1, 4]]})
    api.post("/v1/pools/p/claims", json={"key": "a"})
    api.post("/v1/pools/p/claims", json={"key": "a"})
    api.post("/v1/pools/p/claims", json={"key": "b", "value": 99})
    api.post("/v1/pools/nope/claims", json={"key": "b"})
    assert api.client.get("/metrics").status_code == 401
    assert api.get("/metrics", token=api.token("member", project="x")).status_code == 403
    s = _samples(api.get("/metrics").text)
    assert s[("tenure_claims_total", (("outcome", "created"), ("pool", "p")))] == 1
    assert s[("tenure_claims_total", (("outcome", "existing"), ("pool", "p")))] == 1
    assert s[("tenure_claims_total", (("outcome", "refused"), ("pool", "p")))] == 1
    assert not any(k[0] == "tenure_claims_total" and ("pool", "nope") in k[1] for k in s)  # no unbounded labels
    assert s[("tenure_pool_used", (("pool", "p"),))] == 1
    assert s[("tenure_pool_utilization", (("pool", "p"),))] == 0.25
    key = ("tenure_http_requests_total", (("method", "POST"), ("route", "/v1/pools/{pool}/claims"), ("status", "201")))
    assert s[key] == 1
