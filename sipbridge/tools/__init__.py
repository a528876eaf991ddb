"""Tools for a person trying or operating sipbridge: `sipbridge call` (a softphone in the terminal) and
`sipbridge doctor` (what a deployment still lacks). Nothing in `sipbridge run` imports them."""
