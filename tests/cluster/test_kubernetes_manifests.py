"""The Kubernetes manifests in deploy/kubernetes: every YAML document parsed,
the parts checked to fit together (store on the volume, probes on the --http
port, Services on the container ports, the node's grace under the pod's), and
every ``pyqueue`` command line run through pyqueue's own parser.

pyqueue has no dry-run flag, so a command line is checked by running it as
the pod would (same arguments, same environment, the Secret's empty
placeholder as its key): every command parses its arguments and checks its
addresses, and a node all of its settings, before it reads the key, so
ending with ``no cluster key`` (exit 2) proves the line was accepted, with
nothing bound or started.  Its ``--help`` then shows that each flag is spelled
out in full (argparse would also take an abbreviation, which a later flag can
make ambiguous).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from pyqueue.cluster.config import parse_address
from pyqueue.cluster.node import parse_queues
from pyqueue.cluster.supervisor import KILL_MARGIN_S

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
#: files kustomization.yaml leaves out on purpose
OPTIONAL = {"secret.yaml", "keda-scaledobject.yaml"}

Doc = dict[str, Any]


def _documents() -> list[tuple[str, Doc]]:
    # CI copies deploy/ beside tests/: without it every check here would pass empty
    assert DEPLOY.is_dir(), f"{DEPLOY} is missing"
    out = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                out.append((path.name, doc))
    return out


DOCS = _documents()


def _find(kind: str, file: str | None = None) -> list[Doc]:
    return [d for f, d in DOCS if d.get("kind") == kind and file in (None, f)]


def _one(kind: str, file: str | None = None) -> Doc:
    found = _find(kind, file)
    assert len(found) == 1, f"expected one {kind} in {file or DEPLOY}, found {len(found)}"
    return found[0]


def _containers(workload: Doc) -> list[Doc]:
    spec = workload["spec"]["template"]["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def _all_containers() -> list[tuple[str, Doc]]:
    return [
        (f"{d['kind']}/{d['metadata']['name']}", c)
        for kind in ("StatefulSet", "Deployment")
        for d in _find(kind)
        for c in _containers(d)
    ]


def _argv(container: Doc) -> list[Any]:
    return [*container.get("command", []), *container.get("args", [])]


def _pyqueue_containers() -> list[tuple[str, Doc]]:
    return [(where, c) for where, c in _all_containers() if _argv(c)[:1] == ["pyqueue"]]


def _options(argv: list[str]) -> dict[str, str | None]:
    """``--flag value`` and ``--flag=value`` as {flag: value}; a bare flag maps to None."""
    out: dict[str, str | None] = {}
    i = 0
    while i < len(argv):
        tok = str(argv[i])
        if tok.startswith("--"):
            name, eq, value = tok.partition("=")
            if eq:
                out[name] = value
            elif i + 1 < len(argv) and not str(argv[i + 1]).startswith("-"):
                out[name] = str(argv[i + 1])
                i += 1
            else:
                out[name] = None
        i += 1
    return out


def _option(container: Doc, flag: str) -> str:
    value = _options(_argv(container)).get(flag)
    assert value, f"{container['name']}: {flag} VALUE is missing from its command line"
    return value


def _container_port(container: Doc, port: int | str) -> int:
    """A probe's or Service's port (number or name) as the container's port number."""
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    assert port in named, f"{container['name']} names no port {port!r}"
    return int(named[port])


def _coordinator() -> tuple[Doc, Doc]:
    sts = _one("StatefulSet", "coordinator.yaml")
    (c,) = [c for c in _containers(sts) if _argv(c)[:2] == ["pyqueue", "coordinator"]]
    return sts, c


def _node() -> tuple[Doc, Doc]:
    dep = _one("Deployment", "node.yaml")
    (c,) = [c for c in _containers(dep) if _argv(c)[:2] == ["pyqueue", "node"]]
    return dep, c


def _service(name: str) -> Doc:
    (svc,) = [s for s in _find("Service") if s["metadata"]["name"] == name]
    return svc


def _main_service() -> Doc:
    services = _find("Service", "coordinator.yaml")
    (svc,) = [s for s in services if s["spec"].get("clusterIP") != "None"]
    return svc


