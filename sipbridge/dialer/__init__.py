"""Outbound dialer: campaigns, contacts, calling windows, call outcomes, retries and the CPS limiter.

Pure logic, no I/O besides reading the campaign and contacts files: the call path (SIP, media workers, the
SQLite store) drives these with its own clock. See docs/DIALER.md.
"""
