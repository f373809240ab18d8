"""Billing service assembly. Not built yet: it serves health only, so its methods answer UNIMPLEMENTED."""

from __future__ import annotations

from innosystem.kit.server import Service


async def create() -> Service:
    return Service(name="billing", service_names=[], register=lambda server: None)
