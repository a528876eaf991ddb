"""sipbridge: self-hosted voice for phone calls (SIP in, Dia2 speech out)."""

__version__ = "0.1.0"
