# The one Alembic environment every service's migrations run in (see innosystem.kit.migrate).
from innosystem.kit.migrate import run_env

run_env()
