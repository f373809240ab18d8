"""Tenancy service assembly: what `innosystem serve tenancy` runs."""

from __future__ import annotations

from datetime import timedelta

from innosystem.kit.clients import channel
from innosystem.kit.db import Database
from innosystem.kit.redis import CONNECT_TIMEOUT_SECONDS, connect
from innosystem.kit.server import Service
from innosystem.tenancy.v1 import tenancy_pb2, tenancy_pb2_grpc
from services.tenancy.api import TenancyApi
from services.tenancy.api_keys import ApiKeys
from services.tenancy.config import TenancyConfig
from services.tenancy.encryption_keys import EncryptionKeys
from services.tenancy.mailer import Mailer
from services.tenancy.revocations import RevocationPublisher
from services.tenancy.service import TenancyService
from services.tenancy.sign_in import SignIn
from services.tenancy.totp import SecondFactor
from services.tenancy.users import Users
from services.tenancy.wallets import WalletOpener


async def create() -> Service:
    config = TenancyConfig.from_env()
    db = Database(config.common.database_url)
    billing = channel(config.common.addresses.billing, service="tenancy", secret=config.common.internal_secret)
    opener = WalletOpener(db, billing)
    # Publishing a revocation is safe to abandon: bounded like the gateway's Redis calls.
    revocations = RevocationPublisher(connect(config.common.redis_url, 8, timeout=CONNECT_TIMEOUT_SECONDS))
    keys = channel(config.common.addresses.keys, service="tenancy", secret=config.common.internal_secret)
    service = TenancyService(db, config.api_key_pepper, open_wallet=opener.open_now,
                             on_access_revoked=revocations, check_encryption_key=EncryptionKeys(keys).check,
                             max_projects=config.max_projects_per_customer)
    if config.admin_api_key:
        await service.ensure_admin_key(config.admin_api_key)
    mailer = Mailer(config.smtp_host, config.smtp_port, config.mail_from, config.public_url, config.log_links)
    second_factor = SecondFactor(db, service.hash_key, config.api_key_pepper, revocations)
    sign_in = SignIn(db, service.hash_key, config.common.internal_secret, revocations, second_factor,
                     idle=timedelta(seconds=config.session_idle_seconds),
                     max_age=timedelta(seconds=config.session_max_seconds))
    api = TenancyApi(service, Users(db, service.hash_key, mailer, revocations), sign_in,
                     ApiKeys(db, service, revocations), second_factor, db)
    return Service(
        name="tenancy",
        service_names=[tenancy_pb2.DESCRIPTOR.services_by_name["TenancyService"].full_name],
        register=lambda server: tenancy_pb2_grpc.add_TenancyServiceServicer_to_server(api, server),
        authenticate=service.authenticate,  # direct gRPC callers with an API key
        background=[opener.run],
        on_shutdown=[billing.close, keys.close, revocations.close, db.close],
    )
