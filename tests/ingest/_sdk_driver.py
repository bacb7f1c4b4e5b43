"""Drives the hosted platform's ``atomscale`` SDK (run with the SDK's own virtual environment).

``python _sdk_driver.py '<json>'`` with ``{"op": ..., ...}`` or a list of them (one process); the
key and the URL come from ``AS_API_KEY`` / ``AS_API_ENDPOINT`` (an op's ``"key"`` replaces the key).
Prints one JSON document per op: what the SDK returned, reduced to plain values (NaN as null), or
``{"error": type, "message": …}``.
"""

import json
import math
import os
import sys
import time


def _plain(v):
    if isinstance(v, float) and math.isnan(v):
        return None
    if hasattr(v, "item"):
        return _plain(v.item())
    return v


def _frame(df):
    return {
        "columns": [str(c) for c in df.columns],
        "data": {str(c): [_plain(x) for x in df[c].tolist()] for c in df.columns},
    }


def _result(r):
    name = type(r).__name__
    out = {"type": name, "data_id": getattr(r, "data_id", None)}
    if name == "ToolStateResult":
        out["frame"] = _frame(r.timeseries_data)
    elif name == "XRDResult":
        out.update(x=list(r.two_theta), y=list(r.intensities), unit=r.two_theta_unit)
    elif name == "XPSResult":
        out.update(x=list(r.binding_energies), y=list(r.intensities))
    return out


def main(doc):
    from atomscale import Client

    op = doc["op"]
    if op == "search":
        client = Client(mute_bars=True)
        df = client.search(**doc.get("kwargs", {}))
        return {"rows": json.loads(df.to_json(orient="records"))}
    if op == "get":
        client = Client(mute_bars=True)
        return {"results": [_result(r) for r in client.get(doc["ids"])]}
    if op == "samples":
        client = Client(mute_bars=True)
        return {"rows": json.loads(client.list_physical_samples().to_json(orient="records"))}
    if op == "raw":
        client = Client(mute_bars=True)
        return {"value": client._get(sub_url=doc["path"])}
    if op == "stream":
        from atomscale.streaming import TimeseriesStreamer

        s = TimeseriesStreamer(
            api_key=os.environ["AS_API_KEY"],
            endpoint=os.environ["AS_API_ENDPOINT"],
            points_per_chunk=doc.get("points_per_chunk", 100),
        )
        data_id = s.initialize(**doc.get("init", {}))
        t0 = time.perf_counter()
        for step in doc.get("steps", []):
            kind = step.pop("do")
            if kind == "push":
                s.push(data_id, **step)
            elif kind == "push_multi":
                s.push_multi(data_id, step["chunk_index"], step["channels"])
            elif kind == "run":
                s.run(
                    data_id,
                    step["channel_name"],
                    iter([tuple(c) for c in step["chunks"]]),
                    step.get("units"),
                )
        if doc.get("finalize", True):
            s.finalize(data_id)
        return {"data_id": data_id, "seconds": time.perf_counter() - t0, "clock": s.clock_status()}
    if op == "get_timed":
        client = Client(mute_bars=True)
        t0 = time.perf_counter()
        res = client.get(doc["ids"])
        seconds = time.perf_counter() - t0
        frame = res[0].timeseries_data
        return {"seconds": seconds, "rows": len(frame), "columns": len(frame.columns)}
    if op == "stream_generated":
        # Points made here (not passed in), so that only the streaming is timed.
        from atomscale.streaming import TimeseriesStreamer

        n, per, chans = doc["points"], doc["points_per_chunk"], doc["channels"]
        s = TimeseriesStreamer(
            api_key=os.environ["AS_API_KEY"],
            endpoint=os.environ["AS_API_ENDPOINT"],
            points_per_chunk=per,
        )
        data_id = s.initialize(stream_name=doc["name"])
        t_start = 1.77e9
        chunks = []
        for k in range(n // (per * chans)):
            ts = [t_start + (k * per + i) * 0.001 for i in range(per)]
            chunks.append(
                {
                    f"ch{c}": {
                        "timestamps": ts,
                        "values": [float(c + i) for i in range(per)],
                        "units": "V",
                    }
                    for c in range(chans)
                }
            )
        t0 = time.perf_counter()
        if doc.get("mode") == "run":
            s.run(
                data_id,
                "ch0",
                iter([(c["ch0"]["timestamps"], c["ch0"]["values"]) for c in chunks]),
                "V",
            )
        else:
            for k, c in enumerate(chunks):
                s.push_multi(data_id, k, c)
        s.finalize(data_id)
        return {
            "data_id": data_id,
            "seconds": time.perf_counter() - t0,
            "points": len(chunks) * per * (1 if doc.get("mode") == "run" else chans),
        }
    raise SystemExit(f"unknown op {op!r}")


def _one(doc):
    if "key" in doc:  # one process, several keys
        os.environ["AS_API_KEY"] = doc["key"]
    try:
        return main(doc)
    except Exception as e:  # reported to the test as data
        return {"error": type(e).__name__, "message": str(e)}


if __name__ == "__main__":
    docs = json.loads(sys.argv[1] if len(sys.argv) > 1 else sys.stdin.read())
    # A list runs in one process: importing the SDK takes seconds.
    res = [_one(d) for d in docs] if isinstance(docs, list) else _one(docs)
    sys.stdout.write(json.dumps(res))
