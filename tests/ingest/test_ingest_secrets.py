"""No API key plaintext anywhere on disk (registries, audit logs, WAL, data, service logs,
spools): for this test's own scenario and for every key the session issued so far (the
``key_recorder`` fixture repeats the scan over the whole session when it ends)."""


def test_no_key_plaintext_on_disk(deployment, service, key_recorder):
    # A scenario of its own, so that the test means something whenever it runs.
    key = deployment.key()
    r = service.request(
        "POST", "/streams", key, json={"run_id": "scan", "tool": "t", "category": "process"}
    )
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    r = service.request(
        "POST",
        f"/streams/{sid}/batches",
        key,
        json={"batch_id": "b1", "rows": [{"time": "2026-01-01T00:00:00Z", "channel": "c"}]},
    )
    assert r.status_code == 200, r.text
    r = service.request("POST", f"/streams/{sid}/batches", key[:-2] + "xx", json={})
    assert r.status_code == 401
    r = service.request("POST", f"/streams/{sid}/finalize", key)
    assert r.status_code == 200, r.text
    service.stop()
    assert key in key_recorder.keys and deployment.home in key_recorder.homes
    scanned, hits = key_recorder.scan()
    home = deployment.home
    assert {
        home / "registry.sqlite",
        home / "ingest" / "state.sqlite",
        home / "service-0.log",
        home / "audit" / "acme.jsonl",
        home / "data" / "acme" / "process" / "series" / "_log" / "commits.jsonl",
    } <= set(scanned)
    assert any(p.suffix == ".parquet" and p.is_relative_to(home) for p in scanned)
    assert not hits, f"API key plaintext found in: {hits}"
