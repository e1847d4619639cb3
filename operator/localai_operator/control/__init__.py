"""The control plane: Kopf wiring, caches, the pure plan and status, one reconcile pass, the work queue, leader
election, the elastic loop, and kube.py, the only module that talks to the API server."""
