#!/usr/bin/env python3
"""deploy/ against a real Prometheus (CI, CPU, loopback only).

Starts plume-server on the CPU backend (with a fake NVML library, so that the
GPU utilization path is exercised too), starts Prometheus (Debian package
`prometheus`) with deploy/prometheus/prometheus.yml pointed at it and a 1 s
scrape interval, drives traffic with the plume CLI (uploads, GEMVs, a K/V cache with appends
and attention, errors), and then evaluates every PromQL expression in
deploy/grafana/plume-dashboard.json through Prometheus's HTTP API, with the
dashboard's `job` and `instance` variables set to the server's: each must
parse and return data, and some values are checked. The variables' own
queries (label_values) must offer the server's job and instance, and every
metric selector of every panel must be filtered by both. The server runs with
--metrics_max_targets=1, so the second matrix's series are labelled
matrix="_other". Also: `promtool check metrics` on /metrics and `promtool
check config` on the repository's config.

An expression may come back empty only while the server exports none of the
samples of a metric in ALLOWED_EMPTY (listed with the reason). Once such a
metric is exported, its panels must return data like every other.
"""
import argparse
import json
import math
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import numpy as np

# Metrics that the CPU server does not export (yet), with the reason.
ALLOWED_EMPTY = {
    "plume_device_memory_used_bytes": "CUDA backend only: the CPU backend has no device memory",
    "plume_device_memory_total_bytes": "CUDA backend only: the CPU backend has no device memory",
}
RATE_INTERVAL = "10s"  # what $__rate_interval stands for: >= 4 scrapes of 1 s
SCRAPE = "1s"
# The panels the dashboard must have (by title).
REQUIRED_PANELS = [
    "Vectors/s", "Requests/s by method", "Achieved weight bandwidth", "GEMV latency p50 / p90 / p99",
    "GEMV queue vs kernel time", "Batch size distribution", "Queue depth", "Errors by code",
    "Resident matrices", "Resident bytes and budget", "Device memory used / total", "GPU utilization",
    "Process resident memory", "Process CPU", "Uptime and build",
    "Vectors/s by matrix (top 10)", "Kernel time by matrix (mean, top 10)", "Attention queries/s by cache",
    "Achieved K/V bandwidth", "Attention latency p50 / p90 / p99", "Attention queue vs kernel time",
    "Attention mean batch size", "Resident K/V caches", "K/V cache bytes",
]
# The dashboard's template variables and the label each one picks.
VARIABLES = {"job": "job", "instance": "instance"}
ROWS, COLS, BATCH = 384, 1000, 4
KV_HEADS, HEADS, SEQ, HEAD_DIM, APPEND = 2, 4, 100, 64, 8
SEED = 20250606


def log(msg):
    print(f"[{time.monotonic() - T0:6.2f}s] {msg}", flush=True)


T0 = time.monotonic()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def http_get(url, timeout=5.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


def wait_until(what, fn, timeout_s, interval=0.1):
    end = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < end:
        try:
            v = fn()
            if v:
                return v
        except (OSError, ValueError) as e:  # not up yet
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last error: {last})")


class Prom:
    def __init__(self, port):
        self.base = f"http://127.0.0.1:{port}"

    def query(self, expr, at=None):
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        url = f"{self.base}/api/v1/query?" + urllib.parse.urlencode(params)
        try:
            _, body = http_get(url)
        except urllib.error.HTTPError as e:  # 400 on a parse error: the body says why
            body = e.read().decode()
        return json.loads(body)


def dashboard_exprs(dash):
    """(panel title, refId, expr) for every target of every panel, rows included."""
    out = []

    def walk(panels):
        for p in panels:
            walk(p.get("panels", []))
            for t in p.get("targets", []):
                if "expr" in t:
                    out.append((p.get("title", "?"), t.get("refId", "?"), t["expr"]))

    walk(dash.get("panels", []))
    return out


