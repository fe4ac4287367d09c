"""Publisher (and promoter) processes for the concurrency tests (test_registry.py, test_store_s3.py).

Their own module, importing the model store alone: a spawned process imports the module its target
comes from, and the test modules import the forest, scipy and torch (3 s a process, 4-7 processes a
test), none of which a publisher needs."""

from tauforge.components.registry import ModelStore


def publish_many(args):
    """`count` versions of `src` published to `uri` as model `name`: their numbers."""
    uri, name, src, card, count = args
    return [ModelStore(uri).publish(name, src, card) for _ in range(count)]


def set_aliases(args):
    """`count` aliases `{prefix}-0` ... of model `name` pointed at version 1: each a read, change
    and write of the one aliases file, racing the other processes' for it."""
    uri, name, prefix, count = args
    store = ModelStore(uri)
    for i in range(count):
        store.set_alias(name, f"{prefix}-{i}", 1)


def publish_then_promote(uri, name, src, card, count, barrier, results):
    """One publisher: `count` versions, then its first version made champion; each step starts
    with the other publishers' (the barrier), so they race for the same numbers and the same alias."""
    try:
        store = ModelStore(uri)
        barrier.wait(timeout=120)
        versions = [store.publish(name, src, card) for _ in range(count)]
        barrier.wait(timeout=120)
        store.set_alias(name, "champion", versions[0])
        results.put(("ok", versions))
    except BaseException as exc:  # the test shows it rather than waiting for a result that never comes
        results.put(("error", f"{type(exc).__name__}: {exc}"))
