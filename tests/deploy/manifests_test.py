#!/usr/bin/env python3
"""Static checks of deploy/: the Kubernetes manifests, compose.yaml, the
Grafana provisioning and the Dockerfile agree with each other and with what
docs/deploy.md describes (GPU limits, gRPC health probes on the gRPC port, a
headless Service, scrape annotations, the store claim, a gpu compose profile
with a CPU default, a non-root image user). No cluster or engine needed."""
import json
import os
import re
import sys

import yaml

repo = sys.argv[1]
problems = []


def want(ok, what):
    if not ok:
        problems.append(what)


def load_all(rel):
    with open(os.path.join(repo, rel)) as f:
        return [d for d in yaml.safe_load_all(f) if d]


# --- Dockerfile
with open(os.path.join(repo, "deploy/Dockerfile")) as f:
    dockerfile = f.read()
for arg in ("BUILD_IMAGE", "BASE_IMAGE"):
    want(re.search(rf"^ARG {arg}=\S+", dockerfile, re.M), f"Dockerfile: no ARG {arg}")
want(re.search(r"^FROM \$\{BUILD_IMAGE\} AS build", dockerfile, re.M), "Dockerfile: build stage not FROM ${BUILD_IMAGE}")
want(re.search(r"^FROM \$\{BASE_IMAGE\} AS runtime$", dockerfile, re.M), "Dockerfile: runtime stage not FROM ${BASE_IMAGE}")
# Both targets take the runtime stage's config; the default (last) one the build stage's binaries.
want(re.search(r"^FROM runtime AS prebuilt\nCOPY --from=payload /opt/plume /opt/plume$", dockerfile, re.M),
     "Dockerfile: target prebuilt not FROM runtime with /opt/plume from the payload")
stages = re.findall(r"^FROM .*$", dockerfile, re.M)
want(stages and stages[-1] == "FROM runtime", f"Dockerfile: the last stage is {stages[-1:]}, want FROM runtime")
want(re.search(r"^FROM runtime\nCOPY --from=build /opt/plume /opt/plume$", dockerfile, re.M),
     "Dockerfile: the default target does not copy /opt/plume from the build stage")
want(re.search(r"^EXPOSE 50051 9464$", dockerfile, re.M), "Dockerfile: EXPOSE 50051 9464")
want(re.search(r'^VOLUME \["/var/lib/plume"\]$', dockerfile, re.M), "Dockerfile: VOLUME /var/lib/plume")
want(re.search(r'^\s+CMD \["plume", .*"health"\]$', dockerfile, re.M), "Dockerfile: HEALTHCHECK via plume health")
m = re.search(r"useradd .*--uid (\d+)", dockerfile)
uid = int(m.group(1)) if m else None
want(uid and uid != 0, "Dockerfile: no non-root useradd --uid")
want(re.search(r"^USER plume:plume$", dockerfile, re.M), "Dockerfile: USER plume:plume")

# --- Kubernetes
k8s = {}
for name in sorted(os.listdir(os.path.join(repo, "deploy/k8s"))):
    for doc in load_all(f"deploy/k8s/{name}"):
        k8s[(doc["kind"], doc.get("metadata", {}).get("name"))] = doc
kust = k8s.get(("Kustomization", None))
want(kust is not None, "k8s: no kustomization.yaml")
if kust:
    for r in kust["resources"]:
        want(os.path.exists(os.path.join(repo, "deploy/k8s", r)), f"k8s: kustomization lists missing {r}")
