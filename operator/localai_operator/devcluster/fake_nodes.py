"""`python -m localai_operator.devcluster.fake_nodes --kubeconfig K`: the harness's fake GPU and CPU nodes on
an existing cluster (kind in CI), with kwok running beside it, so the same tests see the same nodes there."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from localai_operator.devcluster import binaries as binaries_module
from localai_operator.devcluster.cluster import _KWOK_CONFIG, kwok_command
from localai_operator.devcluster.nodes import default_nodes
from localai_operator.devcluster.process import free_ports, spawn

# kind's own pods use 10.244.0.0/16: fake pod IPs must not collide with real ones.
EXTERNAL_POD_CIDR = "10.250.0.1/16"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kubeconfig", required=True, type=Path)
    parser.add_argument("--state-dir", type=Path, default=Path("/tmp/localai-operator-fake-nodes"))
    parser.add_argument("--kwok", type=Path, help="a kwok binary (default: the harness's, built if missing)")
    args = parser.parse_args(argv)
    from kubernetes import config

    from localai_operator.control.kube import Kube

    args.state_dir.mkdir(parents=True, exist_ok=True)
    (args.state_dir / "kwok.yaml").write_text(_KWOK_CONFIG)
    kwok = args.kwok or binaries_module.find().kwok
    [port] = free_ports(1)
    kubeconfig = str(args.kubeconfig.resolve())
    command = kwok_command(kwok, args.state_dir, kubeconfig, port, cidr=EXTERNAL_POD_CIDR)
    spawn(command, args.state_dir / "kwok.log", die_with_parent=False)
    kube = Kube(config.new_client_from_config(config_file=str(args.kubeconfig)))  # type: ignore[no-untyped-call]
    for index, node in enumerate(default_nodes()):
        kube.create(node.manifest(index))
        print(f"node {node.name} created (managed by kwok, log {args.state_dir / 'kwok.log'})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
