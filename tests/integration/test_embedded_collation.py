"""The embedded PostgreSQL (`make run`, the tests) compares text as bytes, as the databases the
deploy files create do (deploy/README.md, "PostgreSQL's collation")."""

from __future__ import annotations

import psycopg


def test_the_database_compares_text_as_bytes(database_url: str) -> None:
    with psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        collation = conn.execute("SELECT datcollate FROM pg_database WHERE datname = current_database()").fetchone()
        ordered = conn.execute("SELECT array_agg(t ORDER BY t) FROM unnest(ARRAY['b', 'B', '-a', 'a-1', 'a1'])"
                               " AS t").fetchone()
    assert collation == ("C",)
    assert ordered == (["-a", "B", "a-1", "a1", "b"],)  # byte order (en_US.UTF-8 would put "-a" among the a's)
