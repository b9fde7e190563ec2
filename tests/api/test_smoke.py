def test_claim_roundtrip(api):
    r = api.post("/v1/pools", json={"name": "vlan", "ranges": [[1, 10]]})
    assert r.status_code == 201, r.text
    r = api.post("/v1/pools/vlan/claims", json={"key": "a/b"})
    assert r.status_code == 201 and r.json()["value"] == 1
    r = api.get("/v1/pools/vlan/claims/a%2Fb")
    assert r.status_code == 200 and r.json()["value"] == 1
