"""Helpers shared by test modules (imported from here, never from conftest.py or another test)."""
