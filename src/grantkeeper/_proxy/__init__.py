"""``grantkeeper proxy``: a desktop host's stdio MCP session, bridged to a remote server.

- ``stdio``: the host's side, newline-delimited JSON-RPC on stdin and stdout;
- ``streamable_http``: the bridge itself, :class:`~.streamable_http.Proxy`, over streamable
  HTTP (the current transport);
- ``sse``: the same bridge over the HTTP+SSE transport of older servers, and ``AutoProxy``
  (``--transport auto``, the default): streamable HTTP, unless the first POST gets 404 or
  405, then SSE for the rest of the run.

Logins are the Keeper's recovery (``_cli/_proxy.py`` gives it a browser login): one for
every proxy of a credential, however many start at once.

Nothing is imported here: the CLI imports what it runs.
"""