def _selects(svc: Doc, workload: Doc) -> bool:
    labels = workload["spec"]["template"]["metadata"]["labels"]
    selector = svc["spec"]["selector"]
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _service_target(svc: Doc, container: Doc, port: int) -> int:
    """The container port behind Service port ``port``."""
    (p,) = [p for p in svc["spec"]["ports"] if p["port"] == port]
    return _container_port(container, p.get("targetPort", p["port"]))


# -- files ------------------------------------------------------------------------------


def test_every_document_parses_and_names_itself():
    files = {f for f, _ in DOCS}
    assert {"coordinator.yaml", "node.yaml", "secret.yaml", "kustomization.yaml"} <= files
    for file, doc in DOCS:
        assert isinstance(doc, dict), file
        assert doc.get("apiVersion") and doc.get("kind"), file
        if doc["kind"] != "Kustomization":
            assert doc["metadata"]["name"], file
    kinds = sorted(d["kind"] for _, d in DOCS)
    assert kinds.count("StatefulSet") == 1 and kinds.count("Deployment") == 1


def test_kustomization_lists_files_that_exist_and_leaves_out_the_optional_ones():
    kust = _one("Kustomization", "kustomization.yaml")
    listed = kust["resources"]
    for name in listed:
        assert (DEPLOY / name).is_file(), f"kustomization.yaml lists {name}, which does not exist"
    every = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(listed) == every - OPTIONAL
    text = (DEPLOY / "kustomization.yaml").read_text(encoding="utf-8")
    assert re.search(r"^\s*#\s*- keda-scaledobject\.yaml\s*$", text, re.M), (
        "the line that adds KEDA should be there, commented out"
    )


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_renders_the_listed_resources():
    out = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    kinds = sorted(d["kind"] for d in yaml.safe_load_all(out.stdout) if d)
    assert kinds == ["Deployment", "Service", "Service", "StatefulSet"]


# -- coordinator ------------------------------------------------------------------------


