"""Authenticate HTTP requests (httpx's ``Auth``): a credential on each, one 401 recovery.

- ``flow``: the policy, a generator without I/O: acquire a credential, send, and recover
  at most once from a 401 attributed to the token actually sent;
- ``driver``: runs the flow for httpx-shaped clients, sync or async;
- ``httpx_auth`` and ``httpx2_auth``: :class:`~grantkeeper.HttpxAuth` for httpx and its
  twin for httpx2 (the HTTP client of ``mcp`` 2.x), both thin bindings of the driver.

Nothing is imported here, so importing the core never imports httpx2.
"""
