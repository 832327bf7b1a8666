"""The OAuth protocol: one module per RFC-sized piece, pure where the piece allows.

Finding the authorization server:
- ``discovery``: a server's authorization server (RFC 9728, then RFC 8414 / OpenID, then
  legacy), from a ``WWW-Authenticate`` challenge (``www_authenticate``) or well-known URLs;
- ``auth_server_metadata``: the authorization server's metadata, validated;
- ``urls``: which URLs are acceptable (HTTPS, or loopback).

Becoming a client:
- ``registration``: dynamic client registration (RFC 7591), pure;
- ``kept_registrations``: registrations kept per issuer and redirect URI for later logins;
- ``client_assertion``: ``private_key_jwt`` assertions (RFC 7523).

Getting a grant:
- ``authorization`` and ``pkce``: the authorization request and its callback;
- ``callback_server``: the loopback listener a browser is redirected to (RFC 8252);
- ``code_flow``: the authorization-code flow, from registration to the stored credential;
- ``grants``: client credentials, and how any stored credential is renewed.

Talking to the token endpoint:
- ``token_endpoint``: requests and answers, pure (what an answer *means* is ``_rules``');
- ``token_client``: sends them over httpx, bounded in time and size;
- ``revocation``: RFC 7009.

Imports point down only: to the core (``_errors``, ``_record``, ``_rules``...) and to the
stores (``base``; the file-system layer for kept registrations), never to the Keeper, the
CLI or the proxy (docs/architecture.md). Nothing is imported here.
"""
