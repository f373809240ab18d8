"""The key manager contract's shared side: request signing, the client the platform calls a
customer's key manager with, versioned AES-256-GCM keyrings, and the reference key manager
(`innosystem keymanager`). Pure or self-contained: no service package is imported here."""
