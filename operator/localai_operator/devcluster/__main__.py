"""`python -m localai_operator.devcluster [--print-dir]`: builds (or finds cached) the control-plane binaries;
what `hack/cluster-binaries.sh` and `make cluster-binaries` run."""

from localai_operator.devcluster.binaries import main

raise SystemExit(main())
