"""The stores: where credentials live, one module per backend over one shared base.

- ``base``: the :class:`~grantkeeper.Store` protocol, :class:`~grantkeeper.Stored`, the
  lock interface, the compare-and-swap rule and the record envelope every backend uses;
- ``_fs``: the file-system layer (private directory, ``flock`` with a bounded wait,
  atomic writes with a directory fsync, side documents), used by the local stores and
  ``servers.json``;
- ``file``, ``keyring``, ``auto``, ``postgresql``: the backends (``secret_service`` is the
  keyring's one D-Bus connection, ``sealing`` encrypts PostgreSQL's records at rest);
- ``open``: :func:`~grantkeeper.open_store`, which picks one from a spec;
- ``admin``: ``grantkeeper doctor`` and ``grantkeeper store migrate``, as library functions;
- ``contract``: the conformance suite every backend's tests subclass (it needs pytest:
  :mod:`grantkeeper.testing` imports it only when asked).

Nothing is imported here, so importing ``base`` (as the Keeper and the OAuth code flow do)
loads no backend.
"""