dep = k8s.get(("Deployment", "plume"))
svc = k8s.get(("Service", "plume"))
pvc = k8s.get(("PersistentVolumeClaim", "plume-store"))
want(dep and svc and pvc, "k8s: Deployment, Service and PVC named plume / plume-store")
if dep and svc and pvc:
    pod = dep["spec"]["template"]
    spec = pod["spec"]
    c = spec["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    want(ports == {"grpc": 50051, "metrics": 9464}, f"k8s: container ports {ports}")
    want(c["resources"]["limits"].get("nvidia.com/gpu") == 1, "k8s: no nvidia.com/gpu limit")
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        want(c.get(probe, {}).get("grpc", {}).get("port") == 50051, f"k8s: {probe} is not gRPC health on 50051")
    ann = pod["metadata"].get("annotations", {})
    want(ann.get("prometheus.io/scrape") == "true" and ann.get("prometheus.io/port") == "9464",
         "k8s: pod scrape annotations")
    want(spec["securityContext"].get("runAsUser") == uid, f"k8s: runAsUser is not the image's uid {uid}")
    want(spec["securityContext"].get("fsGroup") == uid, "k8s: fsGroup lets the user write the claim")
    vols = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    want(mounts.get("/var/lib/plume") in vols, "k8s: /var/lib/plume not mounted")
    claim = vols.get(mounts.get("/var/lib/plume"), {}).get("persistentVolumeClaim", {}).get("claimName")
    want(claim == "plume-store", f"k8s: store claim {claim}")
    want(svc["spec"].get("clusterIP") == "None", "k8s: Service is not headless")
    sel = svc["spec"]["selector"]
    want(all(pod["metadata"]["labels"].get(k) == v for k, v in sel.items()), "k8s: Service selector misses the pods")
    want({p["targetPort"] for p in svc["spec"]["ports"]} <= set(ports), "k8s: Service targetPorts")
    # Exactly one object asks to be scraped: pods and Service both would
    # count every server twice.
    scraped = [f"{kind}/{name}" for (kind, name), obj in k8s.items()
               if obj.get("metadata", {}).get("annotations", {}).get("prometheus.io/scrape") == "true"]
    scraped += [f"pod template of {name}" for (kind, name), obj in k8s.items() if kind == "Deployment"
                and obj["spec"]["template"]["metadata"].get("annotations", {}).get("prometheus.io/scrape") == "true"]
    want(scraped == ["pod template of plume"], f"k8s: objects annotated for scraping {scraped}")

# --- compose
compose = load_all("deploy/compose.yaml")[0]
# docker-compose 1.29 (Debian bookworm's) refuses a top-level name.
want(set(compose) <= {"services", "volumes", "networks", "configs", "secrets"} | {k for k in compose if k.startswith("x-")},
     f"compose: top-level keys {sorted(compose)}")
svcs = compose["services"]
want({"plume", "plume-gpu", "prometheus", "grafana"} <= set(svcs), f"compose: services {sorted(svcs)}")
want("profiles" not in svcs.get("plume", {}), "compose: the CPU plume must run by default (no profile)")
gpu = svcs.get("plume-gpu", {})
want(gpu.get("profiles") == ["gpu"], "compose: plume-gpu not in the gpu profile")
devs = gpu.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
want(any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devs),
     "compose: plume-gpu reserves no NVIDIA device")
want("plume" in gpu.get("networks", {}).get("default", {}).get("aliases", []), "compose: plume-gpu lacks alias plume")
cpu_args = svcs.get("plume", {}).get("build", {}).get("args", {})
want(cpu_args.get("BASE_IMAGE") == "debian:bookworm-slim", "compose: CPU image not from debian:bookworm-slim")
for name, s in svcs.items():
    b = s.get("build")
    if b:
        want(os.path.exists(os.path.join(repo, "deploy", b["context"], b["dockerfile"])), f"compose: {name} dockerfile")
    for v in s.get("volumes", []):
        src = v.split(":")[0]
        if src.startswith("."):
            want(os.path.exists(os.path.join(repo, "deploy", src)), f"compose: {name} mounts missing {src}")
prom_cfg = yaml.safe_load(open(os.path.join(repo, "deploy/prometheus/prometheus.yml")))
targets = [t for sc in prom_cfg["scrape_configs"] for s in sc["static_configs"] for t in s["targets"]]
want(targets == ["plume:9464"], f"prometheus: targets {targets}")

# --- Grafana provisioning
dash_mount = [v for v in svcs["grafana"]["volumes"] if "plume-dashboard.json" in v]
prov = yaml.safe_load(open(os.path.join(repo, "deploy/grafana/provisioning/dashboards/plume.yaml")))
path = prov["providers"][0]["options"]["path"]
want(dash_mount and dash_mount[0].split(":")[1].startswith(path + "/"),
     f"grafana: dashboard mounted at {dash_mount}, provider reads {path}")
ds = yaml.safe_load(open(os.path.join(repo, "deploy/grafana/provisioning/datasources/prometheus.yaml")))
want(ds["datasources"][0]["url"] == "http://prometheus:9090", "grafana: datasource url")
dash = json.load(open(os.path.join(repo, "deploy/grafana/plume-dashboard.json")))
want(dash.get("uid") == "plume", "grafana: dashboard uid")

if problems:
    sys.exit("FAIL:\n  " + "\n  ".join(problems))
print(f"deploy/ manifests agree ({len(k8s)} k8s objects, {len(svcs)} compose services)")
