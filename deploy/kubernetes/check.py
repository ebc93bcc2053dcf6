"""Checks the manifests of deploy/kubernetes/ (run by .ci/run, in the CI venv).

1. Every object is validated strictly (unknown fields are errors) against
   the Kubernetes version's schema with kubernetes-validate; an object of a
   kind it has no schema for is an error, unless it is a prometheus-operator
   custom resource (the ServiceMonitor).
2. Those custom resources are validated against the prometheus-operator
   models (cloudcoil-models-prometheus-operator, generated from its CRDs):
   types and patterns by the model, unknown fields by a round trip (the
   model drops what it does not know, so what comes back must equal what
   went in).
3. The pieces agree: each metric the HorizontalPodAutoscaler reads is one
   the adapter rules define; each charond metric those rules query is one
   charond exports (manager/src/metrics.rs); the ServiceMonitor selects the
   metrics Service and names its port.
4. The adapter rules' queries compute what doc/deploy.md says: with the
   adapter's templates filled in as it fills them for one pod, promtool
   (Prometheus' own engine, `promtool test rules`) evaluates them on
   series of two services and must get the expected per-pod values.

Usage: python check.py KUBERNETES_VERSION
"""

import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import kubernetes_validate
import yaml
from cloudcoil.models.prometheus_operator import v1 as prometheus_operator

HERE = pathlib.Path(__file__).resolve().parent
METRICS_RS = HERE.parent.parent / "manager" / "src" / "metrics.rs"
CUSTOM = {("monitoring.coreos.com/v1", "ServiceMonitor"): prometheus_operator.ServiceMonitor}


