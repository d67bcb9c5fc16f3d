"""activator: buffers requests for revisions short of capacity and load-balances over ready pods."""
