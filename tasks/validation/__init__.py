"""The Great Expectations gate the validate and preprocess stages call: profiles, suites, reports,
quarantine.

Imports only `tasks.core`.
"""