def test_coordinator_keeps_its_store_on_the_claimed_volume():
    sts, c = _coordinator()
    assert sts["spec"]["replicas"] == 1, "one coordinator owns the store"
    claims = {t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]}
    assert claims
    store = Path(_option(c, "--store"))
    assert store.is_absolute()
    above = [m for m in c["volumeMounts"] if Path(m["mountPath"]) in store.parents]
    assert above, f"--store {store} lies on no mounted volume"
    # the deepest mount above the file is where it lands (it hides any mount above it)
    deepest = max(above, key=lambda m: len(Path(m["mountPath"]).parts))
    assert deepest["name"] in claims, f"--store {store} is on {deepest['name']}, not a claim"
    headless = _service(sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None" and _selects(headless, sts)


def test_probes_hit_healthz_and_readyz_on_the_http_port():
    _, c = _coordinator()
    host, http_port = parse_address(_option(c, "--http"))
    assert host not in ("127.0.0.1", "localhost", "::1"), "kubelet probes the pod IP"
    probes = {k: c[k] for k in ("livenessProbe", "readinessProbe", "startupProbe") if k in c}
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for kind, probe in probes.items():
        assert probe["httpGet"]["path"] in ("/healthz", "/readyz"), kind
        assert _container_port(c, probe["httpGet"]["port"]) == http_port, kind


def test_service_reaches_the_task_http_and_metrics_ports_and_is_scraped():
    sts, c = _coordinator()
    svc = _main_service()
    assert _selects(svc, sts)
    wanted = {}
    for flag in ("--bind", "--http", "--metrics"):
        host, port = parse_address(_option(c, flag))
        assert host not in ("127.0.0.1", "localhost", "::1"), f"{flag} must not be loopback"
        wanted[flag] = port
    behind = {_service_target(svc, c, p["port"]) for p in svc["spec"]["ports"]}
    assert set(wanted.values()) <= behind
    ann = svc["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert ann.get("prometheus.io/path", "/metrics") == "/metrics"
    assert _service_target(svc, c, int(ann["prometheus.io/port"])) == wanted["--metrics"]


# -- nodes ------------------------------------------------------------------------------


def test_nodes_connect_to_the_coordinator_service():
    _, coord = _coordinator()
    _, node = _node()
    host, port = parse_address(_option(node, "--connect"))
    svc = _main_service()
    name = svc["metadata"]["name"]
    assert host == name or host.startswith(name + "."), f"--connect {host} is not Service {name}"
    assert _service_target(svc, coord, port) == parse_address(_option(coord, "--bind"))[1]


def test_pod_outlives_the_nodes_grace():
    dep, node = _node()
    grace = float(_option(node, "--grace"))
    pod_grace = dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert pod_grace > grace + KILL_MARGIN_S, (
        f"terminationGracePeriodSeconds {pod_grace} must exceed --grace {grace:g}"
        f" + {KILL_MARGIN_S} s, after which the supervisor kills the node"
    )
    text = (DEPLOY / "node.yaml").read_text(encoding="utf-8")
    assert re.search(r"#.*terminationGracePeriodSeconds", text), "say why, in a comment"


# -- the key ----------------------------------------------------------------------------


def _secret() -> Doc:
    return _one("Secret", "secret.yaml")


def _secret_keys(secret: Doc) -> set[str]:
    return set(secret.get("stringData") or {}) | set(secret.get("data") or {})


def test_every_secret_reference_is_to_the_secret_and_a_key_it_holds():
    secret = _secret()
    name, keys = secret["metadata"]["name"], _secret_keys(secret)
    refs = 0
    for where, c in _all_containers():
        for env in c.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref is not None:
                refs += 1
                assert ref["name"] == name, f"{where}: {env['name']} from Secret {ref['name']}"
                assert ref["key"] in keys, f"{where}: Secret {name} has no key {ref['key']!r}"
        for src in c.get("envFrom", []):
            if "secretRef" in src:
                refs += 1
                assert src["secretRef"]["name"] == name, where
    assert refs


def test_every_pyqueue_container_gets_its_key_from_the_secret_only():
    for where, c in _pyqueue_containers():
        env = {e["name"]: e for e in c.get("env", [])}
        assert "PYQUEUE_KEY" in env, f"{where} has no PYQUEUE_KEY"
        assert "value" not in env["PYQUEUE_KEY"], f"{where}: a literal key"
        assert env["PYQUEUE_KEY"]["valueFrom"]["secretKeyRef"]
        assert "PYQUEUE_KEY_FILE" not in env and "--key-file" not in _argv(c)


def test_the_secret_holds_a_placeholder_never_a_key():
    secret = _secret()
    assert not secret.get("data"), "base64 data would hide a real key: use stringData"
    assert secret["stringData"] and all(v == "" for v in secret["stringData"].values())
    text = (DEPLOY / "secret.yaml").read_text(encoding="utf-8")
    assert "secrets.token_hex" in text, "tell how to make a real key"


# -- the command lines, through the real parser -----------------------------------------


def _pod_env(container: Doc) -> dict[str, str]:
    """This process's environment without pyqueue's settings, plus what the pod gets
    (Secret values from secret.yaml: the placeholder)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYQUEUE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    values = _secret().get("stringData") or {}
    # with a real key the command would start for real: bind ports, connect, serve
    assert all(v == "" for v in values.values()), "secret.yaml must hold the empty placeholder"
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
        elif "secretKeyRef" in e.get("valueFrom", {}):
            env[e["name"]] = values[e["valueFrom"]["secretKeyRef"]["key"]]
    return env


def _pyqueue(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyqueue", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )


def _help_flags(subcommand: str, env: dict[str, str]) -> set[str]:
    out = _pyqueue([subcommand, "--help"], env)
    assert out.returncode == 0, out.stderr
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", out.stdout))


PYQUEUE_CONTAINERS = _pyqueue_containers()


def test_there_are_pyqueue_commands_to_check():
    subcommands = sorted(_argv(c)[1] for _, c in PYQUEUE_CONTAINERS)
    assert subcommands == ["coordinator", "node"]


@pytest.mark.parametrize(
    "container", [c for _, c in PYQUEUE_CONTAINERS], ids=[w for w, _ in PYQUEUE_CONTAINERS]
)
def test_command_line_passes_pyqueues_parser(container: Doc):
    argv = _argv(container)
    assert all(isinstance(a, str) for a in argv), f"non-string items in {argv}: quote them"
    subcommand, args = argv[1], argv[2:]
    env = _pod_env(container)
    out = _pyqueue([subcommand, *args], env)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and lines, out.stderr
    assert "usage:" not in out.stderr, f"the parser refused {args}:\n{out.stderr}"
    assert lines[-1].startswith(f"pyqueue {subcommand}: no cluster key"), (
        f"{subcommand} {args} stopped before the key check:\n{out.stderr}"
    )
    known = _help_flags(subcommand, env)
    for flag in _options(args):
        assert flag in known, f"pyqueue {subcommand} has no flag {flag} (spell flags out in full)"


def test_readme_commands_name_real_subcommands_and_flags():
    text = (DEPLOY / "README.md").read_text(encoding="utf-8")
    commands = re.findall(r"-- pyqueue ([a-z-]+)([^`\n]*)", text)
    assert {c for c, _ in commands} >= {"status", "http-token"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYQUEUE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    for subcommand, rest in commands:
        known = _help_flags(subcommand, env)
        for flag in _options(rest.split()):
            assert flag in known, f"README: pyqueue {subcommand} has no flag {flag}"


# -- KEDA -------------------------------------------------------------------------------

_QUERY = re.compile(r"\s*sum\s*\(\s*([A-Za-z_:][\w:]*)\s*(?:\{(.*)\})?\s*\)\s*")
_MATCHER = re.compile(r'\s*(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')


def _evaluate(query: str, samples: list[Any]) -> tuple[str, float]:
    """``sum(metric{label="v",label=~"a|b"})`` over scraped samples: (metric, value)."""
    m = _QUERY.fullmatch(query)
    assert m, f"only sum(metric{{...}}) is evaluated here; extend this for {query!r}"
    metric, body = m.group(1), (m.group(2) or "").strip()
    matchers = []
    pos = 0
    while pos < len(body):
        mm = _MATCHER.match(body, pos)
        assert mm, f"cannot read the label matchers of {query!r} at {body[pos:]!r}"
        matchers.append(mm.groups())
        pos = mm.end()
    rows = [s for s in samples if s.name == metric]
    assert rows, f"pyqueue exports no {metric}"
    for label, _, _ in matchers:
        assert all(label in s.labels for s in rows), f"{metric} has no label {label!r}"

    def keep(labels: dict[str, str]) -> bool:
        for label, op, value in matchers:
            got = labels.get(label, "")
            hit = re.fullmatch(value, got) is not None if "~" in op else got == value
            if hit == op.startswith("!"):
                return False
        return True

    return metric, sum(s.value for s in rows if keep(s.labels))


def test_keda_scales_the_nodes_on_ready_and_leased_tasks_of_their_queues():
    pytest.importorskip("prometheus_client")
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from pyqueue.cluster.coordinator import CoordinatorCore
    from pyqueue.cluster.metrics import registry_for
    from pyqueue.cluster.states import Demand, SubmitSpec

    scaled = _one("ScaledObject", "keda-scaledobject.yaml")
    dep, node = _node()
    target = scaled["spec"]["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment"
    assert target["name"] == dep["metadata"]["name"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert float(trigger["metadata"]["threshold"]) > 0

    # A real coordinator core and its real collector: 3 ready tasks in each queue
    # the nodes serve (one of them leased), one delayed, and 2 in a queue they don't.
    served = parse_queues(_options(_argv(node)[2:]).get("--queues") or "default")
    core = CoordinatorCore(b"k" * 32)
    now = time.time()
    specs = [SubmitSpec(f"{q}-{i}", b"x", queue=q) for q in served for i in range(3)]
    specs.append(SubmitSpec("later", b"x", queue=next(iter(served)), not_before=now + 3600))
    specs += [SubmitSpec(f"elsewhere-{i}", b"x", queue="not-served") for i in range(2)]
    core.backend.submit(specs, now)
    assert core.backend.lease({"n1": Demand(1, queues=served)}, now)
    text = generate_latest(registry_for(core)).decode()
    samples = [s for fam in text_string_to_metric_families(text) for s in fam.samples]

    metric, value = _evaluate(trigger["metadata"]["query"], samples)
    assert metric == "pyqueue_queue_depth"
    assert value == 3 * len(served), f"the query counts {value:g} tasks, not {3 * len(served)}"