def metric_names(expr):
    return set(re.findall(r"\bplume_[a-z0-9_]+", expr))


def base_name(sample_name):
    for suffix in ("_bucket", "_sum", "_count"):
        if sample_name.endswith(suffix):
            return sample_name[: -len(suffix)]
    return sample_name


def selectors(expr):
    """(metric name, label matchers) of every metric selector in `expr`."""
    return re.findall(r"\b((?:plume|process)_[a-z0-9_]+)(\{[^}]*\})?", expr)


def check_dashboard_structure(repo, dash):
    problems = []
    for title, ref_id, expr in dashboard_exprs(dash):
        for name, matchers in selectors(expr):
            for var in VARIABLES:
                if f'{var}=~"${var}"' not in matchers:
                    problems.append(f"{title}/{ref_id}: {name} is not filtered by ${var}")
    names = [v.get("name") for v in dash.get("templating", {}).get("list", [])]
    if sorted(names) != sorted(VARIABLES):
        problems.append(f"template variables {names}, expected {sorted(VARIABLES)}")
    titles = [p.get("title") for p in dash["panels"]]
    for t in REQUIRED_PANELS:
        if t not in titles:
            problems.append(f"panel {t!r} missing")
    ids = [p.get("id") for p in dash["panels"]]
    if len(set(ids)) != len(ids):
        problems.append(f"panel ids not unique: {ids}")
    with open(os.path.join(repo, "deploy/grafana/provisioning/datasources/prometheus.yaml")) as f:
        m = re.search(r"^\s*uid:\s*(\S+)", f.read(), re.M)
    ds_uid = m.group(1) if m else None
    for p in dash["panels"]:
        for obj in [p] + p.get("targets", []):
            ds = obj.get("datasource") or {}
            if ds.get("uid") != ds_uid or ds.get("type") != "prometheus":
                problems.append(f"panel {p.get('title')!r}: datasource {ds} is not the provisioned uid {ds_uid!r}")
    assert not problems, "dashboard: " + "; ".join(problems)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", required=True)
    ap.add_argument("--server", required=True, help="plume-server binary")
    ap.add_argument("--cli", required=True, help="plume CLI binary")
    ap.add_argument("--fake-nvml", required=True, help="fake libnvidia-ml for plume_gpu_utilization_ratio")
    ap.add_argument("--prometheus", default="prometheus")
    ap.add_argument("--promtool", default="promtool")
    a = ap.parse_args()

    for tool in (a.prometheus, a.promtool):
        if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode != 0:
            sys.exit(f"FAIL: {tool} not found: install the Debian package `prometheus` (scripts/install-deps.sh does)")

    with open(os.path.join(a.repo, "deploy/grafana/plume-dashboard.json")) as f:
        dash = json.load(f)
    check_dashboard_structure(a.repo, dash)
    exprs = dashboard_exprs(dash)
    assert len(exprs) >= 15, f"only {len(exprs)} expressions found in the dashboard"
    log(f"dashboard: {len(dash['panels'])} panels, {len(exprs)} PromQL expressions")

    work = tempfile.mkdtemp(prefix="plume_deploy_test_")
    procs = []
    try:
        # --- plume-server on the CPU backend, with the fake NVML.
        ready = os.path.join(work, "ready.json")
        server_log = open(os.path.join(work, "server.log"), "w")
        server = subprocess.Popen(
            [a.server, "--grpc_address=127.0.0.1:0", "--metrics_address=127.0.0.1:0", "--backend=cpu",
             "--cpu_threads=2", f"--ready_file={ready}", f"--nvml_library={a.fake_nvml}",
             "--metrics_max_targets=1",
             f"--store_dir={os.path.join(work, 'store')}"],
            stdout=server_log, stderr=subprocess.STDOUT, env=dict(os.environ, FAKE_NVML_MODE="ok"))
        procs.append(server)

        def server_ready():
            assert server.poll() is None, "plume-server exited:\n" + open(server_log.name).read()
            return os.path.exists(ready) and json.load(open(ready))

        ports = wait_until("plume-server's ready file", server_ready, 60)
        grpc, metrics_port = ports["grpc_port"], ports["metrics_port"]
        log(f"plume-server: gRPC {grpc}, metrics {metrics_port}")

        # --- Prometheus with the repository's scrape config, pointed at it.
        with open(os.path.join(a.repo, "deploy/prometheus/prometheus.yml")) as f:
            cfg = f.read()
        for old, new in ((r'"plume:9464"', f'"127.0.0.1:{metrics_port}"'),
                         (r"scrape_interval: \S+", f"scrape_interval: {SCRAPE}"),
                         (r"evaluation_interval: \S+", f"evaluation_interval: {SCRAPE}")):
            cfg, n = re.subn(old, new, cfg)
            assert n == 1, f"deploy/prometheus/prometheus.yml: expected one {old!r}, found {n}"
        cfg_path = os.path.join(work, "prometheus.yml")
        with open(cfg_path, "w") as f:
            f.write(cfg)
        for path in (os.path.join(a.repo, "deploy/prometheus/prometheus.yml"), cfg_path):
            r = subprocess.run([a.promtool, "check", "config", path], capture_output=True, text=True, timeout=30)
            assert r.returncode == 0, f"promtool check config {path}:\n{r.stdout}{r.stderr}"
        prom_port = free_port()
        prom_log = open(os.path.join(work, "prometheus.log"), "w")
        prometheus = subprocess.Popen(
            [a.prometheus, f"--config.file={cfg_path}", f"--storage.tsdb.path={work}/tsdb",
             f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"],
            stdout=prom_log, stderr=subprocess.STDOUT)
        procs.append(prometheus)
        prom = Prom(prom_port)

        def prom_ready():
            assert prometheus.poll() is None, "prometheus exited:\n" + open(prom_log.name).read()
            return http_get(f"{prom.base}/-/ready", timeout=1)[0] == 200

        wait_until("Prometheus /-/ready", prom_ready, 30)

        def target_up():
            r = prom.query('up{job="plume"}')
            return r["status"] == "success" and any(s["value"][1] == "1" for s in r["data"]["result"])

        wait_until("Prometheus to scrape plume (up == 1)", target_up, 20)
        log(f"Prometheus on {prom_port} scrapes plume")

        # --- traffic through the CLI: uploads, GEMVs for ~4 s, errors.
        def cli(*args, ok=True):
            r = subprocess.run([a.cli, "--server", f"127.0.0.1:{grpc}", "--timeout", "20", *args],
                               capture_output=True, text=True, timeout=60)
            if ok:
                assert r.returncode == 0, f"plume {' '.join(args)}: exit {r.returncode}\n{r.stdout}{r.stderr}"
            return r

        rng = np.random.default_rng(SEED)
        w = rng.standard_normal((ROWS, COLS), dtype=np.float32)
        x = rng.standard_normal((BATCH, COLS), dtype=np.float32)
        np.save(os.path.join(work, "w.npy"), w)
        np.save(os.path.join(work, "x.npy"), x)
        # A K/V cache (grouped heads) and its queries; appends grow it during the traffic.
        k = rng.standard_normal((KV_HEADS, SEQ, HEAD_DIM), dtype=np.float32)
        v = rng.standard_normal((KV_HEADS, SEQ, HEAD_DIM), dtype=np.float32)
        q = rng.standard_normal((1, HEADS, 1, HEAD_DIM), dtype=np.float32)
        k_new = rng.standard_normal((KV_HEADS, APPEND, HEAD_DIM), dtype=np.float32)
        v_new = rng.standard_normal((KV_HEADS, APPEND, HEAD_DIM), dtype=np.float32)
        for name, arr in (("k", k), ("v", v), ("q", q), ("k_new", k_new), ("v_new", v_new)):
            np.save(os.path.join(work, f"{name}.npy"), arr)
        cli("health")
        # With --metrics_max_targets=1 the first matrix has a label of its own, the second is "_other".
        cli("upload", "dash_row", os.path.join(work, "w.npy"), "--format", "e4m3", "--scale", "row")
        cli("upload", "dash_block", os.path.join(work, "w.npy"), "--format", "e5m2", "--scale", "block128")
        cli("kv", "upload", "dash_kv", os.path.join(work, "k.npy"), os.path.join(work, "v.npy"))
        ref = x.astype(np.float64) @ w.astype(np.float64).T
        not_found = 0

        def gemv_missing():
            r = cli("gemv", "no_such_matrix", os.path.join(work, "x.npy"), ok=False)
            assert r.returncode == 1 and "NOT_FOUND" in r.stderr, r.stderr

        # A counter series is born on its first error, and rate() needs two
        # samples of it: so errors come from the start and every 0.5 s.
        def attend(seq_k, seq_v):
            out = os.path.join(work, "o.npy")
            cli("attend", "dash_kv", os.path.join(work, "q.npy"), "-o", out)
            o = np.load(out)
            group = HEADS // KV_HEADS
            want = np.empty((1, HEADS, 1, HEAD_DIM))
            for h in range(HEADS):
                kh, vh = seq_k[h // group].astype(np.float64), seq_v[h // group].astype(np.float64)
                s = kh @ q[0, h, 0].astype(np.float64) / math.sqrt(HEAD_DIM)
                p = np.exp(s - s.max())
                want[0, h, 0] = (p / p.sum()) @ vh
            err = np.linalg.norm(o - want) / np.linalg.norm(want)
            assert o.shape == want.shape and err < 0.15, f"attention: shape {o.shape}, rel error {err}"

        seq_k, seq_v = k, v
        gemvs = attends = 0
        next_error = time.monotonic()
        end = next_error + 4.0
        while time.monotonic() < end or gemvs < 6:
            if time.monotonic() >= next_error:
                gemv_missing()
                not_found += 1
                next_error += 0.5
            name = "dash_row" if gemvs % 2 == 0 else "dash_block"
            out = os.path.join(work, "y.npy")
            cli("gemv", name, os.path.join(work, "x.npy"), "-o", out)
            y = np.load(out)
            err = np.linalg.norm(y - ref) / np.linalg.norm(ref)
            assert y.shape == (BATCH, ROWS) and err < 0.15, f"GEMV on {name}: shape {y.shape}, rel error {err}"
            gemvs += 1
            if gemvs % 4 == 1:
                cli("kv", "append", "dash_kv", os.path.join(work, "k_new.npy"), os.path.join(work, "v_new.npy"))
                seq_k, seq_v = np.concatenate([seq_k, k_new], axis=1), np.concatenate([seq_v, v_new], axis=1)
            attend(seq_k, seq_v)
            attends += 1
        cli("list")
        cli("kv", "list")
        vectors = gemvs * BATCH
        row_vectors = (gemvs + 1) // 2 * BATCH  # dash_row takes the even GEMVs
        log(f"traffic: 2 uploads, {gemvs} GEMVs of {BATCH} vectors, a K/V cache with "
            f"{seq_k.shape[1] - SEQ} appended tokens and {attends} attention calls, {not_found} NOT_FOUND errors")

        # --- /metrics: promtool lint, and which metrics the server exports.
        _, text = http_get(f"http://127.0.0.1:{metrics_port}/metrics")
        r = subprocess.run([a.promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), \
            f"promtool check metrics (exit {r.returncode}):\n{r.stdout}{r.stderr}"
        log(f"promtool check metrics: clean ({len(text.splitlines())} lines)")
        exported = {base_name(line.split("{")[0].split(" ")[0])
                    for line in text.splitlines() if line and not line.startswith("#")}
        assert f'plume_vectors_total{{matrix="dash_row"}} {row_vectors}' in text, \
            f"plume_vectors_total of dash_row is not {row_vectors}"
        assert f'plume_vectors_total{{matrix="_other"}} {vectors - row_vectors}' in text, \
            f"plume_vectors_total of _other (dash_block, beyond --metrics_max_targets=1) is not {vectors - row_vectors}"
        assert 'matrix="dash_block"' not in text, "dash_block has a label of its own beyond the cap"
        assert f'plume_attention_queries_total{{cache="dash_kv"}} {attends * HEADS}' in text, \
            f"plume_attention_queries_total of dash_kv is not {attends * HEADS}"
        assert 'plume_gpu_utilization_ratio{gpu="0"} 0.37' in text, "fake NVML utilization not exported"
        for m in ("plume_build_info", "process_resident_memory_bytes", "process_cpu_seconds_total",
                  "process_open_fds", "process_start_time_seconds"):
            assert m in exported, f"{m} not exported"
        for m in ALLOWED_EMPTY:
            if m in exported:
                log(f"note: {m} is exported now: its panels must return data")

        # --- wait until Prometheus has scraped the final counts, then evaluate.
        wait_until(f"Prometheus to see sum(plume_vectors_total) == {vectors}",
                   lambda: any(s["value"][1] == str(vectors)
                               for s in prom.query("sum(plume_vectors_total)")["data"]["result"]), 15)
        at = time.time()

        # --- the template variables: their label_values queries, then the values a user would pick.
        instance = f"127.0.0.1:{metrics_port}"
        picked = {"job": "plume", "instance": instance}
        for var in dash["templating"]["list"]:
            m = re.fullmatch(r"label_values\((.+), (\w+)\)", var["definition"])
            assert m and m.group(2) == VARIABLES[var["name"]], f"variable {var['name']}: {var['definition']!r}"
            match = m.group(1)
            for name, value in picked.items():
                match = match.replace(f"${name}", value)
            url = f"{prom.base}/api/v1/label/{m.group(2)}/values?" + urllib.parse.urlencode({"match[]": match})
            offered = json.loads(http_get(url)[1])["data"]
            assert picked[var["name"]] in offered, f"variable {var['name']} offers {offered}, not {picked[var['name']]}"
            log(f"variable ${var['name']}: {var['definition']} offers {offered}")

        failures, empty_ok, results = [], [], {}
        for title, ref_id, expr in exprs:
            q = expr.replace("$__rate_interval", RATE_INTERVAL)
            for name, value in picked.items():
                q = q.replace(f"${name}", value)
            if "$" in q:
                failures.append(f"{title}/{ref_id}: unknown Grafana variable in {expr!r}")
                continue
            r = prom.query(q, at)
            if r.get("status") != "success":
                failures.append(f"{title}/{ref_id}: {r.get('errorType')}: {r.get('error')}  [{q}]")
                continue
            series = r["data"]["result"]
            values = [float(s["value"][1]) for s in series]
            results[(title, ref_id)] = series
            if any(math.isfinite(v) for v in values):
                log(f"ok    {title}/{ref_id}: {len(series)} series, e.g. {values[0]:.6g}")
                continue
            allowed = [m for m in metric_names(q) if base_name(m) in ALLOWED_EMPTY and base_name(m) not in exported]
            if allowed:
                reason = ALLOWED_EMPTY[base_name(allowed[0])]
                empty_ok.append(f"{title}/{ref_id}")
                log(f"empty {title}/{ref_id}: allowed, {base_name(allowed[0])} is not exported ({reason})")
            else:
                failures.append(f"{title}/{ref_id}: no finite data ({len(series)} series {values})  [{q}]")

        def series_of(title, ref_id="A"):
            return results.get((title, ref_id), [])

        def value(title, ref_id="A", **labels):
            for s in series_of(title, ref_id):
                if all(s["metric"].get(k) == v for k, v in labels.items()):
                    return float(s["value"][1])
            return None

        checks = [
            ("vectors/s > 0", (value("Vectors/s") or 0) > 0),
            ("Gemv requests/s > 0", (value("Requests/s by method", method="Gemv") or 0) > 0),
            ("weight bandwidth > 0", (value("Achieved weight bandwidth") or 0) > 0),
            ("p50 <= p90 <= p99, all > 0",
             0 < (value("GEMV latency p50 / p90 / p99", "A") or 0) <= (value("GEMV latency p50 / p90 / p99", "B") or 0)
             <= (value("GEMV latency p50 / p90 / p99", "C") or 0)),
            ("NOT_FOUND errors on Gemv > 0",
             (value("Errors by code", method="Gemv", code="NOT_FOUND") or 0) > 0),
            ("no OK series among the errors",
             all(s["metric"].get("code") != "OK" for s in series_of("Errors by code"))),
            ("2 resident matrices", value("Resident matrices") == 2),
            ("vectors/s by matrix: dash_row and _other (beyond --metrics_max_targets=1), both > 0",
             sorted(s["metric"].get("matrix") for s in series_of("Vectors/s by matrix (top 10)")) == ["_other", "dash_row"]
             and all(float(s["value"][1]) > 0 for s in series_of("Vectors/s by matrix (top 10)"))),
            ("kernel time of dash_row > 0", (value("Kernel time by matrix (mean, top 10)", matrix="dash_row") or 0) > 0),
            ("attention queries/s of dash_kv > 0", (value("Attention queries/s by cache", cache="dash_kv") or 0) > 0),
            ("K/V bandwidth > 0", (value("Achieved K/V bandwidth") or 0) > 0),
            ("attention p50 <= p90 <= p99, all > 0",
             0 < (value("Attention latency p50 / p90 / p99", "A") or 0)
             <= (value("Attention latency p50 / p90 / p99", "B") or 0)
             <= (value("Attention latency p50 / p90 / p99", "C") or 0)),
            ("attention kernel time > 0", (value("Attention queue vs kernel time", "B") or 0) > 0),
            ("attention mean batch size 1 (one query at a time)",
             value("Attention mean batch size", cache="dash_kv") == 1),
            ("1 resident K/V cache", value("Resident K/V caches") == 1),
            ("0 < K/V bytes < budget", 0 < (value("K/V cache bytes", "A") or 0) < (value("K/V cache bytes", "B") or 0)),
            ("0 < resident bytes < budget",
             0 < (value("Resident bytes and budget", "A") or 0) < (value("Resident bytes and budget", "B") or 0)),
            ("GPU utilization from the fake NVML: 0.37 and 0.81",
             sorted(float(s["value"][1]) for s in series_of("GPU utilization")) == [0.37, 0.81]),
            ("resident memory > 1 MiB, labelled with the version",
             any(float(s["value"][1]) > 2**20 and s["metric"].get("version")
                 for s in series_of("Process resident memory"))),
            ("0 < uptime < 10 min, labelled with version, commit, backend and cuda",
             len(series_of("Uptime and build")) == 1
             and 0 < (value("Uptime and build") or 0) < 600
             and all(series_of("Uptime and build")[0]["metric"].get(k)
                     for k in ("version", "commit", "backend", "cuda"))),
        ]
        for what, ok in checks:
            if not ok:
                failures.append(f"value check failed: {what}")
        if failures:
            print("server log:\n" + open(server_log.name).read()[-4000:])
            print("prometheus log:\n" + open(prom_log.name).read()[-4000:])
            sys.exit("FAIL:\n  " + "\n  ".join(failures))
        log(f"PASS: {len(exprs) - len(empty_ok)} of {len(exprs)} expressions returned data and "
            f"{len(checks)} value checks hold; allowed empty: {', '.join(empty_ok) or 'none'}")

        # --- SIGTERM stops the server cleanly.
        server.terminate()
        rc = server.wait(timeout=30)
        assert rc == 0, f"plume-server exited {rc} on SIGTERM"
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
