"""The REST gateway: an Envoy-style gRPC-JSON transcoder driven by the protos' `google.api.http` rules.

    descriptors.py  the descriptor set, in a pool of its own
    templates.py    path templates (`/v1/{name=projects/*}:verb`)
    routes.py       http rules → the route table (a trie by path segment)
    fields.py       JSON and query text into message fields, errors naming the field
    transcode.py    one HTTP request → the request message; messages → proto3 JSON (a list as CSV on request)
    errors.py       google.rpc.Status JSON and the gRPC → HTTP status table
    locales.py      Accept-Language → google.rpc.LocalizedMessage from the catalogs in locales/
    auth.py         Bearer API key → signed principal metadata, first (401 before anything else)
    ratelimit.py    per-account and per-address (unauthenticated) limits in Redis
    upstreams.py    one channel per upstream service, health
    proxy.py        the single handler every route goes through
    sse.py          server-streaming RPCs as Server-Sent Events
    openapi.py      the OpenAPI 3.1 document from the same descriptors
    console.py      the web console's static build (webroot/, from web/) at /console/
    postman.py      a Postman collection and environment from that document (docs/postman/)
    app.py          the aiohttp application; main.py runs it
"""
