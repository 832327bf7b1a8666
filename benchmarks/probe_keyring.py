"""Why keyring writes slow down as items accumulate: the daemon, measured without grantkeeper.

scripts/with-keyring .venv/bin/python -m benchmarks.probe_keyring
"""

from __future__ import annotations

import statistics
import time
import uuid

import keyring
import secretstorage


def main() -> None:
    backend = keyring.get_keyring()
    service = f"grantkeeper-probe-{uuid.uuid4().hex[:8]}"
    filled = 0
    try:
        for size in (10, 300, 1_000):
            for number in range(filled, size):
                backend.set_password(service, f"user{number}", "x" * 600)
            filled = size
            writes, reads = [], []
            for _ in range(10):
                started = time.perf_counter()
                backend.set_password(service, "user0", "y" * 600)
                writes.append(time.perf_counter() - started)
                started = time.perf_counter()
                backend.get_password(service, "user0")
                reads.append(time.perf_counter() - started)
            print(
                f"{size:>5} items: keyring.set_password {statistics.median(writes) * 1e3:.1f} ms, "
                f"get_password {statistics.median(reads) * 1e3:.1f} ms"
            )
        connection = secretstorage.dbus_init()
        collection = secretstorage.get_default_collection(connection)
        started = time.perf_counter()
        list(collection.search_items({"service": service, "username": "user0"}))
        elapsed = (time.perf_counter() - started) * 1e3
        print(f"one search on an open D-Bus connection: {elapsed:.1f} ms")
    finally:
        for number in range(filled):
            backend.delete_password(service, f"user{number}")


if __name__ == "__main__":
    main()
