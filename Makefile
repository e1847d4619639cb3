# Every developer command. `make help` lists them; the README uses the same ones.
PYTHON ?= python3
STAMP := .tools/.installed

.DEFAULT_GOAL := help
.PHONY: help install cluster-binaries node-packages node-binaries registry tools image-tools images actionlint lint typecheck \
        unit integration e2e test crds docs golden install-manifest dev-up dev-status dev-down bench-router \
        bench-operator bench-real-node clean clean-images

help: ## list every developer command
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m pip install --quiet -e '.[test]'
	@mkdir -p .tools && touch $(STAMP)

install: $(STAMP) ## install the package and the test tools (editable)

cluster-binaries: install ## build (once) and cache kube-apiserver, controller-manager, scheduler, kubectl, kwok, etcd
	$(PYTHON) -m localai_operator.devcluster

node-packages: ## the real node's Debian packages (runc, iptables, gcc, ...; as root) and busybox-static for test images
	./hack/node-packages.sh

node-binaries: install node-packages ## build (once) and cache the real node's kubelet, kube-proxy, containerd, CNI plugins, CoreDNS, pause
	$(PYTHON) -m localai_operator.devcluster --node

registry: install ## build (once) and cache the OCI registry (CNCF distribution) the release e2e test pushes the chart to
	$(PYTHON) -m localai_operator.devcluster --registry

tools: ## put helm into .tools/bin
	./hack/tools.sh

image-tools: ## install the Debian packages that build images without Docker (buildah, mmdebstrap, skopeo; root)
	./hack/image-tools.sh

images: install image-tools ## build (or take from the cache) the operator, LocalAI (from source) and model-mirror images as OCI archives
	$(PYTHON) -m localai_operator.devcluster.images

actionlint: ## check the GitHub workflows (actionlint, built once from its pinned Go module into .tools/bin)
	./hack/actionlint.sh

lint: install actionlint ## ruff lint + format check, import-linter layer contracts, actionlint
	ruff check operator tests benchmarks
	ruff format --check operator tests benchmarks
	lint-imports

typecheck: install ## mypy --strict on the package and on the model mirror (not a package: its own image's program)
	mypy
	mypy --strict operator/localai_operator/devcluster/images/model-mirror/mirror.py

unit: install tools ## fast tests: render golden files, API, router, chart (no cluster)
	$(PYTHON) -m pytest tests/unit

integration: install cluster-binaries node-binaries images ## tests on the local control plane with its real node (or --kubeconfig), and the images
	$(PYTHON) -m pytest tests/integration

e2e: install cluster-binaries node-binaries registry tools images ## the user's path: helm install (kwok, and on the real node with the built images), kubectl apply, dev up
	$(PYTHON) -m pytest tests/e2e

test: install cluster-binaries node-binaries registry tools images lint typecheck ## everything CI runs: lint, types, images, every test tier
	$(PYTHON) -m pytest

crds: install tools ## regenerate crds/, the chart's crds/ and manifests/install.yaml from the API models
	localai-operator crds --output-dir crds
	localai-operator crds --output-dir charts/localai-operator/crds
	./hack/gen-install.sh

docs: install ## regenerate docs/reference.md from the API models
	localai-operator crds --reference > docs/reference.md

golden: install ## regenerate tests/golden/ from manifests/samples (review the diff)
	UPDATE_GOLDEN=1 $(PYTHON) -m pytest -q tests/unit/test_render.py -k golden

install-manifest: tools ## regenerate manifests/install.yaml from the chart
	./hack/gen-install.sh

dev-up: install tools node-packages ## the demo: local control plane, its real node, the operator from the chart, the samples, a real model through its route (prints export KUBECONFIG=...)
	@if [ "$$(id -u)" = 0 ]; then ./hack/image-tools.sh; fi
	localai-operator dev up

dev-status: install ## what dev up started, and the export KUBECONFIG line
	localai-operator dev status

dev-down: install ## stop everything dev up started and remove its files
	localai-operator dev down

bench-router: install ## router vs direct, a minimal aiohttp relay, nginx (Debian) and LiteLLM (by hand; see benchmarks/README.md)
	$(PYTHON) benchmarks/router.py

bench-operator: install cluster-binaries ## operator at 1,000 models / 100 pools vs a naive Kopf peer (by hand)
	$(PYTHON) benchmarks/operator_scale.py

bench-real-node: install ## tokens/s of the model direct vs through the route's router pod, and the cluster's memory (by hand, after dev-up)
	$(PYTHON) benchmarks/real_node.py

clean: ## remove caches and local tools (not the cached control-plane binaries or images)
	rm -rf .tools .pytest_cache .mypy_cache .ruff_cache

clean-images: ## remove the image cache: bases, archives, build storage and build caches (next build is cold)
	$(PYTHON) -m localai_operator.devcluster.images --clean
