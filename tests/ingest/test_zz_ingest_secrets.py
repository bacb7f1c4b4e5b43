"""Runs last in this folder: no API key plaintext anywhere on disk (registries, audit logs, WAL,
data, service logs, spools) for every key issued in this session."""

from conftest import CREATED_KEYS, HOMES


def test_no_key_plaintext_on_disk(deployment, service):
    # A scenario of its own, so that the test means something when run alone.
    key = deployment.key()
    r = service.request("POST", "/streams", key,
                        json={"run_id": "scan", "tool": "t", "category": "process"})
    sid = r.json()["id"]
    service.request("POST", f"/streams/{sid}/batches", key, json={
        "batch_id": "b1", "rows": [{"time": "2026-01-01T00:00:00Z", "channel": "c"}]})
    service.request("POST", f"/streams/{sid}/batches", key[:-2] + "xx", json={})
    service.request("POST", f"/streams/{sid}/finalize", key)
    service.stop()
    assert len(CREATED_KEYS) >= 1 and HOMES
    needles = set()
    for k in CREATED_KEYS:
        needles.add(k.encode())
        needles.add(k.split("_", 2)[2].encode())  # the secret part alone
    # Each home lies in its test's tmp_path, beside that test's spool folders.
    roots = {h.parent for h in HOMES}
    scanned, hits = 0, []
    for path in (p for root in roots for p in root.rglob("*")):
        if not path.is_file() or path.is_symlink():
            continue
        data = path.read_bytes()
        scanned += 1
        for n in needles:
            if n in data:
                hits.append(str(path))
    assert scanned > 20
    assert any(p.name == "registry.sqlite" for h in HOMES for p in h.iterdir())
    assert not hits, f"API key plaintext found in: {sorted(set(hits))}"
