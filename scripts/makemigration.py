"""Autogenerate a service's next migration against a throwaway embedded PostgreSQL.

    python scripts/makemigration.py tenancy "add widgets"

Review the generated file: autogenerate is a draft, not a decision.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from alembic import command

from innosystem.embedded import EmbeddedPostgres
from innosystem.kit.migrate import alembic_config, upgrade


def main() -> None:
    service, message = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory() as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "pg")
        url = pg.start()
        try:
            upgrade(url, service)
            command.revision(alembic_config(url, service), message=message, autogenerate=True)
        finally:
            pg.stop()


if __name__ == "__main__":
    main()
