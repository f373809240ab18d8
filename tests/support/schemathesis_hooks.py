"""schemathesis hooks for the contract test (loaded through SCHEMATHESIS_HOOKS): value generators
for the formats the OpenAPI document names but JSON Schema cannot describe.

- `page-token`: opaque; the only values a client can have are "" (the first page) and a
  `nextPageToken` the list returned, so generated requests ask for the first page.
"""

from __future__ import annotations

import schemathesis
from hypothesis import strategies as st

schemathesis.openapi.format("page-token", st.just(""))
