"""Per-call media logic of a worker, free of pjsua2 so it can be tested without a SIP stack."""
