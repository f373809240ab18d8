"""One-time links (invitations, password resets) to people: by e-mail when SMTP is configured.

Without SMTP the link goes to the log only where `log_links` is set (the embedded default and
development): a one-time token is a credential, so production logs never carry it. The SMTP
server is the operator's (configuration, not a customer-supplied URL), so it is not an egress.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
from dataclasses import dataclass
from email.message import EmailMessage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Mailer:
    smtp_host: str = ""
    smtp_port: int = 25
    sender: str = "innosystem@localhost"
    public_url: str = "http://127.0.0.1:8080"
    log_links: bool = False

    def link(self, page: str, token: str) -> str:
        return f"{self.public_url.rstrip('/')}/console/{page}?token={token}"

    async def send_link(self, to: str, subject: str, page: str, token: str) -> None:
        """Best effort: the API answer carries the token too (invitations), or the user asks again."""
        link = self.link(page, token)
        if not self.smtp_host:
            if self.log_links:
                log.warning("no SMTP configured (INNOSYSTEM_SMTP_HOST): %s for %s: %s", subject, to, link)
            else:
                log.info("no SMTP configured (INNOSYSTEM_SMTP_HOST): %s for %s not sent", subject, to)
            return
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = self.sender, to, subject
        message.set_content(f"{subject}:\n\n{link}\n\nThe link works once.")
        try:
            await asyncio.to_thread(self._send, message)
        except (OSError, smtplib.SMTPException) as exc:
            log.warning("%s for %s not sent: %s", subject, to, exc or type(exc).__name__)

    def _send(self, message: EmailMessage) -> None:
        with smtplib.SMTP(self.smtp_host, self.smtp_port, timeout=10) as smtp:
            smtp.send_message(message)
