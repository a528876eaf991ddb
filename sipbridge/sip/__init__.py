"""SIP side: media worker processes (pjsua2) and the supervisor's pool that spawns and talks to them."""
