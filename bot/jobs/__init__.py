"""Jobs: the SQLite store, the state machine, scheduling, tracking and hand-over for delivery."""
