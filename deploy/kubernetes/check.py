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

Usage: python check.py KUBERNETES_VERSION
"""

import pathlib
import re
import sys

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


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    docs = list(objects())
    errors = [e for e in (validate(sys.argv[1], p, d) for p, d in docs) if e]
    errors += agree(docs)
    for e in errors:
        print("error: %s" % e, file=sys.stderr)
    if errors:
        sys.exit(1)
    print("%d objects valid; HPA, adapter rules, charond's metrics and ServiceMonitor agree" % len(docs))


if __name__ == "__main__":
    main()
