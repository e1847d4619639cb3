"""The harness's errors, in a module of their own so the control plane and the real node share them."""


class ClusterError(RuntimeError):
    """The control plane did not start or stop cleanly; the message carries the failing component's log tail."""


class RealNodeError(ClusterError):
    """The real node did not start or stop cleanly; the message says which step and why."""


class RealNodeUnavailable(RealNodeError):
    """This machine cannot run the real node; the message is one sentence saying why and what to do about it.

    Callers such as `dev up` fall back to the kwok-only cluster and print it; the tests fail with it."""
