"""The per-request code, imported only once starlette.middleware.base is (so anyio is loaded by then).

How a request flows is `path`; each fix's pieces are in the module named after the fix
(`response_start`, `after_response`, `errors`, `pass_through`), each under its name in
_guard.PIECES; `run` is the inner app's run, where its send and receive call out to them; `pieces`
is `InForce`, the set of names in force as the request path reads it.
"""