def objects():
    for path in sorted(HERE.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path.relative_to(HERE), doc


def validate(version, path, doc):
    kind = (doc.get("apiVersion"), doc.get("kind"))
    name = "%s %s/%s" % (path, doc["kind"], doc["metadata"]["name"])
    model = CUSTOM.get(kind)
    if model is not None:
        back = model.model_validate(doc).model_dump(by_alias=True, exclude_unset=True, mode="json")
        if back != doc:
            return "%s: fields the %s schema does not know: got back %s" % (name, kind[1], back)
        print("ok %s (prometheus-operator models)" % name)
        return None
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        where = ".".join(str(p) for p in e.path)
        return "%s: %s: %s" % (name, where, e.message)
    except kubernetes_validate.SchemaNotFoundError as e:
        return "%s: no schema, and not a known custom resource: %s" % (name, e)
    print("ok %s (Kubernetes %s, strict)" % (name, version))
    return None


def agree(docs):
    errors = []
    by_kind = {}
    for _, d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    rules = []
    for cm in by_kind.get("ConfigMap", []):
        if "config.yaml" in cm.get("data", {}):
            rules += yaml.safe_load(cm["data"]["config.yaml"])["rules"]
    defined = {r["name"]["as"] for r in rules}
    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        for m in hpa["spec"]["metrics"]:
            if m["type"] == "Pods" and m["pods"]["metric"]["name"] not in defined:
                errors.append("HPA %s reads %s, which no adapter rule defines (%s)"
                              % (hpa["metadata"]["name"], m["pods"]["metric"]["name"], sorted(defined)))
    exported = set(re.findall(r'"(charon_[a-z_]+)"', METRICS_RS.read_text()))
    for r in rules:
        for used in set(re.findall(r"charon_[a-z_]+", r["seriesQuery"] + r["metricsQuery"])):
            if used not in exported:
                errors.append("adapter rule %s queries %s, which charond does not export"
                              % (r["name"]["as"], used))
    services = by_kind.get("Service", [])
    for sm in by_kind.get("ServiceMonitor", []):
        want = sm["spec"]["selector"]["matchLabels"]
        chosen = [s for s in services
                  if want.items() <= s["metadata"].get("labels", {}).items()]
        ports = {p["port"] for p in sm["spec"]["endpoints"]}
        if not chosen:
            errors.append("ServiceMonitor %s selects no Service" % sm["metadata"]["name"])
        for s in chosen:
            names = {p["name"] for p in s["spec"]["ports"]}
            if not ports <= names:
                errors.append("ServiceMonitor %s scrapes ports %s; Service %s has %s"
                              % (sm["metadata"]["name"], sorted(ports), s["metadata"]["name"], sorted(names)))
    return errors


# Scrapes every 15 s of one pod running two services, a and b, and what
# each adapter rule must compute from them 3 minutes in: a has 3 of its 4
# instances busy, b none of 4 (busy fraction 3/8); a's queue was 5 deep
# 30 s ago, b's is steadily 1 (the highest of the last minute, summed: 6).
POD = 'namespace="charon",pod="web-1"'
SERIES = {
    'charon_instances{%s,key="a.a.0.raw",state="busy"}' % POD: "3x20",
    'charon_instances{%s,key="b.b.0.raw",state="busy"}' % POD: "0x20",
    'charon_instances{%s,key="a.a.0.raw",state="idle"}' % POD: "1x20",
    'charon_instances{%s,key="b.b.0.raw",state="idle"}' % POD: "1x20",
    'charon_instances_max{%s,key="a.a.0.raw"}' % POD: "4x20",
    'charon_instances_max{%s,key="b.b.0.raw"}' % POD: "4x20",
    'charon_queue_depth{%s,key="a.a.0.raw"}' % POD: "0x9 5 0x10",
    'charon_queue_depth{%s,key="b.b.0.raw"}' % POD: "1x20",
}
EXPECTED = {"charon_busy_fraction": 0.375, "charon_queue_depth": 6}


def promql(rules):
    """Evaluates each rule's metricsQuery with promtool; errors as strings."""
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            return ["promtool is not installed (.ci/run installs it)"]
        print("!!! promtool not found: the adapter queries were NOT evaluated !!!")
        return []
    tests = []
    errors = []
    for r in rules:
        name = r["name"]["as"]
        if name not in EXPECTED:
            errors.append("adapter rule %s has no expected value in check.py" % name)
            continue
        query = (r["metricsQuery"].replace("<<.LabelMatchers>>", POD)
                 .replace("<<.GroupBy>>", "pod"))
        tests.append({"expr": query, "eval_time": "3m",
                      "exp_samples": [{"labels": '{pod="web-1"}', "value": EXPECTED[name]}]})
    spec = {
        "rule_files": [],
        "evaluation_interval": "15s",
        "tests": [{
            "interval": "15s",
            "input_series": [{"series": k, "values": v} for k, v in SERIES.items()],
            "promql_expr_test": tests,
        }],
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "adapter-test.yaml"
        path.write_text(yaml.safe_dump(spec))
        run = subprocess.run([promtool, "test", "rules", str(path)],
                             capture_output=True, text=True)
    if run.returncode != 0:
        errors.append("promtool test rules: the adapter queries do not compute the expected "
                      "values:\n%s%s" % (run.stdout, run.stderr))
    else:
        print("ok adapter queries evaluated by promtool: %s"
              % ", ".join("%s = %s" % kv for kv in sorted(EXPECTED.items())))
    return errors


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    docs = list(objects())
    errors = [e for e in (validate(sys.argv[1], p, d) for p, d in docs) if e]
    errors += agree(docs)
    rules = [r for _, d in docs if d["kind"] == "ConfigMap" and "config.yaml" in d.get("data", {})
             for r in yaml.safe_load(d["data"]["config.yaml"])["rules"]]
    errors += promql(rules)
    for e in errors:
        print("error: %s" % e, file=sys.stderr)
    if errors:
        sys.exit(1)
    print("%d objects valid; HPA, adapter rules, charond's metrics and ServiceMonitor agree"
          % len(docs))


if __name__ == "__main__":
    main()
